"""Start-up: start an instance whose whole job is to read the clock and exit.

`bench-stamp` reads CLOCK_MONOTONIC as its first act, so (on tiers sharing the host's clock)
the time from the create call to that stamp is the time to the workload's first instruction.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from bench.core.errors import BenchError, CommandError, ParseError
from bench.core.samples import Measurement
from bench.workloads.base import STAMP, Params, RunContext, Workload


class StartupParams(Params):
    cold: bool = Field(False, description="drop the host's page cache before each start")
    mode: Literal["new", "warm"] = Field(
        "new", description="new: start a new instance each time; warm: start the command in an "
        "instance prepared ahead (namespaces, cgroup and root ready), as serverless platforms "
        "keep warm sandboxes. A parameter, so the two are separate cells, never mixed")


def drop_caches() -> None:
    """A cold start: write back dirty pages, then drop the page cache, dentries and inodes, so
    the start reads its image (layers, root file system, binaries) from the disk again."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def parse_stamp(text: str) -> float:
    """Seconds on CLOCK_MONOTONIC at the no-op's first instruction."""
    for line in text.splitlines():
        if '"bench-stamp"' in line:
            return int(json.loads(line)["monotonic_ns"]) / 1e9
    raise ParseError("bench-stamp printed no time stamp.", "see raw/.")


class Startup(Workload[StartupParams]):
    name = "startup.noop"
    family = "startup"
    headline = ("first_instruction_ms", "total_ms")
    description = "start a no-op instance: time to its first instruction, to exit, to removal"
    params_model = StartupParams
    tools = ("bench-stamp",)
    needs_instance = False

    def estimate_seconds(self, params: StartupParams) -> float:
        return 0.1

    def run(self, ctx: RunContext, params: StartupParams) -> list[Measurement]:
        if params.cold:
            drop_caches()
        spec = ctx.new_spec("startup", [STAMP])
        if params.mode == "warm":  # prepared ahead, untimed; the start is `go` onwards
            if not ctx.tier.warm_start:
                raise BenchError(f"The {ctx.tier.name} tier has no warm start mode.",
                                 "run startup.noop with mode: new on this tier.")
            instance = ctx.tier.start_prepared(spec)
            instance.go()
        else:
            instance = ctx.tier.start(spec)
        try:
            status = instance.wait(ctx.remaining())
            output = instance.output()
        finally:
            instance.stop()
        ctx.save_raw("stamp.txt", output)
        if status != 0:
            raise CommandError([STAMP], status, output)
        stamps = dict(instance.phases.stamps)
        omitted = instance.phases.omitted
        if "first_instruction" not in omitted:
            stamps.setdefault("first_instruction", parse_stamp(output))
        created = stamps["go" if params.mode == "warm" else "create"]
        phases = {k: round((v - created) * 1e3, 4) for k, v in stamps.items()
                  if v >= created}  # a warm start's preparation (before go) is not timed
        meta = {"phases_ms": phases, "start": "cold" if params.cold else "warm",
                "start_mode": params.mode, **instance.metadata()}
        if omitted:  # phases on another clock: left out, never mixed with ours
            meta["phases_omitted"] = dict(omitted)
        found = []
        if "first_instruction" in phases:
            found.append(Measurement(metric="first_instruction_ms",
                                     value=phases["first_instruction"], unit="ms",
                                     direction="lower", metadata=meta))
        if "exit" in phases:
            found.append(Measurement(metric="exit_ms", value=phases["exit"], unit="ms",
                                     direction="lower", metadata=meta))
        if "removed" in phases:
            found.append(Measurement(metric="total_ms", value=phases["removed"], unit="ms",
                                     direction="lower", metadata=meta))
        for phase, value in phases.items():  # the tier's own phases (created, started, ...)
            if phase not in ("create", "first_instruction", "exit", "removed"):
                found.append(Measurement(metric=f"phase_{phase}_ms", value=value, unit="ms",
                                         direction="lower", metadata=meta))
        return found
