"""Tables of the isolation family (bench/workloads/isolation/) from a run's samples: the
visibility matrix, the containment table, the interference matrix and the accounting errors.
Shared by the end-of-run summary and the report; every cell is text ready to show (escape it
for HTML)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from bench.analysis import stats
from bench.core.samples import Sample


@dataclass
class Matrix:
    """Rows x columns of text, with the tiers as columns."""

    title: str
    corner: str
    columns: list[str]
    rows: list[str] = field(default_factory=list)
    cells: dict[tuple[str, str], str] = field(default_factory=dict)
    flags: dict[tuple[str, str], float] = field(default_factory=dict)  # for colouring

    def put(self, row: str, column: str, text: str, flag: float | None = None) -> None:
        if row not in self.rows:
            self.rows.append(row)
        self.cells[(row, column)] = text
        if flag is not None:
            self.flags[(row, column)] = flag

    def get(self, row: str, column: str) -> str:
        return self.cells.get((row, column), "-")


def _tiers(samples: list[Sample]) -> list[str]:
    order = ["host", "ns", "docker", "kvm"]
    seen = {s.cell.tier for s in samples}
    return [t for t in order if t in seen] + sorted(seen - set(order))


def visibility(samples: list[Sample]) -> Matrix | None:
    """Item x tier: what the instance showed, from the last repetition (the probe is exact)."""
    mine = [s for s in samples if s.cell.workload == "isolation.visibility"]
    if not mine:
        return None
    matrix = Matrix("Visibility audit: what an instance sees and may do (1 = host's own)",
                    "item", _tiers(mine))
    for s in sorted(mine, key=lambda s: (s.repetition, s.timestamp)):
        item = s.metric.removeprefix("vis.")
        shows = str(s.metadata.get("shows", ""))
        matrix.put(item, s.cell.tier, f"{s.value:g}: {shows}", s.value)
    return matrix


def _fmt_ci(values: list[float], digits: int = 3) -> str:
    est = stats.median_ci(values)
    if est.n < 2 or est.low != est.low:
        return f"{est.median:.{digits}g} (n={est.n})"
    return f"{est.median:.{digits}g} [{est.low:.{digits}g}, {est.high:.{digits}g}] (n={est.n})"


def containment(samples: list[Sample]) -> Matrix | None:
    """(tier, pids limit) x measurement of the fork storm."""
    mine = [s for s in samples if s.cell.workload == "isolation.forkbomb"]
    if not mine:
        return None
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    rows: dict[str, None] = {}
    for s in mine:
        asked = s.cell.params.get("pids_limit")
        applied = s.metadata.get("pids_limit_applied")
        limit = f"pids {applied}" if applied is not None else "no pids limit" + (
            f" ({asked} not applied by this tier)" if asked is not None else "")
        row = f"{s.cell.tier}, {limit}, bound {s.metadata.get('bound')} " \
              f"(guard {s.metadata.get('safety_pids_guard')})"
        rows[row] = None
        values[(row, s.metric)].append(s.value)
    metrics = ["offender_peak_processes", "offender_fork_failures", "offender_forks_per_s",
               "sibling_fork_failures", "sibling_fork_latency_factor", "host_fork_failures",
               "host_fork_latency_factor"]
    matrix = Matrix("Fork-bomb containment (latency factor: during storm / alone, > 1 = slower)",
                    "tier, offender limit", metrics)
    for row in sorted(rows):
        for metric in metrics:
            found = values.get((row, metric))
            if found:
                text = (f"{statistics.median(found):.0f} (max {max(found):.0f})"
                        if "latency" not in metric and "per_s" not in metric
                        else _fmt_ci(found))
                matrix.put(row, metric, text, max(found))
    return matrix


def tables(samples: list[Sample]) -> list[Matrix]:
    """Every isolation table the samples hold, in the report's order."""
    return [m for m in (visibility(samples), containment(samples)) if m is not None]


def print_tables(samples: list[Sample], console: Any) -> None:
    """The isolation tables under the end-of-run summary (rich)."""
    from rich.table import Table
    from rich.text import Text

    for matrix in tables(samples):
        out = Table(title=matrix.title, show_lines=False)
        out.add_column(matrix.corner)
        for column in matrix.columns:
            out.add_column(column)
        for row in matrix.rows:
            out.add_row(Text(row), *(Text(matrix.get(row, c)) for c in matrix.columns))
        console.print(out)
