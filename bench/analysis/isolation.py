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


ANTAGONISTS = ("cpu", "membw", "disk_direct", "disk_buffered", "net", "memhog", "forks")


def _slowdowns(samples: list[Sample]) -> dict[tuple[str, str], list[float]]:
    """(tier, antagonist column) -> every pair's slowdown of every repetition (the pairs are
    the measurements; a run's median of them is its sample)."""
    found: dict[tuple[str, str], list[float]] = defaultdict(list)
    for s in samples:
        if s.cell.workload == "isolation.interference" and s.metric == "victim_slowdown":
            column = f"{s.cell.params.get('antagonist', 'cpu')} (victim " \
                     f"{s.metadata.get('victim', s.cell.params.get('victim'))})"
            pairs = [r for r in s.metadata.get("pair_ratios", []) if r == r]
            found[(s.cell.tier, column)].extend(pairs or [s.value])
    return found


def _order(columns: set[str]) -> list[str]:
    return sorted(columns, key=lambda c: (next((i for i, a in enumerate(ANTAGONISTS)
                                                if c.startswith(a + " ")), 99), c))


def interference(samples: list[Sample]) -> list[Matrix]:
    """Tier x antagonist: the victim's slowdown (cost factor, > 1 = slower) with its 95% CI
    over all pairs of all repetitions, and the antagonist's own throughput beside it."""
    slowdowns = _slowdowns(samples)
    if not slowdowns:
        return []
    tiers = _tiers([s for s in samples if s.cell.workload == "isolation.interference"])
    columns = _order({c for _, c in slowdowns})
    heat = Matrix("Interference: victim slowdown beside an antagonist (cost factor, > 1 = "
                  "slower; median [95% CI] over the ABBA pairs of all repetitions)", "tier",
                  columns)
    for (tier, column), values in sorted(slowdowns.items(), key=lambda kv: tiers.index(
            kv[0][0]) if kv[0][0] in tiers else 99):
        heat.put(tier, column, _fmt_ci(values), statistics.median(values))
    heat.rows.sort(key=lambda t: tiers.index(t) if t in tiers else 99)
    own: dict[tuple[str, str], list[float]] = defaultdict(list)
    units: dict[str, str] = {}
    for s in samples:
        if s.cell.workload == "isolation.interference" and s.metric.startswith("antagonist_"):
            column = f"{s.cell.params.get('antagonist', 'cpu')} (victim " \
                     f"{s.metadata.get('victim', s.cell.params.get('victim'))})"
            own[(s.cell.tier, column)].append(s.value)
            units[column] = f"{s.metric.removeprefix('antagonist_')} {s.unit}".strip()
    thru = Matrix("Interference: the antagonist's own throughput (median over repetitions)",
                  "tier", [f"{c}: {units.get(c, '')}" for c in columns])
    for tier in heat.rows:
        for column in columns:
            throughput = own.get((tier, column))
            if throughput:
                thru.put(tier, f"{column}: {units.get(column, '')}",
                         f"{statistics.median(throughput):.4g}")
    return [heat, thru]


ACCOUNTING_ROWS = {
    "anon_true_MiB": "anonymous: true cost, host AnonPages (MiB)",
    "anon_reported_MiB": "anonymous: tier usage (MiB)",
    "anon_usage_error_pct": "anonymous: tier usage error (%)",
    "anon_stat_error_pct": "anonymous: memory.stat error (%)",
    "anon_docker_stats_error_pct": "anonymous: docker stats error (%)",
    "anon_pss_MiB": "anonymous: instance PSS (MiB)",
    "clean_cache_true_MiB": "clean page cache: true cost, host Cached (MiB)",
    "clean_cache_usage_error_pct": "clean page cache: tier usage error (%)",
    "clean_cache_stat_error_pct": "clean page cache: memory.stat error (%)",
    "clean_cache_docker_stats_error_pct": "clean page cache: docker stats error (%)",
    "dirty_cache_true_MiB": "dirty page cache: true cost, host Cached (MiB)",
    "dirty_host_Dirty_MiB": "dirty page cache: host Dirty raise (MiB)",
    "dirty_stat_MiB": "dirty page cache: memory.stat dirty (MiB)",
    "dirty_cache_usage_error_pct": "dirty page cache: tier usage error (%)",
    "dirty_cache_stat_error_pct": "dirty page cache: memory.stat error (%)",
    "dirty_cache_docker_stats_error_pct": "dirty page cache: docker stats error (%)",
    "slab_true_MiB": "slab (files, sockets): true cost, host Slab (MiB)",
    "slab_usage_error_pct": "slab: tier usage error (%)",
    "slab_stat_error_pct": "slab: memory.stat kernel memory error (%)",
    "slab_docker_stats_error_pct": "slab: docker stats error (%)",
}


def accounting(samples: list[Sample]) -> Matrix | None:
    """Reading x tier: the true cost of each kind of memory made inside and the error of what
    the tier reports, in % of the true cost (median [95% CI] over repetitions)."""
    mine = [s for s in samples if s.cell.workload == "isolation.accounting"]
    if not mine:
        return None
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for s in mine:
        if s.metric in ACCOUNTING_ROWS:
            values[(ACCOUNTING_ROWS[s.metric], s.cell.tier)].append(s.value)
    matrix = Matrix("Memory accounting: true cost on the host and the tier's error "
                    "(% of true cost; - = the tier reports nothing)", "reading", _tiers(mine))
    for row in ACCOUNTING_ROWS.values():
        for tier in matrix.columns:
            found = values.get((row, tier))
            if found:
                matrix.put(row, tier, _fmt_ci(found), statistics.median(found))
    return matrix


def tables(samples: list[Sample]) -> list[Matrix]:
    """Every isolation table the samples hold, in the report's order."""
    found = [visibility(samples), *interference(samples), containment(samples),
             accounting(samples)]
    return [m for m in found if m is not None]


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
