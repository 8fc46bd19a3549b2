"""The Tier and Instance contracts. One tier lives in one module; see bench/tiers/registry.py."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bench.core import procs
from bench.core.image import Image
from bench.core.limits import Limits, NetworkMode, ScratchMode
from bench.core.procs import Completed


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""
    fix: str = ""


@dataclass(frozen=True)
class HostMemory:
    """Memory of a set of host processes: resident set size, and proportional set size where
    it can be read (None otherwise: RSS counts shared pages in full, so it is no stand-in)."""

    rss: int
    pss: int | None
    processes: int


def host_memory(pids: list[int]) -> HostMemory:
    """The RSS and PSS of `pids`. A process that is gone holds nothing; one whose memory
    cannot be read at all is an error, never left out of the sum."""
    import psutil

    from bench.core.errors import BenchError

    pss: int | None = 0
    rss = count = 0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            resident = int(proc.memory_info().rss)
        except psutil.NoSuchProcess:
            continue
        except psutil.Error as exc:
            raise BenchError(f"Cannot read the memory of process {pid}: {exc}; a sum without "
                             "it would be too small.",
                             "run bench as root, or on a host without hidepid on /proc.") from exc
        try:
            proportional = int(proc.memory_full_info().pss)
        except psutil.NoSuchProcess:
            continue
        except psutil.Error:  # smaps_rollup needs ptrace access; statm does not
            pss = None
        else:
            pss = None if pss is None else pss + proportional
        rss += resident
        count += 1
    return HostMemory(rss, pss, count)


@dataclass
class InstanceSpec:
    """What to start. `command` None means a long-lived instance driven through `exec`."""

    role: str
    limits: Limits
    command: list[str] | None = None
    network: NetworkMode = "bridge"
    scratch: ScratchMode = "overlay"
    # Safety limits for an antagonist (fork storm, memory hog), kept even where the tier
    # isolates nothing: the host tier runs the instance's processes in a cgroup of bench's own
    # with them; an isolating tier gets them merged into `limits` (see guarded()).
    guard: Limits | None = None
    # the largest limits live switches will set (a VM boots with that many vCPUs and that much
    # RAM behind a balloon; a container joins those controllers); None: no switches planned
    ceiling: Limits | None = None


def tighter(limits: Limits, guard: Limits) -> Limits:
    """`limits` with every limit of `guard` that is unset or looser there."""
    update = {}
    for key, value in guard.model_dump(exclude_none=True).items():
        mine = getattr(limits, key)
        if mine is None or (key != "cpuset" and value < mine):  # a cpuset is not ordered
            update[key] = value
    return limits.model_copy(update=update)


def guarded(spec: InstanceSpec, guard: Limits) -> InstanceSpec:
    """`spec` with safety limits: as a guard (host tier) and within its limits (the others)."""
    return dataclasses.replace(spec, limits=tighter(spec.limits, guard), guard=guard)


@dataclass
class SwitchChange:
    """One limit of a switch: made live through `how`, or not live and why."""

    limit: str
    value: Any
    live: bool
    how: str


@dataclass
class SwitchResult:
    """What a live switch did, limit by limit, and how long the call took."""

    changes: list[SwitchChange]
    latency_s: float

    @property
    def live(self) -> bool:
        return all(c.live for c in self.changes)

    def not_live(self) -> list[SwitchChange]:
        return [c for c in self.changes if not c.live]


@dataclass
class TierContext:
    """What every tier gets from the runner."""

    run_id: str
    image: Image
    workdir: Path  # run-scoped scratch area on the host, removed at the end
    raw_dir: Path


@dataclass
class Phases:
    """Start-up phase timestamps, seconds on the host's CLOCK_MONOTONIC."""

    stamps: dict[str, float] = field(default_factory=dict)
    omitted: dict[str, str] = field(default_factory=dict)  # phase -> why it has no stamp

    def mark(self, name: str, at: float | None = None) -> None:
        self.stamps[name] = time.monotonic() if at is None else at

    def omit(self, name: str, why: str) -> None:
        """A phase this instance cannot stamp on the host's clock (never a guess)."""
        self.omitted[name] = why


class Background(ABC):
    """A server process running inside an instance."""

    @abstractmethod
    def stop(self) -> str:
        """Stop it and return what it printed."""


