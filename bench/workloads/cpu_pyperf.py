"""CPU: a Python micro-benchmark driven by pyperf, parsed from pyperf's JSON."""

from __future__ import annotations

import statistics
import uuid

from pydantic import Field

from bench.core.errors import ParseError
from bench.core.image import PYBENCH_PATH
from bench.core.samples import Measurement
from bench.workloads.base import Params, RunContext, Workload


class PyperfParams(Params):
    processes: int = Field(2, ge=1, le=100)
    values: int = Field(3, ge=1, le=1000)
    warmups: int = Field(1, ge=0, le=100)
    loops: int = Field(2000, ge=0, le=10**9, description="0 lets pyperf calibrate (slower)")


def parse_pyperf_json(text: str) -> list[Measurement]:
    try:
        import pyperf

        suite = pyperf.BenchmarkSuite.loads(text)
    except Exception as exc:
        raise ParseError(f"pyperf output is not a pyperf JSON suite: {exc}", "see raw/.") from exc
    found = []
    for bench in suite.get_benchmarks():
        values = bench.get_values()
        if not values:
            raise ParseError(f"pyperf benchmark {bench.get_name()} has no values.", "see raw/.")
        meta = {
            "benchmark": bench.get_name(),
            "values": len(values),
            "stdev_us": statistics.stdev(values) * 1e6 if len(values) > 1 else 0.0,
            "loops": bench.get_runs()[-1].get_loops(),
        }
        found.append(Measurement(metric="time_per_call_us", value=bench.median() * 1e6,
                                 unit="us", direction="lower", metadata=meta))
    return found


class PyperfMicro(Workload[PyperfParams]):
    name = "cpu.pyperf"
    family = "cpu"
    headline = ("time_per_call_us",)
    description = "pyperf: a dict/str/float/json Python micro-benchmark, time per call"
    params_model = PyperfParams
    tools = ("python3",)

    def estimate_seconds(self, params: PyperfParams) -> float:
        per_value = 0.1 if params.loops else 0.5
        return 0.3 + params.processes * (0.25 + (params.values + params.warmups) * per_value)

    def run(self, ctx: RunContext, params: PyperfParams) -> list[Measurement]:
        instance = ctx.main()
        out = f"/tmp/pyperf-{uuid.uuid4().hex}.json"
        argv = ["python3", PYBENCH_PATH, "--quiet", f"--processes={params.processes}",
                f"--values={params.values}", f"--warmups={params.warmups}", "-o", out]
        if params.loops:
            argv.append(f"--loops={params.loops}")
        instance.exec(argv, timeout=ctx.remaining())
        text = instance.read_file(out).decode()
        ctx.save_raw("pyperf.json", text)
        return parse_pyperf_json(text)
