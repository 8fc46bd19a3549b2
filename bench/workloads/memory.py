"""Memory: copy bandwidth and dependent-load latency, from bench-memprobe's JSON."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field

from bench.core.errors import ParseError
from bench.core.samples import Measurement
from bench.workloads.base import Params, RunContext, Workload


class MemoryParams(Params):
    test: Literal["bandwidth", "latency"] = "bandwidth"
    size_mb: int = Field(128, ge=1, le=65536, description="buffer size; latency wants >> LLC")
    seconds: float = Field(1.0, gt=0, le=600)


def parse_memprobe(text: str) -> list[Measurement]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"bench-memprobe printed no JSON: {exc}", "see raw/.") from exc
    meta = {"size_bytes": data["size_bytes"], "seconds": data["seconds"]}
    if data.get("mode") == "bandwidth":
        return [Measurement(metric="copy_MBps", value=data["mb_per_s"], unit="MB/s",
                            direction="higher", metadata=meta | {"copies": data["copies"]})]
    if data.get("mode") == "latency":
        return [Measurement(metric="load_latency_ns", value=data["ns_per_load"], unit="ns",
                            direction="lower", metadata=meta | {"loads": data["loads"]})]
    raise ParseError(f"bench-memprobe printed an unknown mode {data.get('mode')!r}.", "see raw/.")


class Memory(Workload[MemoryParams]):
    name = "memory"
    family = "memory"
    headline = ("copy_MBps", "load_latency_ns")
    description = "bench-memprobe: memcpy bandwidth (MB/s) or pointer-chase latency (ns)"
    params_model = MemoryParams
    tools = ("bench-memprobe",)

    def estimate_seconds(self, params: MemoryParams) -> float:
        return params.seconds + 0.2 + params.size_mb / 1000

    def run(self, ctx: RunContext, params: MemoryParams) -> list[Measurement]:
        done = ctx.main().exec(
            ["bench-memprobe", params.test, str(params.size_mb), f"{params.seconds:g}"],
            timeout=ctx.remaining(),
        )
        ctx.save_raw("memprobe.json", done.stdout)
        return parse_memprobe(done.stdout)
