"""The end-of-run summary: per cell and metric, the median with its 95% CI and the cost factor
against host (> 1 = slower, whichever way the metric points: the arrow says which way is
better)."""

from __future__ import annotations

import math
from collections import defaultdict

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from bench.analysis import stats
from bench.core.numbers import human as _fmt
from bench.core.rundir import RunDir
from bench.core.samples import BASELINE_TIER, Sample
from bench.workloads import HEADLINE


def group(samples: list[Sample]) -> dict[tuple[str, str, str, str, str], list[float]]:
    """(label, metric, tier, unit, direction) -> values, in a stable order."""
    groups: dict[tuple[str, str, str, str, str], list[float]] = defaultdict(list)
    for s in samples:
        groups[(s.cell.label, s.metric, s.cell.tier, s.unit, s.direction)].append(s.value)
    return groups


def table(rundir: RunDir, all_metrics: bool = False) -> Table:
    samples = rundir.samples()
    groups = group(samples)
    workloads = {s.cell.label: s.cell.workload for s in samples}
    tiers = list(dict.fromkeys(rundir.manifest().get("tiers", [])))
    out = Table(title=f"run {rundir.run_id}: median and 95% CI per cell", show_lines=False)
    for name in ("workload", "metric", "tier", "median", "95% CI", "n", "unit",
                 "cost vs host (> 1 = slower)"):
        out.add_column(name, justify="right" if name in ("median", "n") else "left")
    order = sorted({(k[0], k[1]) for k in groups})
    for label, metric in order:
        if not all_metrics and metric not in HEADLINE.get(workloads[label], (metric,)):
            continue
        base = next((v for k, v in groups.items()
                     if k[0] == label and k[1] == metric and k[2] == BASELINE_TIER), None)
        for tier in tiers:
            key = next((k for k in groups if k[:3] == (label, metric, tier)), None)
            if key is None:
                continue
            est = stats.median_ci(groups[key])
            direction: stats.Direction = "higher" if key[4] == "higher" else "lower"
            cost = "-"
            if base is not None and tier != BASELINE_TIER:
                r = stats.overhead_ci(groups[key], base, direction)
                cost = f"{r.median:.3f} [{_fmt(r.low)}, {_fmt(r.high)}]"
            arrow = "↑" if direction == "higher" else "↓"
            out.add_row(Text(label), Text(f"{metric} {arrow}"), Text(tier), _fmt(est.median),
                        f"[{_fmt(est.low)}, {_fmt(est.high)}]", str(est.n), key[3], cost)
    out.caption = "↑ higher is better, ↓ lower is better; cost = how many times worse than host"
    return out


def cost_factors(samples: list[Sample]) -> dict[tuple[str, str], list[float]]:
    """(tier, family) -> the cost factor (> 1 = slower than the host) of each headline metric
    of each of the family's cells that the baseline also ran."""
    from bench.workloads import WORKLOADS

    groups = group(samples)
    workload_of = {s.cell.label: s.cell.workload for s in samples}
    families: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (label, metric, tier, unit, direction), values in groups.items():
        workload = WORKLOADS.get(workload_of[label])
        if tier == BASELINE_TIER or workload is None or metric not in workload.headline \
                or workload.family == "isolation":  # not a cost vs host: own tables
            continue
        base = groups.get((label, metric, BASELINE_TIER, unit, direction))
        if not base:
            continue
        way: stats.Direction = "higher" if direction == "higher" else "lower"
        factor = stats.overhead_ci(values, base, way).median
        if math.isfinite(factor) and factor > 0:
            families[(tier, workload.family)].append(factor)
    return families


def cost_matrix(samples: list[Sample], tiers: list[str]) -> Table | None:
    """Tier x family: the geometric mean of the headline cost factors of the family's cells,
    with their range and count; None when no tier but the baseline ran."""
    others = [t for t in tiers if t != BASELINE_TIER]
    families = cost_factors(samples)
    if not others or not families:
        return None
    columns = sorted({family for _, family in families})
    out = Table(title="cost factor vs host per family (geometric mean of headline metrics; "
                "> 1 = slower)")
    out.add_column("tier")
    for family in columns:
        out.add_column(family, justify="right")
    for tier in others:
        row = [tier]
        for family in columns:
            found = families.get((tier, family))
            if not found:
                row.append("-")
                continue
            gmean = math.exp(sum(math.log(f) for f in found) / len(found))
            spread = f" ({min(found):.2f}-{max(found):.2f}, n={len(found)})" \
                if len(found) > 1 else ""
            row.append(f"{gmean:.2f}{spread}")
        out.add_row(*row)
    return out


def failures(rundir: RunDir) -> list[str]:
    return [f"{r.cell} rep {r.repetition}: {r.status}: {r.error}"
            for r in rundir.records() if r.status != "ok"]


def emulation_banner(tiers: list[str]) -> str:
    """The warning shown above every summary and report of a run with emulated VMs."""
    return (f"EMULATED: tier {', '.join(tiers)} ran its virtual machines under TCG (QEMU's "
            "software emulation) because KVM is unusable on this host. These numbers are "
            "emulation costs, several times a real VM's, and say nothing about KVM overhead.")


def emulated_tiers(samples: list[Sample]) -> list[str]:
    return sorted({s.cell.tier for s in samples if s.metadata.get("accelerator") == "tcg"})


def print_summary(rundir: RunDir, console: Console, all_metrics: bool = False) -> None:
    """The answer first (tier x family cost factors), the per-cell table with --all-metrics
    (or when only the baseline ran: then the medians are the answer)."""
    from bench.analysis import isolation, switch_table

    samples = rundir.samples()
    matrix = cost_matrix(samples, list(dict.fromkeys(rundir.manifest().get("tiers", []))))
    if matrix is not None:
        console.print(matrix)
    if matrix is None or all_metrics:
        console.print(table(rundir, all_metrics))
    else:
        console.print("per cell and metric: `bench summary RUN --all-metrics`", highlight=False)
    isolation.print_tables(samples, console)
    switch_table.print_table(rundir.path, console)
    emulated = emulated_tiers(samples)
    if emulated:
        console.print(Panel(emulation_banner(emulated), style="bold red"))
    manifest = rundir.manifest()
    for tier, reason in manifest.get("skipped_tiers", {}).items():
        console.print(f"[yellow]tier {tier} skipped: {reason}[/yellow]")
    for cell, reason in manifest.get("skipped_cells", {}).items():
        console.print(f"[yellow]{cell} takes no part: {reason}[/yellow]", highlight=False)
    print_methodology(rundir, console)
    failed = failures(rundir)
    if failed:
        console.print(f"[red]{len(failed)} run(s) failed[/red] (details in runs.jsonl):")
        for line in failed[:10]:
            console.print(f"  {line}", markup=False)


def print_methodology(rundir: RunDir, console: Console) -> None:
    """The methodology checks (bench/analysis/methodology.py) of a run, one line each."""
    from bench.analysis import frame, methodology

    findings = methodology.check(rundir.manifest(), frame.read_frame(rundir.samples_path))
    for finding in findings:
        colour = "yellow" if finding.severity == "warning" else "cyan"
        console.print(f"[{colour}]{finding.severity}:[/{colour}] ", end="")
        console.print(finding.text(limit=3), markup=False, highlight=False)
