"""`bench publish DIR`: a static site from the history database.

DIR/index.html lists the runs (newest first, each linking its report), the change-point alarms
and a trend chart per workload metric; DIR/runs/<run>.html is each run's report, written once
(later publishes skip reports that exist unless forced); DIR/plotly.min.js is shared by all
pages, so the site works offline and each page stays small.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from markupsafe import Markup
from sqlalchemy.engine import Engine

from bench.analysis import history
from bench.analysis.history_schema import RunRow
from bench.report import figures, write
from bench.report.page import Page, write_plotlyjs
from bench.report.templating import render as template

MAX_TRENDS = 60


def page_name(run_id: str) -> str:
    """A file name for a run id that may hold any character (ids come from the database)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)[:120]
    if safe != run_id:
        safe += "-" + hashlib.sha256(run_id.encode()).hexdigest()[:8]
    return f"{safe}.html"


@dataclass
class Published:
    index: Path
    reports_written: int
    reports_kept: int
    runs: int
    seconds: float


def publish(engine: Engine, out: Path, force: bool = False, min_effect: float = 0.02,
            window: int = 3, threshold: float = 0.05) -> Published:
    started = time.monotonic()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    write_plotlyjs(out / "plotly.min.js")
    stored = history.runs(engine)
    written = kept = 0
    for row in stored:
        target = out / "runs" / page_name(row.run_id)
        if target.exists() and not force:
            kept += 1
            continue
        write([history.load(engine, row.run_id)], target, plotlyjs="../plotly.min.js")
        written += 1
    all_series = history.series(history.points(engine), min_effect=min_effect)
    alarms = history.check(all_series, window=window, threshold=threshold)
    page = Page("bench history", f"{len(stored)} runs · {len(all_series)} series · published "
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    page.add("alarms", "Shifts in the last runs", _alarms(alarms, window, threshold))
    page.add("trends", "Trends", _trends(page, all_series))
    page.add("runs", "Runs", _runs(stored))
    index = out / "index.html"
    tmp = index.with_name("index.html.tmp")
    tmp.write_text(page.render("plotly.min.js"), encoding="utf-8")
    tmp.replace(index)
    return Published(index, written, kept, len(stored), time.monotonic() - started)


def _alarms(alarms: list[history.Alarm], window: int, threshold: float) -> Markup:
    return template("alarms.html.j2", alarms=alarms, window=window, threshold=threshold,
                    page_name=page_name)


def _trends(page: Page, all_series: list[history.Series]) -> Markup:
    if not all_series:
        return template("note.html.j2", warning=False,
                        text="No samples stored yet: `bench history ingest RUN`.")
    by_metric: dict[tuple[str, str, str], list[history.Series]] = {}
    for s in all_series:
        by_metric.setdefault((s.workload, s.metric, s.unit), []).append(s)
    parts = []
    for (workload, metric, unit), members in sorted(by_metric.items())[:MAX_TRENDS]:
        frames, changes = [], {}
        for s in members:
            name = f"{s.host} · {s.tier} · {s.label}"
            frames.append(s.points.assign(series=name))
            changes[name] = [(float(s.columns["started"][c.index]), c.change)
                             for c in s.changes]
        fig = figures.trend(pd.concat(frames), f"{workload}: {metric}", unit, changes)
        parts.append(page.figure(fig))
    return template("figures.html.j2", figures=parts, empty="", note="",
                    intro="Per-run medians; dashed lines mark change points (PELT, see "
                          "bench/analysis/changepoint.py) with the relative change of the level.")


def _runs(stored: list[RunRow]) -> Markup:
    return template("history_runs.html.j2", stored=list(reversed(stored)), page_name=page_name)
