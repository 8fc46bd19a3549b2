"""Control groups on cgroup v1 (one hierarchy per controller) and cgroup v2 (one unified tree).

A `Cgroup` is one group at the same relative path (e.g. `bench/<run-id>/ns-main-1`) in every
hierarchy the suite uses. `Limits` keys mean the same on both versions:

| limit | cgroup v1 | cgroup v2 |
|---|---|---|
| cpus | cpu.cfs_quota_us / cpu.cfs_period_us | cpu.max |
| cpuset | cpuset.cpus (+ cpuset.mems from the parent) | cpuset.cpus |
| memory_mb | memory.limit_in_bytes (+ memsw if accounted) | memory.max, memory.swap.max=0 |
| pids | pids.max | pids.max |
| io_read_bps / io_write_bps | blkio.throttle.{read,write}_bps_device | io.max rbps= wbps= |
| io_read_iops / io_write_iops | blkio.throttle.{read,write}_iops_device | io.max riops= wiops= |

Live changes and readback of a group's limits: bench/kernel/cgroupread.py.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from bench.core.errors import BenchError
from bench.core.limits import Limits

V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "blkio", "pids")
V2_CONTROLLERS = ("cpu", "cpuset", "memory", "pids", "io")
CFS_PERIOD_US = 100_000
ROOT_NAME = "bench"


@dataclass(frozen=True)
class _Unlimited:
    cpus: float | None = None
    cpuset: str | None = None
    memory_mb: int | None = None
    pids: int | None = None
    io_read_bps: int | None = None
    io_write_bps: int | None = None
    io_read_iops: int | None = None
    io_write_iops: int | None = None


IO_FILES_V1 = (("io_read_bps", "read_bps_device"), ("io_write_bps", "write_bps_device"),
               ("io_read_iops", "read_iops_device"), ("io_write_iops", "write_iops_device"))
IO_KEYS_V2 = (("io_read_bps", "rbps"), ("io_write_bps", "wbps"), ("io_read_iops", "riops"),
              ("io_write_iops", "wiops"))

_UNLIMITED: Limits = _Unlimited()  # type: ignore[assignment]


class CgroupError(BenchError):
    """A control group could not be made, limited or removed."""


def _mountinfo() -> list[tuple[str, str, list[str]]]:
    """(mount point, fstype, super options) of every mount."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if len(rest) >= 3:
            found.append((fields[4], rest[0], rest[2].split(",")))
    return found


@dataclass(frozen=True)
class Hierarchies:
    """Where the controllers live: v2 -> one root; v1 -> controller -> mount point."""

    version: int
    roots: dict[str, Path]  # controller -> hierarchy root (v2: the same root for all)

    @property
    def unique_roots(self) -> list[Path]:
        return sorted(set(self.roots.values()))


def detect() -> Hierarchies:
    """cgroup v2 when its tree has the memory controller, else the v1 controller hierarchies."""
    mounts = _mountinfo()
    for point, fstype, _ in mounts:
        if fstype != "cgroup2":
            continue
        try:
            available = Path(point, "cgroup.controllers").read_text().split()
        except OSError:
            continue
        if "memory" in available:
            return Hierarchies(2, {c: Path(point) for c in V2_CONTROLLERS if c in available})
    roots: dict[str, Path] = {}
    for point, fstype, options in mounts:
        if fstype == "cgroup":
            for controller in V1_CONTROLLERS:
                if controller in options and controller not in roots:
                    roots[controller] = Path(point)
    if not {"cpu", "memory", "pids"} <= roots.keys():
        raise CgroupError(
            "Neither a cgroup v2 tree with the memory controller nor cgroup v1 hierarchies for "
            f"cpu, memory and pids are mounted (found: {', '.join(sorted(roots)) or 'none'}).",
            "mount cgroup2 on /sys/fs/cgroup (or the v1 controllers) and enable the "
            "cpu, memory, pids controllers.")
    return Hierarchies(1, roots)


