"""The antagonists of the interference matrix: each runs for a given time in its own instance
and returns its own throughput. Most are workload cells of the suite run as they are (sysbench
cpu, bench-memprobe, fio, iperf3); the memory hog and the fork storm are the isolation
family's own programs, always under a guard of bench's own (see Safety in the package doc).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from bench.core.errors import CommandError
from bench.core.limits import Limits
from bench.core.samples import Measurement
from bench.workloads.base import RunContext, Workload
from bench.workloads.isolation.common import (
    HOG_OVER_LIMIT_MB,
    HOG_RAM_FRACTION,
    MAX_FLOOD_S,
    MAX_FORK_BOUND,
    MAX_STORM_S,
    MAX_WRITE_MB,
    inside,
    registry,
)

Kind = Literal["cpu", "membw", "disk_direct", "disk_buffered", "net", "memhog", "forks"]
KINDS: tuple[Kind, ...] = ("cpu", "membw", "disk_direct", "disk_buffered", "net", "memhog",
                           "forks")


@dataclass(frozen=True)
class Setup:
    """What the antagonist's instance needs beyond the scenario's limits."""

    guard: Limits | None = None
    needs_sink: bool = False  # a third instance to send to (network flood)


def ram_mb() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 20


def hog_sizes(limit_mb: int | None) -> tuple[int, int]:
    """(guard, target) of the memory hog in MiB: it tries to allocate past its limit by
    256 MiB, never past 10% of RAM; the guard is its limit, or 10% of RAM less 256 MiB."""
    cap = int(ram_mb() * HOG_RAM_FRACTION)
    guard = min(limit_mb, cap) if limit_mb else cap - HOG_OVER_LIMIT_MB
    return guard, min(guard + HOG_OVER_LIMIT_MB, cap)


def setup(kind: Kind, limits: Limits, threads: int) -> Setup:
    if kind == "memhog":
        return Setup(guard=Limits(memory_mb=hog_sizes(limits.memory_mb)[0]))
    if kind == "forks":
        return Setup(guard=Limits(pids=MAX_FORK_BOUND + 32))
    return Setup(needs_sink=kind == "net")


def _workload(name: str) -> Workload[Any]:
    return registry()[name]


def _cell(name: str, params: dict[str, Any]) -> Callable[[RunContext], list[Measurement]]:
    workload = _workload(name)
    parsed = workload.parse_params(params)
    return lambda ctx: workload.run(ctx, parsed)


def run(kind: Kind, ctx: RunContext, seconds: float, threads: int,
        write_mb: int) -> Measurement:
    """Run the antagonist in ctx.instance (ctx.peer: the sink) for about `seconds`; its
    throughput."""
    whole = max(1, math.ceil(seconds))
    if kind == "cpu":
        found = _cell("cpu.sysbench", {"threads": threads, "seconds": whole})(ctx)
    elif kind == "membw":
        # two 64 MiB buffers: far past the last-level cache, well inside a small memory limit
        found = _cell("memory", {"test": "bandwidth", "size_mb": 64, "seconds": seconds})(ctx)
    elif kind in ("disk_direct", "disk_buffered"):
        return _writer(ctx, kind == "disk_direct", seconds, write_mb)
    elif kind == "net":
        found = _cell("network.iperf3", {"seconds": min(whole, int(MAX_FLOOD_S)),
                                         "parallel": threads})(ctx)
    elif kind == "memhog":
        return _memhog(ctx, seconds)
    else:
        storm = inside(ctx.main(), "forks",
                       ["storm", str(MAX_FORK_BOUND), f"{min(seconds, MAX_STORM_S):g}"],
                       min(seconds, MAX_STORM_S) + 8)
        return Measurement(metric="antagonist_forks_per_s", value=storm["forks_per_s"],
                           unit="forks/s", direction="higher",
                           metadata={"peak_processes": storm["peak_processes"],
                                     "failures": storm["failures"]})
    head = found[0]
    return head.model_copy(update={"metric": f"antagonist_{head.metric}"})


def _memhog(ctx: RunContext, seconds: float) -> Measurement:
    limit = ctx.main().spec.limits.memory_mb
    _, target = hog_sizes(limit)
    try:
        out = inside(ctx.main(), "hog", [str(target), f"{seconds:g}"], seconds + 30)
    except CommandError as exc:  # killed at its limit, as it should be
        reached = re.findall(r"allocated_mb (\d+)", exc.stderr)
        return Measurement(metric="antagonist_allocated_MB",
                           value=float(reached[-1]) if reached else 0.0, unit="MB",
                           direction="higher", metadata={"target_mb": target,
                                                         "oom_killed": True})
    return Measurement(metric="antagonist_allocated_MB", value=float(out["allocated_mb"]),
                       unit="MB", direction="higher",
                       metadata={"target_mb": target, "oom_killed": False,
                                 "mb_per_s": out["mb_per_s"]})


def _writer(ctx: RunContext, direct: bool, seconds: float, write_mb: int) -> Measurement:
    """fio randwrite, at most MAX_WRITE_MB in all (not only its file: buffered, it wrote
    1.7 GiB in 4 s here), spread over the window by a rate cap so it lasts as long as the
    victim runs (buffered writes reach the page cache at GB/s)."""
    rate = max(1, int(MAX_WRITE_MB / seconds))
    head = _cell("disk.fio", {"rw": "randwrite", "direct": direct,
                              "size_mb": min(write_mb, MAX_WRITE_MB), "runtime_s": seconds,
                              "end_fsync": False, "io_limit_mb": MAX_WRITE_MB,
                              "rate_mb_s": rate})(ctx)[0]
    return head.model_copy(update={
        "metric": f"antagonist_{head.metric}",
        "metadata": head.metadata | {"io_cap_MiB": MAX_WRITE_MB, "rate_cap_MiBps": rate}})