class ProcessBackground(Background):
    """A server run as a host process (in the instance's namespaces or root), logging to a file."""

    def __init__(self, proc: subprocess.Popen[str], log: Path) -> None:
        self.proc = proc
        self.log = log

    def stop(self) -> str:
        procs.terminate(self.proc)
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Instance(ABC):
    """One running isolation unit (a chroot, a container, a VM)."""

    def __init__(self, spec: InstanceSpec) -> None:
        self.spec = spec
        self.phases = Phases()

    def go(self) -> None:
        """Start the command of an instance from `Tier.start_prepared` (marks phase `go`)."""
        raise NotImplementedError("only a prepared instance (warm start) waits for go")

    @abstractmethod
    def exec(self, argv: list[str], timeout: float) -> Completed:
        """Run argv inside and wait for it; raises CommandError/CommandTimeout."""

    @abstractmethod
    def spawn(self, argv: list[str]) -> Background:
        """Start argv inside in the background (a server)."""

    @abstractmethod
    def address(self) -> str:
        """The address a peer reaches this instance's servers at."""

    @abstractmethod
    def wait(self, timeout: float) -> int:
        """For a command instance: wait for its command to exit and return its status."""

    def output(self) -> str:
        """For a command instance, after `wait`: what its command printed."""
        return ""

    @abstractmethod
    def read_file(self, path: str) -> bytes:
        """Copy a file out of the instance."""

    def cgroup_pid(self) -> int | None:
        """A host pid in the instance's control groups (its limits' counters are read there);
        None where the limits are not host cgroups (a VM's guest, the host tier)."""
        return None

    @abstractmethod
    def stop(self) -> None:
        """Stop and remove everything this instance made. Idempotent."""

    def scratch_dir(self) -> str:
        """Where disk workloads put their files, as seen inside."""
        return "/scratch"

    def memory_bytes(self) -> int | None:
        """Memory its cgroup charges to this instance, where the tier accounts it (density)."""
        return None

    def memory_report(self) -> dict[str, int]:
        """What the tier itself reports of the instance's memory, in bytes, by the tier's own
        names (cgroup memory.stat, docker stats, libvirt memory stats); {} if nothing."""
        usage = self.memory_bytes()
        return {} if usage is None else {"usage": usage}

    def host_memory_counter(self, counter: str) -> str | None:
        """The host's /proc/meminfo counter that holds what the instance makes as `counter`
        (AnonPages, Cached, Slab) in its own kernel: a container shares the host's kernel,
        so the same one. None: the PSS of `host_pids` holds all of it."""
        return counter

    def host_pids(self) -> set[int] | None:
        """The instance's processes as host PIDs, where the host can see them (their PSS)."""
        return None

    def metadata(self) -> dict[str, Any]:
        """Facts that go into every sample taken in this instance (file system, network path)."""
        return {}

    def switch(self, limits: Limits) -> SwitchResult:
        """Change the limits `limits` sets on the running instance, each through the tier's
        live interface; a limit the tier cannot change live is reported as not live (and left
        as it was), never faked. Tiers override `_switch_one`."""
        started = time.monotonic()
        changes = [self._switch_one(name, value) for name, value in limits.set_fields().items()]
        return SwitchResult(changes, time.monotonic() - started)

    def _switch_one(self, limit: str, value: Any) -> SwitchChange:
        return SwitchChange(limit, value, False, "this tier has no limits and takes no switches")

    def cpu_seconds(self) -> float | None:
        """The CPU time the instance's CPU limit is charged with so far, as the host counts
        it (None where the tier does not say; see bench.run.cpushare)."""
        return None

    def host_clock(self, monotonic_s: float) -> float | None:
        """A CLOCK_MONOTONIC reading taken inside (bench-stamp), on the host's clock; None
        where it cannot be put there. Containers and the host share the host's clock."""
        return monotonic_s

    def memory_seen_mb(self) -> float | None:
        """The memory the instance itself sees, where that moves with its limit (a VM's
        MemTotal); None where it does not (a container sees the host's /proc/meminfo)."""
        return None

    def read_limits(self) -> dict[str, Any]:
        """Each limit as the kernel/hypervisor holds it now (readback), where the tier can
        read it; limit -> value in Limits' units (None: no limit in force)."""
        return {}


