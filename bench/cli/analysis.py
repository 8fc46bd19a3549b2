"""The analysis commands: `bench report`, `bench compare`, `bench history ...`, `bench publish`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bench.analysis import defaults, history
from bench.core.errors import BenchError
from bench.core.rundir import results_dir

console = Console(width=None if sys.stdout.isatty() else 160)
F = TypeVar("F", bound=Callable[..., Any])


def _db_option(func: F) -> F:
    option = click.option("--db", "db", metavar="URL", default=None,
                          help="SQLAlchemy URL (default: $BENCH_HISTORY_URL or "
                               "sqlite:///results/history.db).")
    return option(func)


@click.command("report")
@click.argument("runs", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write (default: RUN/report.html for one run, "
                   "results/report-FIRST-LAST.html for several).")
def report_cmd(runs: tuple[str, ...], output: Path | None) -> None:
    """Write one self-contained HTML report of RUN (ids or paths; several are compared)."""
    started = time.monotonic()
    from bench import report as report_mod
    from bench.analysis import frame

    loaded = [frame.load(run) for run in runs]
    if output is None:
        output = (loaded[0].path / "report.html" if len(loaded) == 1 else
                  results_dir() / f"report-{loaded[0].run_id}-{loaded[-1].run_id}.html")
    report_mod.write(loaded, output)
    size = output.stat().st_size
    console.print(f"report: {output} ({size / 2**20:.1f} MiB, {sum(len(r.frame) for r in loaded):,}"
                  f" samples, {time.monotonic() - started:.1f} s)", highlight=False)


@click.command("compare")
@click.argument("base")
@click.argument("new")
@click.option("--format", "fmt", type=click.Choice(defaults.COMPARE_FORMATS), default="table",
              show_default=True)
@click.option("--threshold", type=click.FloatRange(0, 10), default=0.05, show_default=True,
              help="A 'slower' verdict beyond this relative slowdown is a regression (exit 1).")
@click.option("--min-effect", type=click.FloatRange(0, 10), default=defaults.MIN_EFFECT,
              show_default=True, help="Smaller changes are 'same' even when significant.")
@click.option("--alpha", type=click.FloatRange(0, 1), default=defaults.ALPHA, show_default=True,
              help="Significance level of the Mann-Whitney U test.")
@click.option("--correction", type=click.Choice(["holm", "bh"]), default="holm",
              show_default=True,
              help="Correction for testing many metrics at once: Holm, or Benjamini-Hochberg.")
@click.option("--all-metrics", is_flag=True, help="Every metric, not only the headline ones.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the output to this file.")
def compare_cmd(base: str, new: str, fmt: str, threshold: float, min_effect: float,
                alpha: float, correction: str, all_metrics: bool, output: Path | None) -> None:
    """Compare run NEW with run BASE: cost factor per metric (> 1 = slower) with CI and verdict.

    Exit status 1 when a metric is slower beyond --threshold (a regression), else 0."""
    from bench.analysis import compare as compare_mod
    from bench.analysis import frame

    result = compare_mod.compare(frame.load(base), frame.load(new), threshold=threshold,
                                 all_metrics=all_metrics, alpha=alpha, min_effect=min_effect,
                                 correction="bh" if correction == "bh" else "holm")
    if not result.changes:
        raise BenchError(f"Runs {result.base} and {result.new} have no cell and metric in common "
                         "(different scenarios or tiers, or no samples), so nothing was compared.",
                         "compare two runs of the same scenario (`bench summary RUN` shows what "
                         "each holds).")
    rendered = compare_mod.render(result, fmt)
    if isinstance(rendered, Table):
        console.print(rendered)
        for title, items in (("only in base", result.only_base), ("only in new", result.only_new)):
            if items:
                console.print(Text(f"{title}: {', '.join(items)}"))
        if output:
            output.write_text(compare_mod.as_markdown(result))
    else:
        click.echo(rendered, nl=False)
        if output:
            output.write_text(rendered)
    sys.exit(1 if result.regressions else 0)


@click.group("history")
def history_group() -> None:
    """Runs over time in a database: ingest, list, trend, check (for nightly jobs)."""


@history_group.command("ingest")
@click.argument("runs", nargs=-1, required=True)
@_db_option
def history_ingest(runs: tuple[str, ...], db: str | None) -> None:
    """Store RUN... (ids or paths) in the history database (re-ingesting replaces)."""
    engine = history.connect(db)
    for run in runs:
        done = history.ingest_path(engine, run)
        verb = "replaced" if done.replaced else "ingested"
        console.print(Text(f"{verb} {done.run_id}: {done.samples:,} samples"))


@history_group.command("list")
@_db_option
@click.option("--host", help="Only runs of this host.")
def history_list(db: str | None, host: str | None) -> None:
    """The stored runs, oldest first."""
    table = Table(title="history")
    for name in ("run", "host", "scenario", "started (UTC)", "status", "tiers", "samples"):
        table.add_column(name)
    for row in history.runs(history.connect(db), host):
        table.add_row(Text(row.run_id), Text(row.host), Text(row.scenario),
                      time.strftime("%Y-%m-%d %H:%M", time.gmtime(row.started_at)),
                      Text(row.status), Text(row.tiers), f"{row.samples:,}")
    console.print(table)


def _filters(func: F) -> F:
    for option in (click.option("--host"), click.option("--tier"), click.option("--workload"),
                   click.option("--metric"),
                   click.option("--all-metrics", is_flag=True,
                                help="Every metric, not only the headline ones."),
                   click.option("--min-effect", type=click.FloatRange(0, 10), default=0.02,
                                show_default=True,
                                help="Ignore level shifts smaller than this (relative)."),
                   click.option("--format", "fmt", type=click.Choice(["table", "json"]),
                                default="table", show_default=True)):
        func = option(func)
    return func


def _series(db: str | None, host: str | None, tier: str | None, workload: str | None,
            metric: str | None, all_metrics: bool, min_effect: float) -> list[history.Series]:
    points = history.points(history.connect(db), host, tier, workload, metric, all_metrics)
    return history.series(points, min_effect=min_effect)


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(stamp))


def _series_json(s: history.Series) -> dict[str, Any]:
    points = s.columns
    run_ids = points["run_id"].tolist()
    return {
        "host": s.host, "tier": s.tier, "cell": s.label, "metric": s.metric, "unit": s.unit,
        "direction": s.direction,
        "points": [{"run_id": r, "started": t, "median": m, "n": n} for r, t, m, n in zip(
            run_ids, points["started"].tolist(), points["median"].tolist(),
            points["n"].tolist(), strict=True)],
        "change_points": [{"index": c.index, "run_id": run_ids[c.index], "before": c.before,
                           "after": c.after, "change": c.change} for c in s.changes]}


@history_group.command("trend")
@_db_option
@_filters
def history_trend(db: str | None, host: str | None, tier: str | None, workload: str | None,
                  metric: str | None, all_metrics: bool, min_effect: float, fmt: str) -> None:
    """Each series (host, cell, metric): per-run medians and the change points found (PELT)."""
    found = _series(db, host, tier, workload, metric, all_metrics, min_effect)
    if fmt == "json":  # compact: the C encoder (indent= takes the pure-Python one, 10x slower)
        click.echo(json.dumps([_series_json(s) for s in found]))
        return
    table = Table(title="history trend")
    for name in ("host", "tier", "cell", "metric", "runs", "first", "last", "change points"):
        table.add_column(name)
    for s in found:
        pts = s.columns
        text = "; ".join(f"{c.change:+.1%} at {pts['run_id'][c.index]} "
                         f"({_when(float(pts['started'][c.index]))})" for c in s.changes)
        table.add_row(Text(s.host), Text(s.tier), Text(s.label), Text(s.metric),
                      str(len(pts["median"])), f"{pts['median'][0]:.4g}",
                      f"{pts['median'][-1]:.4g}", Text(text or "none"))
    console.print(table)


@history_group.command("check")
@_db_option
@_filters
@click.option("--window", type=click.IntRange(1, 10000), default=3, show_default=True,
              help="Alarm on shifts that start within the last N runs of a series.")
@click.option("--threshold", type=click.FloatRange(0, 10), default=0.05, show_default=True,
              help="Alarm when the level got worse by more than this.")
def history_check(db: str | None, host: str | None, tier: str | None, workload: str | None,
                  metric: str | None, all_metrics: bool, min_effect: float, fmt: str,
                  window: int, threshold: float) -> None:
    """Did a metric get worse recently? Exit 1 if a series shifted for the worse by more than
    --threshold within its last --window runs (a shift needs two runs after it to be seen)."""
    found = _series(db, host, tier, workload, metric, all_metrics, min_effect)
    alarms = history.check(found, window=window, threshold=threshold)
    if fmt == "json":
        click.echo(json.dumps({"series": len(found), "alarms": [
            {"series": a.series.name, "run_id": a.run_id, "before": a.change.before,
             "after": a.change.after, "slowdown": a.slowdown} for a in alarms]}, indent=2))
    else:
        for a in alarms:
            console.print(Text(f"SLOWER {a.slowdown:+.1%}: {a.series.name} from run {a.run_id} "
                               f"({a.change.before:.4g} -> {a.change.after:.4g} "
                               f"{a.series.unit})", style="red"))
        console.print(f"{len(found)} series checked, {len(alarms)} alarm(s) (window {window} "
                      f"runs, threshold {threshold:.0%}).", highlight=False)
    sys.exit(1 if alarms else 0)


@click.command("publish")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@_db_option
@click.option("--force", is_flag=True, help="Rewrite every run's report, not only new ones.")
def publish_cmd(directory: Path, db: str | None, force: bool) -> None:
    """Write a static site to DIRECTORY: runs index, trends with change points, run reports."""
    from bench.report import publish as publish_mod

    done = publish_mod.publish(history.connect(db), directory, force=force)
    console.print(f"published {done.runs} runs to {done.index} ({done.reports_written} reports "
                  f"written, {done.reports_kept} kept) in {done.seconds:.1f} s", highlight=False)

