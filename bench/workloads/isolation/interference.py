"""Interference: a victim workload alone and next to an antagonist in a sibling instance.

Each run starts the victim's instance and the antagonist's (plus the victim's peer for a
network victim, and a sink the network flood sends to) together, then measures `pairs` pairs,
alone and with the antagonist, alternating which goes first (ABBA): a per-pair ratio cancels
the slow drift of a shared machine. The victim's slowdown is the median per-pair cost factor of
its headline metric (> 1 = slower next to the antagonist); the antagonist's own throughput comes
with it. `victim_limits` and `antagonist_limits` override the scenario's limits per instance
(e.g. disjoint cpusets).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import statistics
import time
from typing import Any

from pydantic import Field, field_validator

from bench.core.limits import Limits
from bench.core.samples import Measurement
from bench.tiers.base import Instance, InstanceSpec, guarded
from bench.workloads.base import Params, RunContext, Workload
from bench.workloads.isolation import antagonists
from bench.workloads.isolation.common import MAX_FLOOD_S, MAX_WRITE_MB, Concurrent, registry

TAIL_S = 0.5  # the antagonist outlasts the victim by this much


class InterferenceParams(Params):
    victim: str = Field("cpu.sysbench", description="a workload of `bench list`")
    victim_params: dict[str, Any] = Field(default_factory=dict)
    antagonist: antagonists.Kind = "cpu"
    threads: int = Field(2, ge=1, le=64, description="antagonist threads (cpu, net streams)")
    write_mb: int = Field(256, ge=1, le=MAX_WRITE_MB, description="disk writer's file size")
    pairs: int = Field(3, ge=1, le=50)
    ramp_s: float = Field(0.5, ge=0, le=10, description="antagonist time before the victim")
    victim_limits: dict[str, Any] = Field(default_factory=dict)
    antagonist_limits: dict[str, Any] = Field(default_factory=dict)

    @field_validator("victim")
    @classmethod
    def known_victim(cls, name: str) -> str:
        WORKLOADS = registry()
        if name not in WORKLOADS or not WORKLOADS[name].needs_instance \
                or WORKLOADS[name].family == "isolation":
            raise ValueError(f"victim {name!r} must be a workload that runs in one instance")
        return name

    @field_validator("victim_limits", "antagonist_limits")
    @classmethod
    def valid_limits(cls, raw: dict[str, Any]) -> dict[str, Any]:
        Limits.model_validate(raw)  # unknown keys and bad values are errors here
        return raw


def _override(spec: InstanceSpec, update: dict[str, Any]) -> InstanceSpec:
    limits = Limits.model_validate(spec.limits.model_dump() | update)
    return dataclasses.replace(spec, limits=limits)


class Interference(Workload[InterferenceParams]):
    name = "isolation.interference"
    family = "isolation"
    headline = ("victim_slowdown",)
    description = "victim alone vs next to an antagonist (cpu, membw, disk, net, memhog, forks)"
    params_model = InterferenceParams
    needs_instance = False
    tools = ("python3", "sysbench", "fio", "iperf3")

    def _victim(self, params: InterferenceParams) -> tuple[Workload[Any], Any]:
        workload = registry()[params.victim]
        return workload, workload.parse_params(params.victim_params)

    def _window(self, params: InterferenceParams) -> float:
        workload, victim_params = self._victim(params)
        window = workload.estimate_seconds(victim_params) + params.ramp_s + TAIL_S
        return min(window, MAX_FLOOD_S) if params.antagonist == "net" else window

    def estimate_seconds(self, params: InterferenceParams) -> float:
        workload, victim_params = self._victim(params)
        alone = workload.estimate_seconds(victim_params)
        return params.pairs * (alone + self._window(params)) + 1.0

    def instance_starts(self, params: InterferenceParams) -> int:
        workload, _ = self._victim(params)
        return 2 + int(workload.needs_peer) + int(params.antagonist == "net")

    def run(self, ctx: RunContext, params: InterferenceParams) -> list[Measurement]:
        workload, _ = self._victim(params)
        victim = _override(ctx.new_spec("victim", None), params.victim_limits)
        hostile = _override(ctx.new_spec("antagonist", None), params.antagonist_limits)
        needs = antagonists.setup(params.antagonist, hostile.limits, params.threads)
        if needs.guard is not None:
            hostile = guarded(hostile, needs.guard)
        specs = [victim, hostile]
        if workload.needs_peer:
            specs.append(ctx.new_spec("victim-peer", None))
        if needs.needs_sink:
            specs.append(ctx.new_spec("sink", None))
        instances: list[Instance] = []
        try:
            instances = ctx.tier.start_many(specs)
            peer = instances[2] if workload.needs_peer else None
            sink = instances[-1] if needs.needs_sink else None
            return self._measure(ctx, params, instances[0], peer, instances[1], sink)
        finally:
            for instance in instances:
                with contextlib.suppress(Exception):
                    instance.stop()

    def _measure(self, ctx: RunContext, params: InterferenceParams, victim: Instance,
                 peer: Instance | None, hostile: Instance,
                 sink: Instance | None) -> list[Measurement]:
        workload, victim_params = self._victim(params)
        victim_ctx = dataclasses.replace(ctx, instance=victim, peer=peer, raw_files=[],
                                         run_key=f"{ctx.run_key}.victim")
        hostile_ctx = dataclasses.replace(ctx, instance=hostile, peer=sink, raw_files=[],
                                          run_key=f"{ctx.run_key}.antagonist")
        metric = workload.headline[0] if workload.headline else None
        window = self._window(params)

        def victim_value() -> tuple[float, str, str]:
            found = workload.run(victim_ctx, victim_params)
            head = next((m for m in found if metric is None or m.metric == metric), found[0])
            return head.value, head.direction, f"{head.metric} ({head.unit})"

        alone: list[float] = []
        beside: list[float] = []
        hostile_out: list[Measurement] = []
        direction, label = "higher", ""
        for index in range(params.pairs):
            for with_antagonist in ((False, True) if index % 2 == 0 else (True, False)):
                if not with_antagonist:
                    value, direction, label = victim_value()
                    alone.append(value)
                    continue
                running = Concurrent(lambda: antagonists.run(
                    params.antagonist, hostile_ctx, window, params.threads, params.write_mb))
                time.sleep(params.ramp_s)
                value, direction, label = victim_value()
                beside.append(value)
                hostile_out.append(running.result(window + 60))
        ratios = [(a / b if direction == "higher" else b / a) if a > 0 and b > 0 else float("nan")
                  for a, b in zip(alone, beside, strict=True)]
        ctx.save_raw("interference.json", json.dumps({
            "victim": params.victim, "metric": label, "alone": alone, "with": beside,
            "ratios": ratios, "antagonist": [m.model_dump() for m in hostile_out]}, indent=1))
        meta = {"victim": params.victim, "victim_metric": label, "antagonist": params.antagonist,
                "host_loadavg_1": os.getloadavg()[0],  # others' load: a shared host's noise
                "pair_ratios": ratios, "victim_alone": alone, "victim_with": beside,
                "victim_limits": victim.spec.limits.model_dump(exclude_none=True),
                "antagonist_limits": hostile.spec.limits.model_dump(exclude_none=True),
                "antagonist_guard": (hostile.spec.guard.model_dump(exclude_none=True)
                                     if hostile.spec.guard else None),
                **{k: v for k, v in victim.metadata().items() if k == "accelerator"}}
        first = hostile_out[0]
        return [
            Measurement(metric="victim_slowdown", value=statistics.median(ratios), unit="x",
                        direction="lower", metadata=meta),
            Measurement(metric=first.metric,
                        value=statistics.fmean(m.value for m in hostile_out), unit=first.unit,
                        direction=first.direction, metadata=meta | {
                            "antagonist_detail": [m.metadata for m in hostile_out]}),
        ]