class Tier(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    packages: ClassVar[tuple[str, ...]] = ()  # Debian packages `bench setup` installs for it
    start_estimate_s: ClassVar[float] = 0.0  # typical start()+stop() of one instance (plans)
    applies_limits: ClassVar[bool] = True  # False: the scenario's limits are not enforced
    # the limits an instance of this tier can change while it runs (Instance.switch)
    live_switches: ClassVar[frozenset[str]] = frozenset()
    # capabilities, read by the planner, the tuner and the analysis instead of tier names
    is_baseline: ClassVar[bool] = False  # every cost factor is measured against this tier
    runs_own_kernel: ClassVar[bool] = False  # guest-local tunables are set inside instances
    own_netns: ClassVar[bool] = True  # per-netns tunables are set inside each instance
    # a busy thread's CPU time over wall time, read inside, is its CPU share (False: a VM,
    # whose clock runs on while its vCPU is throttled: selftest and CPU switches then read the
    # host's count, Instance.cpu_seconds)
    cpu_share_inside: ClassVar[bool] = True
    # where an SSD-cache setup (`sweep: cache`) can be mounted as the instance's scratch:
    # "host": built on the host and bound over the instances' /scratch (`bind_scratch`);
    # "guest": built inside each instance on disks the tier gives it (`cache_lab(instance)`);
    # "": not at all
    cache_devices: ClassVar[str] = ""

    def bind_scratch(self, source: Path) -> None:
        """For cache_devices == "host": `source` (a host directory) becomes the instances'
        /scratch until `unbind_scratch`."""
        raise NotImplementedError(f"the {self.name} tier cannot mount a host directory")

    def unbind_scratch(self) -> None:
        raise NotImplementedError(f"the {self.name} tier cannot mount a host directory")

    def cache_lab(self, instance: Instance, names: list[str],
                  log: Callable[[str], None]) -> Any:
        """For cache_devices == "guest": a bench.tune.cache CacheLab inside `instance` that
        can build the cache setups `names`."""
        raise NotImplementedError(f"the {self.name} tier builds no cache setups")

    def ensure_running(self) -> list[str]:
        """Start the daemons this tier needs if they are down (`bench setup`); say what it did."""
        return []

    @abstractmethod
    def available(self) -> Availability:
        """Can this tier run here? If not, say why and how to fix it."""

    def prepare(self, ctx: TierContext) -> None:
        """Once per run before the first start (export the image, make networks)."""
        self.ctx = ctx

    @abstractmethod
    def start(self, spec: InstanceSpec) -> Instance:
        """Start an instance; phases are recorded on the instance."""

    # `start_prepared`: an instance built up to its command (namespaces, cgroup, root ready),
    # the command started into it on demand (`Instance.go`): the warm start mode
    warm_start: ClassVar[bool] = False

    def start_prepared(self, spec: InstanceSpec) -> Instance:
        """An instance ready to run `spec.command` once `go()` is called (warm_start tiers)."""
        raise NotImplementedError(f"the {self.name} tier has no warm start mode")

    def timeout_factor(self) -> float:
        """How many times slower than the host this tier may run a workload (after prepare;
        e.g. VMs under emulation): run timeouts are stretched by it."""
        return 1.0

    def start_many(self, specs: list[InstanceSpec]) -> list[Instance]:
        """Start several instances, all or none. A tier whose instances are slow to start
        (VMs) overrides this to start them in parallel."""
        started: list[Instance] = []
        try:
            for spec in specs:
                started.append(self.start(spec))
        except BaseException:
            for instance in started:
                with contextlib.suppress(Exception):
                    instance.stop()
            raise
        return started

    def finish(self) -> None:  # noqa: B027 - optional hook
        """Once per run after the last stop: remove what `prepare` made. Idempotent."""

    def cleanup(self, run_id: str | None) -> list[str]:
        """Remove leftovers of a run (all runs if None) after a crash; return what was removed."""
        return []

    def support_memory(self) -> HostMemory | None:
        """Memory of the tier's own host processes (daemons, shims), for density; None if the
        tier has none or cannot see them. Raises BenchError if it can read only some."""
        return None

    def layer_lab(self) -> Any:
        """The tier's way of measuring image layers (bench.tiers.layered.LayerLab), made on
        first use this run and removed by `finish`. Tiers without layered roots have none."""
        from bench.core.errors import BenchError

        raise BenchError(f"Tier {self.name} has no image layers.",
                         "run the image workload on a tier with layered roots (docker, ns).")

    def metadata(self) -> dict[str, Any]:
        return {}
