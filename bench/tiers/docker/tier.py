"""The docker tier: Docker containers through the docker SDK, on a local or remote engine.

The bench image's root is imported once per image hash as `bench-image:<hash>` (no registry
needed). A long-lived instance is a container running bench-agent (bench/tiers/docker/agent.py;
`sleep infinity` where the agent cannot serve) under docker-init, driven by `exec`; a command
instance (start-up) is create + start of the command itself, with the
engine's own StartedAt/FinishedAt converted to our CLOCK_MONOTONIC. Every container, network
and volume carries the label `bench.run=<run id>`, which `cleanup` finds after a crash.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.core import hostlock
from bench.core.errors import BenchError, TierUnavailable
from bench.core.lazy import lazy
from bench.kernel import cgroups, sysmount
from bench.tiers import switching
from bench.tiers.base import (
    Availability,
    HostMemory,
    Instance,
    InstanceSpec,
    Tier,
    TierContext,
    host_memory,
)
from bench.tiers.docker import agent as agent_mod
from bench.tiers.docker import engine as engine_mod
from bench.tiers.docker.image import import_image
from bench.tiers.docker.instance import DockerInstance
from bench.tiers.docker.labels import RUN_LABEL

if TYPE_CHECKING:
    import docker
    import requests
else:
    docker = lazy("docker")
    requests = lazy("requests")



def throttle_device(path: str | Path) -> str:
    """The whole-disk block device under `path`, for blkio throttling (cgroup v1 and v2 take
    whole disks, not partitions)."""
    st = os.stat(path)
    sysdir = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    if not sysdir.exists():
        fs = sysmount.filesystem_of(path)
        raise BenchError(
            f"{path} is on {fs['fstype']} ({fs['device']}), not on a block device, so a block "
            "I/O limit has no device to throttle.",
            "drop io_read_bps/io_write_bps from the scenario's limits, or put Docker's root "
            "(DockerRootDir) on a disk.")
    real = sysdir.resolve()
    if (real / "partition").exists():
        real = real.parent
    device = Path("/dev") / real.name
    if not device.exists():
        raise BenchError(f"No device node {device} for the disk under {path}.",
                         f"create it (mknod) or run on the host that owns {device}.")
    return str(device)



class DockerTier(Tier):
    name = "docker"
    description = ("Docker containers via the docker SDK (local dockerd, or the engine at "
                   f"${engine_mod.URL_ENV}); image imported from the bench image")
    packages = ("docker.io", "docker-registry", "openssl")
    live_switches = switching.CONTAINER_SWITCHES

    def __init__(self) -> None:
        self._engine: docker.DockerClient | None = None
        self.image_id = ""
        self.network_name = ""
        self._fresh_image = False
        self._facts: dict[str, Any] = {}
        self._seq = itertools.count(1)
        self._layers: Any = None
        self._hierarchies: cgroups.Hierarchies | None = None
        self._agent: tuple[Path | None, str] | None = None  # the agent's program, or why not
        self._made_workdir = False  # the agents' directory made ctx.workdir: finish removes it

    @property
    def engine(self) -> docker.DockerClient:
        if self._engine is None:
            self._engine = engine_mod.client()
        return self._engine

    def ensure_running(self) -> list[str]:
        from bench.tiers.docker import registry

        return engine_mod.ensure_running() + registry.ensure_running()

    def available(self) -> Availability:
        return engine_mod.diagnose()

    # -- per run ------------------------------------------------------------------------------
    def prepare(self, ctx: TierContext) -> None:
        super().prepare(ctx)
        self.image_id, self._fresh_image = import_image(self.engine, ctx.image)
        self.network_name = f"bench-{ctx.run_id}"
        labels = {RUN_LABEL: ctx.run_id, "bench.tier": "docker"}
        try:
            self.engine.networks.create(self.network_name, driver="bridge", labels=labels)
        except docker.errors.APIError as exc:
            raise TierUnavailable(f"Docker could not create network {self.network_name}: {exc}",
                                  "run `bench cleanup`; check the engine's log.") from exc
        self._facts = engine_mod.engine_facts(self.engine)
        self._facts["image_imported_this_run"] = self._fresh_image

    def take_fresh_image(self) -> bool:
        """True once: for the first container created from an image imported by this run."""
        fresh, self._fresh_image = self._fresh_image, False
        return fresh

    def start(self, spec: InstanceSpec) -> Instance:
        name = f"bench-{self.ctx.run_id}-{spec.role}-{next(self._seq)}"
        instance = DockerInstance(spec, self, name)
        try:
            instance.create_and_start()
        except BaseException:
            with contextlib.suppress(Exception):
                instance.stop()
            raise
        return instance

    def agent_program(self) -> tuple[Path | None, str]:
        """bench-agent, built (once) for the long-lived containers; or None and why not."""
        if self._agent is None:
            self._agent = agent_mod.program()
        return self._agent

    def agent_base(self) -> Path:
        """The run's directory of agent sockets (one subdirectory per container)."""
        self._made_workdir |= not self.ctx.workdir.exists()
        return agent_mod.base_dir(self.ctx.workdir, self.ctx.run_id)

    def layer_lab(self) -> Any:
        """Pulls of N-layer images from bench's registries (bench/tiers/docker/layers.py)."""
        if self._layers is None:
            from bench.tiers.docker.layers import DockerLayers

            self._layers = DockerLayers(self)
        return self._layers

    def finish(self) -> None:
        if self._layers is not None:
            self._layers.close()
            self._layers = None
        if hasattr(self, "ctx") and self._engine is not None:
            self.cleanup(self.ctx.run_id)
        if hasattr(self, "ctx"):
            agent_mod.remove_base(self.ctx.workdir)
            if self._made_workdir:
                with contextlib.suppress(OSError):
                    self.ctx.workdir.rmdir()
                self._made_workdir = False

    def cleanup(self, run_id: str | None) -> list[str]:
        from bench.tiers.docker import limited, registry

        removed = limited.cleanup(run_id) + registry.remove_run(run_id)
        for work in hostlock.run_dirs(run_id):  # agents' sockets (their containers go below)
            if agent_mod.remove_base(work / self.name):
                removed.append(f"agent directory {work / self.name / agent_mod.BASE_NAME}")
        if self._engine is None and not engine_mod.diagnose().ok:
            return removed  # no engine, nothing it could still hold
        label = f"{RUN_LABEL}={run_id}" if run_id else RUN_LABEL

        def leftover(thing: Any) -> bool:
            """Every run's things (run_id None) but those of a run that is still going."""
            labels = getattr(thing, "labels", None) or thing.attrs.get("Labels") or {}
            return run_id is not None or not hostlock.run_is_live(labels.get(RUN_LABEL, ""))

        for image in self.engine.images.list(filters={"label": label}):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                if leftover(image):
                    self.engine.images.remove(str(image.id), force=True)
                    removed.append(f"image {str(image.id)[:19]}")
        for container in self.engine.containers.list(all=True, filters={"label": label}):
            with contextlib.suppress(docker.errors.NotFound):
                if leftover(container):
                    container.remove(force=True)
                    removed.append(f"container {container.name}")
        for network in self.engine.networks.list(filters={"label": label}):
            with contextlib.suppress(docker.errors.NotFound):
                if leftover(network):
                    network.remove()
                    removed.append(f"network {network.name}")
        for volume in self.engine.volumes.list(filters={"label": label}):
            with contextlib.suppress(docker.errors.NotFound):
                if leftover(volume):
                    volume.remove(force=True)
                    removed.append(f"volume {volume.name}")
        return removed

    def support_memory(self) -> HostMemory | None:
        """Memory of dockerd, containerd and the per-container shims."""
        if engine_mod.is_remote():
            return None
        return host_memory(engine_mod.support_pids())

    # -- limits and storage -------------------------------------------------------------------
    def limit_options(self, spec: InstanceSpec) -> dict[str, Any]:
        limits = spec.limits
        options: dict[str, Any] = {}
        if limits.cpus is not None:
            options["nano_cpus"] = int(limits.cpus * 1e9)
        if limits.cpuset is not None:
            options["cpuset_cpus"] = limits.cpuset
        if limits.memory_mb is not None:
            options["mem_limit"] = f"{limits.memory_mb}m"
            options["memswap_limit"] = f"{limits.memory_mb}m"  # no swap beyond the limit
        if limits.pids is not None:
            options["pids_limit"] = limits.pids
        if limits.has_io:
            device = self.scratch_device()
            for key, option in (("io_read_bps", "device_read_bps"),
                                ("io_write_bps", "device_write_bps"),
                                ("io_read_iops", "device_read_iops"),
                                ("io_write_iops", "device_write_iops")):
                if getattr(limits, key) is not None:
                    options[option] = [{"Path": device, "Rate": getattr(limits, key)}]
        return options

    def update_container(self, container_id: str, fields: dict[str, Any]) -> None:
        """POST /containers/{id}/update: the SDK's update() lacks NanoCpus and PidsLimit."""
        api: Any = self.engine.api  # private helpers of the SDK's APIClient
        response = api._post_json(api._url("/containers/{0}/update", container_id),
                                  data=fields)
        api._raise_for_status(response)

    def hierarchies(self) -> cgroups.Hierarchies:
        if self._hierarchies is None:
            self._hierarchies = cgroups.detect()
        return self._hierarchies

    def docker_root(self) -> str:
        return str(self._facts.get("docker_root") or self.engine.info()["DockerRootDir"])

    def scratch_device(self) -> str:
        """The disk both scratch modes live on: the container layer and local volumes are both
        under the engine's DockerRootDir."""
        if engine_mod.is_remote():
            raise BenchError(
                "Block I/O limits need the engine's disk, which is on another host "
                f"(${engine_mod.URL_ENV}).",
                "run bench on the engine's host, or drop io_read_bps/io_write_bps.")
        return throttle_device(self.docker_root())

    def scratch_facts(self, mode: str) -> dict[str, str]:
        """Where /scratch lives: the container's writable layer, or a local volume."""
        if engine_mod.is_remote():
            return {"scratch_mode": mode, "scratch_fs": "overlay" if mode == "overlay"
                    else "volume", "scratch_device": "remote"}
        fs = sysmount.filesystem_of(self.docker_root())
        if mode == "overlay":
            return {"scratch_mode": "overlay", "scratch_fs": "overlay",
                    "scratch_device": fs["device"], "overlay_upper_fs": fs["fstype"],
                    "storage_driver": str(self._facts.get("storage_driver") or "unknown")}
        return {"scratch_mode": "bind", "scratch_fs": fs["fstype"],
                "scratch_device": fs["device"], "scratch_volume": "docker local volume"}

    def metadata(self) -> dict[str, Any]:
        driver = self._facts.get("storage_driver") or "unknown"
        return {"isolation": f"docker (namespaces, cgroups, storage driver {driver})",
                **self._facts}

