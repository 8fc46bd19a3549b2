"""The docker tier: Docker containers through the docker SDK, on a local or remote engine.

The bench image's root is imported once per image hash as `bench-image:<hash>` (no registry
needed). A long-lived instance is a container running `sleep infinity` under docker-init, driven
by `exec`; a command instance (start-up) is create + start of the command itself, with the
engine's own StartedAt/FinishedAt converted to our CLOCK_MONOTONIC. Every container, network
and volume carries the label `bench.run=<run id>`, which `cleanup` finds after a crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import itertools
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.core import hostlock
from bench.core import image as image_mod
from bench.core.errors import BenchError, CommandError, CommandTimeout, TierUnavailable
from bench.core.image import Image
from bench.core.lazy import lazy
from bench.core.procs import Completed
from bench.kernel import cgroups, sysmount, tc
from bench.tiers import switching
from bench.tiers.base import (
    Availability,
    Background,
    HostMemory,
    Instance,
    InstanceSpec,
    SwitchChange,
    Tier,
    TierContext,
    host_memory,
)
from bench.tiers.docker import engine as engine_mod

if TYPE_CHECKING:
    import docker
    import requests
    from docker.models.containers import Container
else:
    docker = lazy("docker")
    requests = lazy("requests")


RUN_LABEL = "bench.run"
ROLE_LABEL = "bench.role"
HASH_LABEL = "bench.image.hash"
IMAGE_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "HOME=/root", "LANG=C.UTF-8", "TERM=dumb")
KEEPALIVE = ["sleep", "infinity"]
# A background server: record its pid, then become it with its output in a log. The script is a
# constant; the server's argv arrives as positional parameters, never inside the script text.
SPAWN_SCRIPT = 'echo $$ > "$1"; log=$2; shift 2; exec "$@" > "$log" 2>&1'
REMOTE_CLOCK = (f"the engine (${engine_mod.URL_ENV}) is on another host, whose clock is not "
                "ours: this phase would mix two clocks")
TIMEOUT_STATUS = (124, 137)  # coreutils `timeout`: timed out / killed after the grace period


def import_image(engine: docker.DockerClient, img: Image, log: Any = None) -> tuple[str, bool]:
    """`bench-image:<hash>` on the engine, imported from the image's root if absent.

    Returns (image id, whether it was imported now). A lock keeps two bench processes on this
    host from importing the same image at once.
    """
    lock_path = image_mod.images_dir() / ".docker-import.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(docker.errors.ImageNotFound):
            found = engine.images.get(img.tag)
            if (found.labels or {}).get(HASH_LABEL) == img.hash:
                return str(found.id), False
        if log:
            log(f"docker: importing the bench image as {img.tag} ...")
        changes = [f"LABEL {HASH_LABEL}={img.hash}",
                   f"LABEL bench.core.image.suite={img.manifest['recipe']['suite']}",
                   "LABEL bench.managed=true",
                   *[f"ENV {pair}" for pair in IMAGE_ENV], "WORKDIR /"]
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "--xattrs", "-C", str(img.rootfs), "-c", "."],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        assert tar.stdout is not None
        out = tar.stdout

        def chunks() -> Iterator[bytes]:
            while block := out.read(1 << 20):
                yield block

        repository, tag = img.tag.split(":", 1)
        saved = engine.api.timeout
        engine.api.timeout = 1800
        try:
            result = engine.api.import_image_from_stream(
                chunks(), repository=repository, tag=tag, changes=changes)
        finally:
            engine.api.timeout = saved
            tar.stdout.close()
            _, err = tar.communicate()
        if tar.returncode != 0:
            raise BenchError(f"tar of {img.rootfs} failed ({tar.returncode}): "
                             f"{err.decode()[-300:]}",
                             "rebuild the image with `bench image build --force`.")
        if '"error"' in str(result):
            raise BenchError(f"The engine refused the bench image: {str(result)[-300:]}",
                             "see the engine's log (docker info, /var/log/bench-dockerd.log).")
        return str(engine.images.get(img.tag).id), True


def _demuxed(output: Any) -> tuple[str, str]:
    """(stdout, stderr) of an `exec_run(..., demux=True)`, as text."""
    out, err = output if isinstance(output, tuple) else (output, None)
    return ((out or b"").decode(errors="replace"), (err or b"").decode(errors="replace"))


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


class DockerBackground(Background):
    """A server started by a detached exec; stopped by its pid, inside the container."""

    def __init__(self, instance: DockerInstance, exec_id: str, pidfile: str, logfile: str) -> None:
        self.instance = instance
        self.exec_id = exec_id
        self.pidfile = pidfile
        self.logfile = logfile
        self.stopped = False

    def _running(self) -> bool:
        return bool(self.instance.engine.api.exec_inspect(self.exec_id).get("Running"))

    def stop(self) -> str:
        if self.stopped:
            return ""
        self.stopped = True
        container = self.instance.container
        deadline = time.monotonic() + 5
        pid = ""
        while not pid and self._running() and time.monotonic() < deadline:
            done = container.exec_run(["cat", self.pidfile], demux=True)
            pid = _demuxed(done.output)[0].strip() if done.exit_code == 0 else ""
            if not pid:
                time.sleep(0.05)
        if pid:
            for signal_name, grace in (("TERM", 3.0), ("KILL", 3.0)):
                container.exec_run(["kill", f"-{signal_name}", pid])
                until = time.monotonic() + grace
                while self._running() and time.monotonic() < until:
                    time.sleep(0.05)
                if not self._running():
                    break
        try:
            text = self.instance.read_file(self.logfile).decode(errors="replace")
        except BenchError:
            text = ""
        container.exec_run(["rm", "-f", self.pidfile, self.logfile])
        return text


class DockerInstance(Instance):
    def __init__(self, spec: InstanceSpec, tier: DockerTier, name: str) -> None:
        super().__init__(spec)
        self.tier = tier
        self.engine = tier.engine
        self.name = name
        self.volume: str | None = None
        self._container: Container | None = None
        self._output = ""
        self._spawned = itertools.count(1)
        self._stopped = False
        self.facts: dict[str, Any] = {}
        self._cgroup_switched: dict[str, Any] = {}  # limits switched past the engine

    @property
    def container(self) -> Container:
        if self._container is None:
            raise BenchError(f"Container {self.name} was never created.", "see the error before.")
        return self._container

    # -- start ------------------------------------------------------------------------------
    def create_and_start(self) -> None:
        spec = self.spec
        labels = {RUN_LABEL: self.tier.ctx.run_id, ROLE_LABEL: spec.role, "bench.tier": "docker"}
        options: dict[str, Any] = {
            "name": self.name, "labels": labels, "detach": True,
            "hostname": f"bench-{spec.role}",
        }
        options |= self.tier.limit_options(spec)
        if spec.network == "host":
            options["network_mode"] = "host"
        else:
            options["network"] = self.tier.network_name
        if spec.scratch == "bind":
            self.volume = f"{self.name}-scratch"
            self.engine.volumes.create(self.volume, labels=labels)
            options["volumes"] = {self.volume: {"bind": "/scratch", "mode": "rw"}}
        if spec.command is None:
            command, options["init"] = KEEPALIVE, True
        else:
            command = spec.command
        self.facts["first_from_fresh_image"] = self.tier.take_fresh_image()
        if spec.command is not None and engine_mod.is_remote():
            # bench-stamp reads the engine host's clock: not ours
            self.phases.omit("first_instruction", REMOTE_CLOCK)
        self.phases.mark("create")
        self._container = self.engine.containers.create(self.tier.image_id, command, **options)
        self.phases.mark("created")
        self.phases.mark("start_call")
        self.container.start()
        self.phases.mark("start_returned")
        if spec.command is None:
            self.container.reload()
            self._engine_phase("started", "StartedAt")
            if spec.limits.net_mbit is not None and spec.network == "bridge":
                tc.set_rate(switching.INSTANCE_LINK, spec.limits.net_mbit, self.host_pid())
            self.phases.mark("ready")

    def _engine_phase(self, phase: str, field: str) -> None:
        """Put the engine's own time stamp of a state change on our clock (local engines)."""
        if engine_mod.is_remote():
            self.phases.omit(phase, REMOTE_CLOCK)
            return
        stamp = engine_mod.to_monotonic(self.container.attrs["State"].get(field, ""))
        if stamp is not None:
            self.phases.mark(phase, stamp)

    # -- the Instance contract ----------------------------------------------------------------
    def exec(self, argv: list[str], timeout: float) -> Completed:
        wrapped = ["timeout", "--kill-after=2", f"{max(timeout, 0.1):.3f}", *argv]
        started = time.perf_counter()
        api = self.engine.api
        saved = api.timeout
        api.timeout = int(timeout) + 30  # the HTTP read waits for the command: give it room
        try:
            done = self.container.exec_run(wrapped, demux=True)
        except (requests.exceptions.RequestException, docker.errors.APIError) as exc:
            raise CommandError(argv, -1, f"docker exec failed: {exc}") from exc
        finally:
            api.timeout = saved
        seconds = time.perf_counter() - started
        out, err = _demuxed(done.output)
        status = int(done.exit_code if done.exit_code is not None else -1)
        if status in TIMEOUT_STATUS and seconds >= timeout * 0.98:
            raise CommandTimeout(argv, timeout, err)
        if status != 0:
            raise CommandError(argv, status, err or out)
        return Completed(list(argv), status, out, err, seconds)

    def spawn(self, argv: list[str]) -> Background:
        n = next(self._spawned)
        pidfile, logfile = f"/tmp/bench-bg-{n}.pid", f"/tmp/bench-bg-{n}.log"
        exec_id = self.engine.api.exec_create(
            self.container.id, ["sh", "-c", SPAWN_SCRIPT, "sh", pidfile, logfile, *argv])["Id"]
        self.engine.api.exec_start(exec_id, detach=True)
        return DockerBackground(self, exec_id, pidfile, logfile)

    def address(self) -> str:
        if self.spec.network == "host":
            return "127.0.0.1"
        self.container.reload()
        networks = self.container.attrs["NetworkSettings"]["Networks"]
        address = str(networks.get(self.tier.network_name, {}).get("IPAddress") or "")
        if not address:
            raise BenchError(f"Container {self.name} has no address on {self.tier.network_name}.",
                             "see `docker inspect` of it and the engine's log.")
        return address

    def wait(self, timeout: float) -> int:
        assert self.spec.command is not None, "wait() is for instances started with a command"
        try:
            result = self.container.wait(timeout=timeout)
        except requests.exceptions.RequestException:
            with contextlib.suppress(docker.errors.DockerException):
                self.container.kill()
            raise CommandTimeout(self.spec.command, timeout) from None
        self.phases.mark("exit_seen")
        self.container.reload()
        self._engine_phase("started", "StartedAt")
        self._engine_phase("exit", "FinishedAt")
        self.facts["oom_killed"] = bool(self.container.attrs["State"].get("OOMKilled"))
        self._output = self.container.logs(stdout=True, stderr=True).decode(errors="replace")
        return int(result.get("StatusCode", -1))

    def output(self) -> str:
        return self._output

    def read_file(self, path: str) -> bytes:
        try:
            stream, _ = self.container.get_archive(path)
        except docker.errors.NotFound as exc:
            raise BenchError(f"No file {path} in container {self.name}.", "see raw/.") from exc
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            member = next((m for m in archive.getmembers() if m.isfile()), None)
            data = archive.extractfile(member) if member is not None else None
            if data is None:
                raise BenchError(f"{path} in container {self.name} is not a file.", "see raw/.")
            return data.read()

    def cgroup_pid(self) -> int | None:
        """The container's init as this host sees it (a local engine's containers only)."""
        if self._container is None or self._stopped or engine_mod.is_remote():
            return None
        with contextlib.suppress(docker.errors.DockerException):
            self.container.reload()
            return int(self.container.attrs["State"].get("Pid") or 0) or None
        return None

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._container is not None:
            with contextlib.suppress(docker.errors.NotFound):
                self._container.remove(force=True)
            if self.spec.command is not None:
                self.phases.mark("removed")
        if self.volume is not None:
            with contextlib.suppress(docker.errors.NotFound):
                self.engine.volumes.get(self.volume).remove(force=True)

    # -- live switches: the engine's update where it has the knob, else cgroup files / tc ---
    def host_pid(self) -> int:
        """The container's init as the host sees it (local engines only)."""
        if engine_mod.is_remote():
            raise BenchError("Network limits and live switches need the engine's host, which "
                             f"is another one (${engine_mod.URL_ENV}).",
                             "run bench on the engine's host, or drop net_mbit and switches.")
        pid = int(self.container.attrs["State"].get("Pid") or 0)
        if not pid:
            self.container.reload()
            pid = int(self.container.attrs["State"].get("Pid") or 0)
        return pid

    def cgroup(self) -> cgroups.Cgroup:
        return switching.group_of(self.host_pid(), self.tier.hierarchies())

    def _switch_one(self, limit: str, value: Any) -> SwitchChange:
        update = ENGINE_UPDATE.get(limit)
        if update is not None:
            fields = update(value)
            try:
                self.tier.update_container(str(self.container.id), fields)
            except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
                return SwitchChange(limit, value, False, f"the engine refused it: {exc}")
            # an update makes runc write every resource from the engine's own record again,
            # block I/O rates included: put back those switched through the cgroup
            for name, rate in self._cgroup_switched.items():
                switching.cgroup_change(self.cgroup(), name, rate, self._io_device())
            return SwitchChange(limit, value, True,
                                f"docker engine container update ({', '.join(fields)})")
        if limit == "net_mbit":
            return switching.net_change(self.host_pid(), value, self.spec.network)
        device = self._io_device() if limit.startswith("io_") else None
        change = switching.cgroup_change(self.cgroup(), limit, value, device)
        if change.live:
            self._cgroup_switched[limit] = value
            change.how += (" (the container's cgroup: docker update has no such knob; "
                           "written again after each engine update, which resets it)")
        return change

    def _io_device(self) -> str:
        st = os.stat(self.tier.scratch_device())
        return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"

    def read_limits(self) -> dict[str, Any]:
        device = self._io_device() if not engine_mod.is_remote() else None
        return switching.readback(self.cgroup(), device, self.host_pid(), self.spec.network)

    def metadata(self) -> dict[str, Any]:
        network = ({"network_path": "host"} if self.spec.network == "host" else
                   {"network_path": "veth+bridge", "docker_network": self.tier.network_name})
        if self.spec.limits.net_mbit is not None and self.spec.network == "bridge":
            network["network_path"] += (f" (egress tbf {self.spec.limits.net_mbit:g} Mbit/s on "
                                        "the container's eth0, tc from the host)")
        return {**network, "network_mode": self.spec.network,
                **self.tier.scratch_facts(self.spec.scratch), **self.facts}

    def _memory_dir(self) -> Path | None:
        cid = self.container.id
        for path in (f"/sys/fs/cgroup/memory/docker/{cid}", f"/sys/fs/cgroup/docker/{cid}",
                     f"/sys/fs/cgroup/system.slice/docker-{cid}.scope"):
            if Path(path, "memory.stat").exists():
                return Path(path)
        return None

    def memory_report(self) -> dict[str, int]:
        """The container's memory cgroup (usage, memory.stat, v1 kernel memory) and what
        `docker stats` shows from it: usage less inactive file pages."""
        path = self._memory_dir()
        if path is None:
            return super().memory_report()
        found: dict[str, int] = {}
        for line in (path / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if value.isdigit():
                found[key] = int(value)
        for key, name in (("usage", "memory.usage_in_bytes"), ("usage", "memory.current"),
                          ("kmem_usage", "memory.kmem.usage_in_bytes")):
            with contextlib.suppress(OSError, ValueError):
                found.setdefault(key, int((path / name).read_text()))
        if "usage" in found:
            inactive = found.get("total_inactive_file", found.get("inactive_file", 0))
            found["docker_stats"] = found["usage"] - inactive
        return found

    def host_pids(self) -> set[int] | None:
        path = self._memory_dir()
        if path is None:
            return None
        with contextlib.suppress(OSError):
            return {int(p) for p in (path / "cgroup.procs").read_text().split()}
        return None

    def memory_bytes(self) -> int | None:
        """What the container's memory cgroup charges it (its page cache included)."""
        cid = self.container.id
        for path in (f"/sys/fs/cgroup/memory/docker/{cid}/memory.usage_in_bytes",
                     f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/memory.current",
                     f"/sys/fs/cgroup/docker/{cid}/memory.current"):
            with contextlib.suppress(OSError, ValueError):
                return int(Path(path).read_text())
        stats = self.container.stats(stream=False)  # a remote engine: ask it
        assert isinstance(stats, dict)
        usage = stats.get("memory_stats", {}).get("usage")
        return int(usage) if usage is not None else None


# limits the engine's container update changes (API fields); the others go to the
# container's cgroup files (block I/O rates) or tc (net_mbit)
ENGINE_UPDATE: dict[str, Any] = {
    "cpus": lambda v: {"NanoCpus": int(v * 1e9)},
    "cpuset": lambda v: {"CpusetCpus": v},
    "memory_mb": lambda v: {"Memory": v << 20, "MemorySwap": v << 20},
    "pids": lambda v: {"PidsLimit": v},
}


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

    def cleanup(self, run_id: str | None) -> list[str]:
        from bench.tiers.docker import limited, registry

        removed = limited.cleanup(run_id) + registry.remove_run(run_id)
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
