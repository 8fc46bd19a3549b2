"""Adaptive repetitions: which cells need another round?

A scenario with `target_ci` runs its planned `repetitions` first; then, round after round, every
cell whose headline metric still has a 95% CI half-width above `target_ci` (relative to the
median) runs once more, until it is narrow enough, the cell reached `max_repetitions` (default
10 x repetitions), its runs took `time_budget_s` in all, or its last run failed (a failing cell
would only fail again). Everything is read back from the run directory, so `--resume` picks
the adaptive phase up where it stopped.
"""

from __future__ import annotations

from collections import defaultdict

from bench.analysis import stats
from bench.core.rundir import RunDir
from bench.run.plan import PlannedCell
from bench.run.scenario import Scenario
from bench.workloads import HEADLINE

DEFAULT_MAX_FACTOR = 10


def max_repetitions(scenario: Scenario, planned: PlannedCell) -> int:
    limit = scenario.max_repetitions or DEFAULT_MAX_FACTOR * planned.repetitions
    return max(limit, planned.repetitions)


def due(scenario: Scenario, cells: list[PlannedCell],
        rundir: RunDir) -> list[tuple[PlannedCell, int]]:
    """(cell, next repetition) for every cell that should run another round."""
    target = scenario.target_ci
    if target is None:
        return []
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for sample in rundir.samples():
        values[(sample.cell.key, sample.metric)].append(sample.value)
    spent: dict[str, float] = defaultdict(float)
    last: dict[str, tuple[int, str]] = {}
    for record in rundir.records():
        spent[record.cell] += record.seconds
        if record.cell not in last or record.repetition >= last[record.cell][0]:
            last[record.cell] = (record.repetition, record.status)
    found = []
    for planned in cells:
        key = planned.cell.key
        repetition, status = last.get(key, (-1, "missing"))
        if status != "ok" or repetition + 1 >= max_repetitions(scenario, planned):
            continue
        if scenario.time_budget_s is not None and spent[key] >= scenario.time_budget_s:
            continue
        metrics = [m for (k, m) in values if k == key]
        headline = [m for m in metrics if m in HEADLINE.get(planned.cell.workload, ())] or metrics
        if any(stats.needs_more(values[(key, m)], target) for m in headline):
            found.append((planned, repetition + 1))
    return found
