"""Fork-bomb containment: does a storm in one instance stop its neighbours from forking?

pid_max is global on a shared kernel: an instance that takes every PID stops the host and every
other instance from forking. The offender (inside/forks.py storm) forks as fast as it can up to
`bound` children, in its own instance (`pids_limit` on it, or none); meanwhile a probe in a
sibling instance and one on the host fork-and-reap in a loop, first alone, then during the
storm. Fork latency is reported as a cost factor (during / alone, > 1 = slower).

Safety: the bound is at most 2,000; the offender always runs under a pids guard of bench's own
(bound + a margin: the host tier in a cgroup, the others as their pids limit when they have none
tighter); the storm ends itself after `storm_s` (at most 20 s) and bench kills it by 30 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from bench.core.limits import Limits
from bench.core.samples import Measurement
from bench.tiers.base import Instance, guarded
from bench.workloads.base import Params, RunContext, Workload
from bench.workloads.isolation.common import (
    MAX_FORK_BOUND,
    MAX_STORM_S,
    STORM_SLACK_S,
    Concurrent,
    inside,
    on_host,
)

GUARD_MARGIN = 32  # the offender's own processes (exec wrapper, python, init) above its bound


class ContainmentParams(Params):
    bound: int = Field(MAX_FORK_BOUND, ge=1, le=MAX_FORK_BOUND,
                       description="children the offender keeps alive at most")
    pids_limit: int | None = Field(None, ge=8, le=1 << 22,
                                   description="the offender instance's pids limit (None: none)")
    storm_s: float = Field(8.0, gt=0, le=MAX_STORM_S)
    ramp_s: float = Field(3.0, ge=0, le=MAX_STORM_S, description="storm time before probing")
    probe_s: float = Field(3.0, gt=0, le=MAX_STORM_S)

    @model_validator(mode="after")
    def probe_inside_storm(self) -> ContainmentParams:
        if self.ramp_s + self.probe_s > self.storm_s:
            raise ValueError(f"ramp_s + probe_s ({self.ramp_s + self.probe_s:g}) must fit in "
                             f"storm_s ({self.storm_s:g}): the probes run during the storm")
        return self


def _ratio(during: dict[str, Any], alone: dict[str, Any]) -> float | None:
    if during.get("p50_us") and alone.get("p50_us"):
        return float(during["p50_us"]) / float(alone["p50_us"])
    return None


def _failed(result: dict[str, Any]) -> int:
    return int(sum(result.get("failures", {}).values()))


class Containment(Workload[ContainmentParams]):
    name = "isolation.forkbomb"
    family = "isolation"
    headline = ("sibling_fork_failures", "offender_peak_processes")
    description = "fork storm up to a bound: do the sibling instance and the host still fork?"
    params_model = ContainmentParams
    needs_instance = False
    tools = ("python3", "sleep")

    def estimate_seconds(self, params: ContainmentParams) -> float:
        return params.probe_s + params.storm_s + 1.0

    def instance_starts(self, params: ContainmentParams) -> int:
        return 2

    def run(self, ctx: RunContext, params: ContainmentParams) -> list[Measurement]:
        guard = Limits(pids=params.bound + GUARD_MARGIN)
        spec = ctx.new_spec("offender", None)
        spec.limits = spec.limits.model_copy(update={"pids": params.pids_limit})
        offender_spec = guarded(spec, guard)
        instances: list[Instance] = []
        try:
            instances = ctx.tier.start_many([offender_spec, ctx.new_spec("sibling", None)])
            offender, sibling = instances
            return self._measure(ctx, params, offender, sibling)
        finally:
            for instance in instances:
                with contextlib.suppress(Exception):
                    instance.stop()

    def _probes(self, sibling: Instance, seconds: float) -> tuple[dict[str, Any],
                                                                    dict[str, Any]]:
        arg = [f"{seconds:g}"]
        host = Concurrent(lambda: on_host("forks", ["probe", *arg], seconds + 30))
        inner = inside(sibling, "forks", ["probe", *arg], seconds + 30)
        return inner, host.result(seconds + 30)

    def _measure(self, ctx: RunContext, params: ContainmentParams, offender: Instance,
                 sibling: Instance) -> list[Measurement]:
        sibling_alone, host_alone = self._probes(sibling, params.probe_s)
        storm_args = ["storm", str(params.bound), f"{params.storm_s:g}"]
        storm = Concurrent(lambda: inside(offender, "forks", storm_args,
                                          params.storm_s + STORM_SLACK_S))
        time.sleep(params.ramp_s)
        sibling_during, host_during = self._probes(sibling, params.probe_s)
        offender_out = storm.result(params.storm_s + STORM_SLACK_S + 5)
        ctx.save_raw("forkbomb.json", json.dumps({
            "offender": offender_out, "sibling_alone": sibling_alone,
            "sibling_during": sibling_during, "host_alone": host_alone,
            "host_during": host_during}, indent=1))
        applied = params.pids_limit if ctx.tier.applies_limits else None
        meta = {"bound": params.bound, "pids_limit_applied": applied,
                "host_loadavg_1": os.getloadavg()[0],
                "pid_max_host": int(Path("/proc/sys/kernel/pid_max").read_text()),
                "safety_pids_guard": params.bound + GUARD_MARGIN,
                "offender_failures": offender_out["failures"],
                "first_failure_at_children": offender_out["first_failure_at_children"],
                "sibling_failures": sibling_during["failures"],
                "host_failures": host_during["failures"]}
        found = [
            Measurement(metric="offender_peak_processes",
                        value=float(offender_out["peak_processes"]), unit="processes",
                        direction="lower", metadata=meta),
            Measurement(metric="offender_fork_failures", value=float(_failed(offender_out)),
                        unit="forks", direction="higher", metadata=meta),
            Measurement(metric="offender_forks_per_s", value=float(offender_out["forks_per_s"]),
                        unit="forks/s", direction="higher", metadata=meta),
            Measurement(metric="sibling_fork_failures", value=float(_failed(sibling_during)),
                        unit="forks", direction="lower", metadata=meta),
            Measurement(metric="host_fork_failures", value=float(_failed(host_during)),
                        unit="forks", direction="lower", metadata=meta),
        ]
        for who, during, alone in (("sibling", sibling_during, sibling_alone),
                                   ("host", host_during, host_alone)):
            ratio = _ratio(during, alone)
            if ratio is not None:
                found.append(Measurement(
                    metric=f"{who}_fork_latency_factor", value=ratio, unit="x",
                    direction="lower", metadata=meta | {"alone_p50_us": alone["p50_us"],
                                                        "during_p50_us": during["p50_us"],
                                                        "during_p99_us": during["p99_us"]}))
        return found
