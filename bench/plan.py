"""Expand a scenario into a plan: cells x repetitions, interleaved in a seeded random order.

Each round runs every cell once, shuffled; warm-up rounds come first and their samples are
discarded. Interleaving spreads slow drifts of the machine over all cells instead of one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from bench.samples import Cell
from bench.scenario import Scenario, WorkloadEntry
from bench.workloads import WORKLOADS


@dataclass(frozen=True)
class PlannedCell:
    cell: Cell
    entry: WorkloadEntry
    params: dict[str, Any]
    repetitions: int
    estimate_s: float
    timeout_s: float


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

    def estimate_seconds(self) -> float:
        return sum(run.cell.estimate_s for run in self.runs)


def cells_of(scenario: Scenario, tiers: list[str]) -> list[PlannedCell]:
    cells = []
    for tier in tiers:
        for entry in scenario.workloads:
            workload = WORKLOADS[entry.workload]
            for combo in entry.combinations():
                params = workload.parse_params(combo)
                estimate = workload.estimate_seconds(params)
                cells.append(PlannedCell(
                    cell=Cell(tier=tier, workload=entry.workload, params=combo),
                    entry=entry,
                    params=combo,
                    repetitions=entry.repetitions or scenario.repetitions,
                    estimate_s=estimate,
                    timeout_s=entry.timeout_s or max(60.0, estimate * 5 + 30),
                ))
    return cells


def expand(scenario: Scenario, tiers: list[str], skipped: dict[str, str] | None = None) -> Plan:
    cells = cells_of(scenario, tiers)
    rng = random.Random(scenario.seed)
    runs: list[PlannedRun] = []
    rounds = scenario.warmup + max((c.repetitions for c in cells), default=0)
    for round_no in range(rounds):
        repetition = round_no - scenario.warmup
        due = [c for c in cells if repetition < c.repetitions]
        rng.shuffle(due)
        for planned in due:
            key = f"{planned.cell.key}#{repetition}"
            runs.append(PlannedRun(len(runs), planned, repetition, key))
    return Plan(cells, runs, dict(skipped or {}))
