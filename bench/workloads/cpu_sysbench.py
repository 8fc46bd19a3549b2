"""CPU: sysbench's prime-number test, events per second with one thread or all of them."""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import Field

from bench.core.errors import ParseError
from bench.core.samples import Measurement
from bench.workloads.base import Params, RunContext, Series, Workload


class SysbenchParams(Params):
    threads: int = Field(1, ge=0, le=1024, description="0 means one per CPU the instance sees")
    seconds: int = Field(3, ge=1, le=3600,
                         description="whole seconds: the tool takes no fractions")
    max_prime: int = Field(10000, ge=100, le=10_000_000)


_EVENTS = re.compile(r"events per second:\s+([0-9.]+)")
_THREADS = re.compile(r"Number of threads:\s+(\d+)")
_LAT = re.compile(r"^\s+(min|avg|max|95th percentile):\s+([0-9.]+)", re.M)


_TOTAL = re.compile(r"total time:\s+([0-9.]+)s")
_INTERVAL = re.compile(r"^\[ *([0-9.]+)s \] thds: \d+ eps: ([0-9.]+)", re.M)


def parse_sysbench_intervals(text: str) -> list[tuple[float, float]]:
    """`--report-interval=1` lines: (seconds since start, events/s over that second)."""
    return [(float(t), float(eps)) for t, eps in _INTERVAL.findall(text)]


def parse_sysbench_cpu(text: str) -> list[Measurement]:
    """sysbench has no machine format for its built-in tests; its report lines are stable."""
    events = _EVENTS.search(text)
    if not events:
        raise ParseError("sysbench output has no 'events per second' line.", "see raw/ output.")
    threads = _THREADS.search(text)
    latency = {k: float(v) for k, v in _LAT.findall(text)}
    meta = {"threads": int(threads.group(1)) if threads else None}
    found = [Measurement(metric="events_per_s", value=float(events.group(1)), unit="events/s",
                         direction="higher", metadata=meta)]
    if "95th percentile" in latency:
        found.append(Measurement(metric="latency_p95_ms", value=latency["95th percentile"],
                                 unit="ms", direction="lower", metadata=meta))
    return found


class SysbenchCpu(Workload[SysbenchParams]):
    name = "cpu.sysbench"
    family = "cpu"
    headline = ("events_per_s",)
    description = "sysbench cpu: prime search, events/s (threads=1 or 0 for all CPUs)"
    params_model = SysbenchParams
    tools = ("sysbench", "nproc")
    series_metric: ClassVar[dict[str, str] | None] = {"cpus": "events_per_s"}
    series_live: ClassVar[bool] = True

    def estimate_seconds(self, params: SysbenchParams) -> float:
        return params.seconds + 0.3

    def _run(self, ctx: RunContext, params: SysbenchParams, extra: list[str]) -> str:
        instance = ctx.main()
        threads = params.threads
        if threads == 0:
            threads = int(instance.exec(["nproc"], timeout=ctx.remaining()).stdout.strip())
        done = instance.exec(
            ctx.tool(["sysbench", "cpu", f"--threads={threads}", f"--time={params.seconds}",
                      f"--cpu-max-prime={params.max_prime}", *extra, "run"]),
            timeout=ctx.remaining(),
        )
        ctx.save_raw("sysbench.txt", done.stdout)
        return done.stdout

    def run(self, ctx: RunContext, params: SysbenchParams) -> list[Measurement]:
        return parse_sysbench_cpu(self._run(ctx, params, []))

    def first_point(self, output: str) -> float | None:
        points = parse_sysbench_intervals(output)  # sysbench flushes each interval line
        return points[0][0] if points else None

    def before_series(self, ctx: RunContext, params: SysbenchParams) -> None:
        ctx.main().exec(["sysbench", "--version"], timeout=ctx.remaining())  # a warm start

    def run_series(self, ctx: RunContext, params: SysbenchParams) -> Series:
        out = self._run(ctx, params, ["--report-interval=1"])
        total = _TOTAL.search(out)
        return Series({"events_per_s": parse_sysbench_intervals(out)},
                      {"events_per_s": "events/s"}, parse_sysbench_cpu(out),
                      float(total.group(1)) if total else None)