def block_device(path: str | Path) -> str:
    """MAJ:MIN of the whole disk holding `path` (throttling applies to disks, not partitions)."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    sys_dev = Path("/sys/dev/block", dev)
    if os.major(st.st_dev) == 0 or not sys_dev.exists():
        raise CgroupError(
            f"{path} is not on a block device (device {dev}), so I/O throttling cannot apply.",
            "put BENCH_WORK_DIR on a disk, or drop the io_* limits from the scenario.")
    if (sys_dev / "partition").exists():
        return (sys_dev.resolve().parent / "dev").read_text().strip()
    return dev


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise CgroupError(f"Writing {value!r} to {path} failed: {exc.strerror}.",
                          "check the limit against this host (CPU numbers for cpuset, "
                          "a memory limit above what the group already uses).") from exc


def controllers_for(limits: Limits | None) -> set[str]:
    """The controllers an instance with `limits` needs: memory always (it accounts the
    instance's memory), the others only for a limit that uses them. On cgroup v1 each one more
    is one more hierarchy to join at every start, and a join is a costly kernel migration."""
    needed = {"memory"}
    if limits is not None:
        needed |= {c for c, used in (("cpu", limits.cpus), ("cpuset", limits.cpuset),
                                     ("pids", limits.pids)) if used is not None}
        if limits.has_io:
            needed |= {"blkio", "io"}
    return needed


class Cgroup:
    """One group, at `rel` below the root of every hierarchy in use (all of them, or those of
    `controllers`)."""

    def __init__(self, hierarchies: Hierarchies, rel: str,
                 controllers: set[str] | None = None) -> None:
        if controllers is not None and hierarchies.version == 1:
            hierarchies = Hierarchies(1, {c: r for c, r in hierarchies.roots.items()
                                          if c in controllers})
        self.h = hierarchies
        self.rel = rel

    def dir(self, controller: str) -> Path:
        return self.h.roots[controller] / self.rel

    @property
    def dirs(self) -> list[Path]:
        return [root / self.rel for root in self.h.unique_roots]

    # -- making -----------------------------------------------------------------------------
    def create(self, limits: Limits, io_device: str | None = None) -> None:
        """Make the group (and its parents) and apply `limits`; undone by `remove`."""
        parts = Path(self.rel).parts
        for depth in range(1, len(parts)):
            Cgroup(self.h, str(Path(*parts[:depth]))).make(None)
        try:
            self.make(limits, io_device)
        except BaseException:
            self.remove()
            raise

    def make(self, limits: Limits | None, io_device: str | None = None) -> None:
        """Make this group (its parent exists) with `limits`, as `setup` plans it."""
        for path, value in self.setup(limits, io_device):
            if value is None:
                _mkdir(path)
            else:
                _write(path, value)

    def setup(self, limits: Limits | None,
              io_device: str | None = None) -> list[tuple[Path, str | None]]:
        """The steps that make this group with `limits`, its parent existing: (directory, None)
        to make a directory, (file, value) to write one. The container's side runs them."""
        steps: list[tuple[Path, str | None]] = []
        if limits is None:
            limits = _UNLIMITED
        if self.h.version == 2:
            parent = self.dirs[0].parent
            enable = [c for c in V2_CONTROLLERS
                      if c in (parent / "cgroup.controllers").read_text().split()]
            current = (parent / "cgroup.subtree_control").read_text().split()
            if any(c not in current for c in enable):
                steps.append((parent / "cgroup.subtree_control",
                              " ".join("+" + c for c in enable)))
            steps.append((self.dirs[0], None))
            return steps + self._limits_v2(limits, io_device)
        steps += [(path, None) for path in self.dirs]
        if "cpuset" in self.h.roots:
            cpuset = self.dir("cpuset")
            for name in ("cpuset.cpus", "cpuset.mems"):  # a new v1 cpuset takes no task empty
                if name == "cpuset.cpus" and limits.cpuset is not None:
                    continue
                if _exists_with(cpuset, name):
                    continue
                steps.append((cpuset / name, (cpuset.parent / name).read_text().strip()))
        return steps + self._limits_v1(limits, io_device)

    def _limits_v1(self, limits: Limits, io_device: str | None) -> list[tuple[Path, str | None]]:
        steps: list[tuple[Path, str | None]] = []
        if limits.cpus is not None:
            cpu = self.dir("cpu")
            steps.append((cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US)))
            steps.append((cpu / "cpu.cfs_quota_us", str(round(limits.cpus * CFS_PERIOD_US))))
        if limits.cpuset is not None:
            steps.append((self.dir("cpuset") / "cpuset.cpus", limits.cpuset))
        if limits.memory_mb is not None:
            memory = self.dir("memory")
            value = str(limits.memory_mb << 20)
            steps.append((memory / "memory.limit_in_bytes", value))
            if (memory.parent / "memory.memsw.limit_in_bytes").exists():
                steps.append((memory / "memory.memsw.limit_in_bytes", value))
        if limits.pids is not None:
            steps.append((self.dir("pids") / "pids.max", str(limits.pids)))
        for key, name in IO_FILES_V1:
            value = getattr(limits, key)
            if value is not None:
                if io_device is None or "blkio" not in self.h.roots:
                    raise CgroupError(f"{key} needs the blkio controller and a block device.",
                                      "mount the v1 blkio controller, or drop the I/O limit.")
                steps.append((self.dir("blkio") / f"blkio.throttle.{name}",
                              f"{io_device} {value}"))
        return steps

    def _limits_v2(self, limits: Limits, io_device: str | None) -> list[tuple[Path, str | None]]:
        path = self.dirs[0]
        steps: list[tuple[Path, str | None]] = []
        if limits.cpus is not None:
            steps.append((path / "cpu.max",
                          f"{round(limits.cpus * CFS_PERIOD_US)} {CFS_PERIOD_US}"))
        if limits.cpuset is not None:
            steps.append((path / "cpuset.cpus", limits.cpuset))
        if limits.memory_mb is not None:
            steps.append((path / "memory.max", str(limits.memory_mb << 20)))
            if (path.parent / "memory.swap.max").exists():
                steps.append((path / "memory.swap.max", "0"))
        if limits.pids is not None:
            steps.append((path / "pids.max", str(limits.pids)))
        io = [f"{k}={getattr(limits, key)}" for key, k in IO_KEYS_V2
              if getattr(limits, key) is not None]
        if io:
            if io_device is None:
                raise CgroupError("I/O limits need a block device.", "drop the I/O limit.")
            steps.append((path / "io.max", f"{io_device} {' '.join(io)}"))
        return steps

    # -- using ------------------------------------------------------------------------------
    @property
    def join_files(self) -> list[Path]:
        """Where a single-threaded process writes "0" to join: on v1 the `tasks` file, which
        moves just the caller and so skips the global threadgroup lock (and the RCU grace
        period it waits for); on v2 cgroup.procs."""
        name = "tasks" if self.h.version == 1 else "cgroup.procs"
        return [path / name for path in self.dirs]

    def join(self, pid: int = 0) -> None:
        """Move `pid` (0: the caller) into the group in every hierarchy."""
        for path in self.dirs:
            (path / "cgroup.procs").write_text(str(pid))

    def procs(self) -> set[int]:
        found: set[int] = set()
        for path in self.dirs:
            with contextlib.suppress(OSError):
                found |= {int(p) for p in (path / "cgroup.procs").read_text().split()}
        return found

    def memory_bytes(self) -> int:
        """Memory charged to the group (v1 usage_in_bytes, v2 memory.current)."""
        path = self.dir("memory")
        name = "memory.current" if self.h.version == 2 else "memory.usage_in_bytes"
        return int((path / name).read_text())

    def memory_stat(self) -> dict[str, int]:
        stat = {}
        for line in (self.dir("memory") / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if value.isdigit():
                stat[key] = int(value)
        return stat

    def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL everything in the group and wait until it is empty."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.procs()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                return
            time.sleep(0.005)

    def remove(self, timeout: float = 5.0) -> bool:
        """Remove the group in every hierarchy (killing what is left in it); True if gone."""
        self.kill(timeout)
        deadline = time.monotonic() + timeout
        gone = True
        for path in self.dirs:
            while path.exists():
                try:
                    path.rmdir()
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        gone = False
                        break
                    time.sleep(0.002)
        return gone


def _exists_with(path: Path, name: str) -> bool:
    """True if the group exists and its `name` file already holds a value."""
    try:
        return bool((path / name).read_text().strip())
    except OSError:
        return False


def _mkdir(path: Path) -> bool:
    try:
        path.mkdir()
        return True
    except FileExistsError:
        return False


def remove_tree(hierarchies: Hierarchies, rel: str) -> list[str]:
    """Remove every group at or below `rel` (deepest first), killing their processes."""
    removed = []
    for root in hierarchies.unique_roots:
        top = root / rel
        if not top.is_dir():
            continue
        groups = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                        reverse=True)
        for path in [*groups, top]:
            one = Hierarchies(hierarchies.version, {"x": root})
            group = Cgroup(one, str(path.relative_to(root)))
            if group.remove():
                removed.append(str(path))
    return removed


