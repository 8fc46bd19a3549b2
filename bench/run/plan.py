"""Expand a scenario into a plan: cells x repetitions, interleaved in a seeded random order.

Each round runs every cell once, shuffled; warm-up rounds come first and their samples are
discarded. Interleaving spreads slow drifts of the machine over all cells instead of one.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

from bench.core.samples import Cell
from bench.run.scenario import Scenario, WorkloadEntry
from bench.tiers.registry import TIERS
from bench.tune.sweep import SweepSpec, axes
from bench.workloads import WORKLOADS


@dataclass(frozen=True)
class PlannedCell:
    cell: Cell
    entry: WorkloadEntry
    params: dict[str, Any]
    repetitions: int
    estimate_s: float
    timeout_s: float
    warmup: int = 1  # warm-up rounds of this cell (the scenario's, or its tier override's)


@dataclass(frozen=True)
class PlannedRun:
    index: int
    cell: PlannedCell
    repetition: int  # negative for warm-ups
    key: str

    @property
    def warmup(self) -> bool:
        return self.repetition < 0


@dataclass
class Plan:
    cells: list[PlannedCell]
    runs: list[PlannedRun]
    skipped_tiers: dict[str, str]
    # "tier/workload" -> why that workload takes no part on that tier (Workload.not_on)
    skipped_cells: dict[str, str] = dataclasses.field(default_factory=dict)

    def estimate_seconds(self) -> float:
        return sum(run.cell.estimate_s for run in self.runs)


def cells_of(scenario: Scenario, tiers: list[str]) -> list[PlannedCell]:
    cells = []
    for tier in tiers:
        override = scenario.tier_overrides.get(tier)
        most = override.repetitions if override and override.repetitions else None
        warmup = override.warmup if override and override.warmup is not None \
            else scenario.warmup
        for entry in scenario.workloads:
            if override and entry.workload in override.skip:
                continue
            workload = WORKLOADS[entry.workload]
            if tier in workload.not_on:
                continue
            for combo in entry.combinations():
                params = workload.parse_params(combo)
                estimate = workload.estimate_seconds(params) + \
                    workload.instance_starts(params) * TIERS[tier].start_estimate_s
                cells.append(PlannedCell(
                    cell=Cell(tier=tier, workload=entry.workload, params=combo),
                    entry=entry,
                    params=combo,
                    repetitions=min(entry.repetitions or scenario.repetitions, most or 10**9),
                    estimate_s=estimate,
                    timeout_s=entry.timeout_s or max(60.0, estimate * 5 + 30),
                    warmup=warmup,
                ))
    return spread(cells, scenario.sweep)  # x tunables/cache setups of `sweep:` (if any)


def expand(scenario: Scenario, tiers: list[str], skipped: dict[str, str] | None = None) -> Plan:
    cells = cells_of(scenario, tiers)
    rng = random.Random(scenario.seed)
    runs: list[PlannedRun] = []
    # round r runs a cell's warm-up or repetition r - (its warm-ups), while it has one left
    rounds = max((c.warmup + c.repetitions for c in cells), default=0)
    for round_no in range(rounds):
        due = [c for c in cells if round_no < c.warmup + c.repetitions]
        rng.shuffle(due)
        for planned in due:
            repetition = round_no - planned.warmup
            key = f"{planned.cell.key}#{repetition}"
            runs.append(PlannedRun(len(runs), planned, repetition, key))
    not_here = {f"{tier}/{e.workload}": WORKLOADS[e.workload].not_on[tier]
                for tier in tiers for e in scenario.workloads
                if tier in WORKLOADS[e.workload].not_on}
    return Plan(cells, runs, dict(skipped or {}), not_here)


def add_round(plan: Plan, due: list[tuple[PlannedCell, int]], seed: int) -> list[PlannedRun]:
    """Append one more round for `due` (cell, repetition) pairs, shuffled (adaptive repetitions)."""
    rng = random.Random(f"{seed}:{len(plan.runs)}")
    order = list(due)
    rng.shuffle(order)
    added = [PlannedRun(len(plan.runs) + i, planned, repetition, f"{planned.cell.key}#{repetition}")
             for i, (planned, repetition) in enumerate(order)]
    plan.runs.extend(added)
    return added


def spread(cells: list[PlannedCell], spec: SweepSpec | None) -> list[PlannedCell]:
    """Each planned cell once per (tunables, cache) of the sweep; unchanged without a sweep."""
    if spec is None:
        return cells
    out = []
    for planned in cells:
        for tunables, cache in axes(spec, planned.cell.tier)[0]:
            cell = planned.cell.model_copy(update={"tunables": dict(tunables), "cache": cache})
            out.append(dataclasses.replace(planned, cell=cell))
    return out
