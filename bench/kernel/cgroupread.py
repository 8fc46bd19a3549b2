"""A live group's limits: changed in place (a live switch: the files cgroups.py writes, in an
order the kernel accepts; v1: memsw never below the memory limit), and read back as the kernel
holds them, in Limits' units (cgroup v1 and v2)."""

from __future__ import annotations

from pathlib import Path

from bench.core.limits import Limits
from bench.kernel.cgroups import CFS_PERIOD_US, IO_FILES_V1, IO_KEYS_V2, Cgroup, _write


def update(group: Cgroup, limits: Limits, io_device: str | None = None) -> list[tuple[Path, str]]:
    """Change the limits `limits` sets on the live group; return what was written."""
    steps = [(p, v) for p, v in (group._limits_v2(limits, io_device) if group.h.version == 2
                                 else group._limits_v1(limits, io_device)) if v is not None]
    if limits.memory_mb is not None and group.h.version == 1:
        current = int((group.dir("memory") / "memory.limit_in_bytes").read_text())
        if (limits.memory_mb << 20) > current:  # growing: memsw first
            steps.sort(key=lambda step: step[0].name != "memory.memsw.limit_in_bytes")
    for path, value in steps:
        _write(path, value)
    return steps


def read_limits(group: Cgroup, io_device: str | None = None) -> dict[str, object]:
    """What the kernel holds for each limit (readback), in Limits' units; None = none."""
    def text(controller: str, name: str) -> str | None:
        if controller not in group.h.roots:
            return None
        try:
            return (group.dir(controller) / name).read_text().strip()
        except OSError:
            return None

    found: dict[str, object] = {}
    if group.h.version == 2:
        cpu = (text("cpu", "cpu.max") or "max").split()
        found["cpus"] = None if cpu[0] == "max" else int(cpu[0]) / int(cpu[1])
        memory = text("memory", "memory.max")
        found["memory_mb"] = None if memory in (None, "max") else int(memory or 0) >> 20
        io = {}
        for line in (text("io", "io.max") or "").splitlines():
            dev, *pairs = line.split()
            if io_device is None or dev == io_device:
                io = dict(p.split("=", 1) for p in pairs)
        for key, short in IO_KEYS_V2:
            value = io.get(short)
            found[key] = None if value in (None, "max") else int(value or 0)
        return found
    quota = text("cpu", "cpu.cfs_quota_us")
    period = text("cpu", "cpu.cfs_period_us")
    found["cpus"] = (int(quota) / int(period or CFS_PERIOD_US)
                     if quota and int(quota) > 0 else None)
    memory = text("memory", "memory.limit_in_bytes")
    found["memory_mb"] = int(memory) >> 20 if memory and int(memory) < 1 << 62 else None
    for key, name in IO_FILES_V1:
        rate_found: int | None = None
        for line in (text("blkio", f"blkio.throttle.{name}") or "").splitlines():
            dev, _, rate = line.partition(" ")
            if io_device is None or dev == io_device:
                rate_found = int(rate)
        found[key] = rate_found
    return found
