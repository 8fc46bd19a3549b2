"""Density: what one more idle instance costs the host in memory.

Starts `instances` long-lived instances of the tier (through `ctx.tier.start`, so every tier gets
it), lets them settle, and measures three ways:
- the host's view: the drop in MemAvailable (/proc/meminfo) per instance, averaged with its
  rise when they stop (which cancels steady drift from other processes);
- the cgroup's view: what each instance's memory cgroup charges it (`Instance.memory_bytes`);
- the tier's own processes: the growth of its daemons' and shims' proportional set size
  (`Tier.support_memory`: dockerd, containerd and one shim per container for docker); where
  PSS cannot be read it is their resident set size, reported as a metric of its own
  (`support_rss_per_instance_MB`), and where some of them cannot be read at all the metric is
  left out and the other samples say why.
The host's view is the headline; on a busy host it carries everyone else's noise, so read it
with its confidence interval.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path

from pydantic import Field

from bench.core.errors import BenchError
from bench.core.samples import Measurement
from bench.tiers.base import HostMemory, Instance
from bench.workloads.base import Params, RunContext, Workload

MB = 1e6


class DensityParams(Params):
    instances: int = Field(8, ge=1, le=1000, description="idle instances started at once")
    settle_s: float = Field(2.0, ge=0, le=600, description="wait before measuring")


def meminfo(text: str | None = None) -> dict[str, int]:
    """/proc/meminfo in bytes."""
    found = {}
    for line in (text if text is not None else Path("/proc/meminfo").read_text()).splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            found[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return found


def available_bytes(reads: int = 5, gap_s: float = 0.05) -> tuple[int, int]:
    """(MemAvailable, MemFree): the median of a few reads, to damp other processes' churn."""
    seen = []
    for index in range(reads):
        if index:
            time.sleep(gap_s)
        seen.append(meminfo())
    return (int(statistics.median(m["MemAvailable"] for m in seen)),
            int(statistics.median(m["MemFree"] for m in seen)))


class DensityIdle(Workload[DensityParams]):
    name = "density.idle"
    family = "density"
    description = "N idle instances: host memory per instance (MemAvailable, cgroup, daemons)"
    params_model = DensityParams
    needs_instance = False

    def estimate_seconds(self, params: DensityParams) -> float:
        return params.instances * 1.0 + 2 * params.settle_s

    def instance_starts(self, params: DensityParams) -> int:
        return params.instances

    def run(self, ctx: RunContext, params: DensityParams) -> list[Measurement]:
        n = params.instances
        before = available_bytes()
        support_errors: list[str] = []
        support_before = _support(ctx, support_errors)
        instances: list[Instance] = []
        started = time.monotonic()
        try:
            for index in range(n):
                ctx.remaining()
                instances.append(ctx.tier.start(ctx.new_spec(f"density-{index}", None)))
            start_s = time.monotonic() - started
            time.sleep(min(params.settle_s, max(ctx.remaining() - 1, 0)))
            during = available_bytes()
            support_during = _support(ctx, support_errors)
            charged = [i.memory_bytes() for i in instances]
            facts = instances[0].metadata() if instances else {}
        finally:
            for instance in instances:
                with contextlib.suppress(Exception):
                    instance.stop()
        time.sleep(min(params.settle_s, max(ctx.remaining() - 1, 0)))
        after = available_bytes()
        # the drop when they start and the rise when they stop: their mean cancels the drift
        # other processes add in between (linear in time, about as long up as down)
        rise, fall = (before[0] - during[0]) / n, (after[0] - during[0]) / n
        meta = {"instances": n, "start_all_s": round(start_s, 3),
                "mem_available_bytes": [before[0], during[0], after[0]],
                "host_drop_on_start_MB": rise / MB, "host_rise_on_stop_MB": fall / MB,
                "mem_free_drop_per_instance_MB": (before[1] - during[1]) / n / MB, **facts}
        if support_errors:  # some of the tier's processes unreadable: no partial sum
            meta["support_memory_omitted"] = support_errors[0]
        found = [Measurement(metric="memory_per_instance_MB", value=(rise + fall) / 2 / MB,
                             unit="MB", direction="lower", metadata=meta)]
        counted = [c for c in charged if c is not None]
        if counted:
            found.append(Measurement(metric="cgroup_memory_per_instance_MB",
                                     value=statistics.fmean(counted) / MB, unit="MB",
                                     direction="lower", metadata=meta))
        if not support_errors and support_before is not None and support_during is not None:
            # RSS where PSS is unreadable: a different quantity, so a metric of its own
            rss = support_before.pss is None or support_during.pss is None
            before_b, during_b = ((support_before.rss, support_during.rss) if rss else
                                  (support_before.pss or 0, support_during.pss or 0))
            name = "support_rss_per_instance_MB" if rss else "support_memory_per_instance_MB"
            found.append(Measurement(
                metric=name, value=(during_b - before_b) / n / MB, unit="MB",
                direction="lower",
                metadata=meta | {"support_before": before_b, "support_during": during_b,
                                 "support_measure": "RSS (substituted: PSS not readable)"
                                 if rss else "PSS"}))
        return found


def _support(ctx: RunContext, errors: list[str]) -> HostMemory | None:
    """The tier's own processes' memory, or None with the reason in `errors`."""
    try:
        return ctx.tier.support_memory()
    except BenchError as exc:
        errors.append(str(exc))
        return None
