"""A container of the docker tier: a long-lived one driven by `exec` (through its own process,
bench-agent, on a local engine: bench/tiers/docker/agent.py), or a command instance (start-up)
timed with the engine's own stamps."""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.core.errors import BenchError, CommandTimeout
from bench.core.lazy import lazy
from bench.core.procs import Completed
from bench.kernel import cgroups, tc
from bench.tiers import switching
from bench.tiers.base import (
    Background,
    Instance,
    InstanceSpec,
    SwitchChange,
)
from bench.tiers.docker import agent as agent_mod
from bench.tiers.docker import engine as engine_mod
from bench.tiers.docker import engine_exec
from bench.tiers.docker.labels import ROLE_LABEL, RUN_LABEL

if TYPE_CHECKING:
    import docker
    import requests
    from docker.models.containers import Container
else:
    docker = lazy("docker")
    requests = lazy("requests")


if TYPE_CHECKING:
    from bench.tiers.docker.tier import DockerTier

KEEPALIVE = ["sleep", "infinity"]  # the container's process where the agent cannot serve
REMOTE_CLOCK = (f"the engine (${engine_mod.URL_ENV}) is on another host, whose clock is not "
                "ours: this phase would mix two clocks")


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
        self.agent: agent_mod.Agent | None = None  # None: commands go through `docker exec`
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
        command = spec.command
        if command is None:
            options["init"] = True
            self.agent = self._new_agent()
            command = agent_mod.COMMAND if self.agent is not None else KEEPALIVE
        self.facts["first_from_fresh_image"] = self.tier.take_fresh_image()
        if spec.command is not None and engine_mod.is_remote():
            # bench-stamp reads the engine host's clock: not ours
            self.phases.omit("first_instruction", REMOTE_CLOCK)
        self._launch(command, options)
        if spec.command is None:
            self.container.reload()
            if self.agent is not None:
                self._agent_up(options)
            self._engine_phase("started", "StartedAt")
            if spec.limits.net_mbit is not None and spec.network == "bridge":
                tc.set_rate(switching.INSTANCE_LINK, spec.limits.net_mbit, self.host_pid())
            self.phases.mark("ready")

    def _launch(self, command: list[str], options: dict[str, Any]) -> None:
        volumes = dict(options.get("volumes") or {})
        if self.agent is not None:
            volumes |= self.agent.volumes()
        if volumes:
            options = {**options, "volumes": volumes}
        self.phases.mark("create")
        self._container = self.engine.containers.create(self.tier.image_id, command, **options)
        self.phases.mark("created")
        self.phases.mark("start_call")
        self.container.start()
        self.phases.mark("start_returned")

    # -- the exec path: the agent where it can serve, else `docker exec` -----------------------
    def _new_agent(self) -> agent_mod.Agent | None:
        if engine_mod.is_remote():
            self.facts["exec_path"] = ("docker exec (the engine is on another host: bench's "
                                       "agent cannot reach its containers)")
            return None
        exe, how = self.tier.agent_program()
        if exe is None:
            self.facts["exec_path"] = f"docker exec (bench's agent was not built: {how})"
            return None
        self.facts["exec_path"] = agent_mod.EXEC_PATH
        return agent_mod.Agent.make(self.tier.agent_base(), self.name, exe)

    def _agent_up(self, options: dict[str, Any]) -> None:
        """Wait for the agent's socket to answer; if it never does, start the container again
        as a plain keepalive and exec through the engine (and say why)."""
        assert self.agent is not None
        pid = int(self.container.attrs["State"].get("Pid") or 0)
        why = self.agent.wait_ready(lambda: agent_mod.running(pid))
        if not why:
            return
        self.agent.remove()
        self.agent = None
        self.facts["exec_path"] = f"docker exec (bench's agent did not come up: {why})"
        with contextlib.suppress(docker.errors.NotFound):
            self.container.remove(force=True)
        self._launch(KEEPALIVE, options)
        self.container.reload()

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
        if self.agent is not None:
            return self.agent.run(argv, timeout)
        return engine_exec.run(self.engine, self.container, argv, timeout)

    def spawn(self, argv: list[str]) -> Background:
        return engine_exec.spawn(self, argv, next(self._spawned))

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
        if self.agent is not None:
            self.agent.remove()

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