def _counter(text: str, key: str) -> int | None:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _number(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def limit_events(pid: int) -> dict[str, int | None]:
    """What the kernel counted against the limits of `pid`'s groups: OOM kills, refused forks,
    and the memory peak and limits (None: not readable here). Works for any process on the
    host (a container's init, a docker container's State.Pid), on cgroup v1 and v2."""
    groups: dict[str, str] = {}
    for line in _read(Path(f"/proc/{pid}/cgroup")).splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            groups[controller] = path.lstrip("/")
    try:
        h = detect()
    except CgroupError:
        return {}
    if h.version == 2:
        memory = pids = h.roots["memory"] / groups.get("", "")
        oom = _counter(_read(memory / "memory.events"), "oom_kill")
        peak, limit = _number(_read(memory / "memory.peak")), _number(_read(memory / "memory.max"))
    else:
        memory = h.roots["memory"] / groups.get("memory", "")
        pids = h.roots["pids"] / groups.get("pids", "")
        oom = _counter(_read(memory / "memory.oom_control"), "oom_kill")
        peak = _number(_read(memory / "memory.max_usage_in_bytes"))
        limit = _number(_read(memory / "memory.limit_in_bytes"))
    return {"oom_kill": oom, "memory_peak": peak, "memory_limit": limit,
            "pids_refused": _counter(_read(pids / "pids.events"), "max"),
            "pids_limit": _number(_read(pids / "pids.max"))}
