"""How long reports, history and publishing take on a million samples, and how big the HTML gets.

  1M report     `bench report` of one constructed run of about 1,000,000 samples (read, every
                section including tuning, write): from samples.jsonl alone, and with the
                Parquet copy `bench run` writes at its end; then headless Chromium until every
                chart is drawn (the page's own clock: performance.now() when the loader has
                drawn the last figure), and the file size
  1M ingest     that run into SQLite, and into a throwaway PostgreSQL server (COPY) when the
                server binaries are installed
  trend         `history trend` + change points over --series series of --runs runs each (in
                process, and `bench history trend` as a command from a fresh process)
  publish       (--publish) `bench publish` of the trend database: index + every run's report
  quick run     (--run DIR) `bench report` of a real run directory

Every step prints wall and CPU seconds (CPU counts all threads, and child processes such as the
fresh `bench` command; not a database server's) and the load average before it:
the machine is shared, so a wall time well above its CPU time says the step waited for a core.

Usage:  python -m benchmarks.report_scale [--samples 1000000] [--series 1000] [--runs 60]
                                          [--run RUN_DIR] [--publish] [--keep DIR]
The constructed data go to a temporary directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.analysis import frame, history, parquet_copy
from bench.report import publish, write
from tests import synthetic

TIERS = ("host", "ns", "docker", "kvm")
EXTRA = 32  # extra cpu cells per tier, so a run has many cells
ROWS: list[tuple[str, str, str, str, str]] = []  # step, wall, cpu, load, target


def per_repetition(extra: int) -> tuple[int, int]:
    """(samples, headline series) one repetition of a constructed run writes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = synthetic.write_run(Path(tmp), synthetic.Spec("probe", tiers=TIERS,
                                                             repetitions=1, extra_cells=extra))
        run = frame.load(path)
        from bench.analysis.methodology import headline

        series = len(headline(run.frame).drop_duplicates(["cell", "metric"]))
        return len(run.frame), series


def _cpu() -> float:
    """CPU seconds of this process (all threads) and of the children it waited for."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def timed(label: str, func: Callable[[], Any], target: str = "") -> Any:
    load = os.getloadavg()[0]
    wall, cpu = time.monotonic(), _cpu()
    result = func()
    wall, cpu = time.monotonic() - wall, _cpu() - cpu
    ROWS.append((label, f"{wall:7.2f}", f"{cpu:7.2f}", f"{load:5.1f}", target))
    print(f"{label}: {wall:.2f} s wall, {cpu:.2f} s CPU (load {load:.1f})", flush=True)
    return result


def note(label: str, value: str, target: str = "") -> None:
    ROWS.append((label, value, "", "", target))
    print(f"{label}: {value}", flush=True)


def mib(path: Path) -> str:
    return f"{path.stat().st_size / 2**20:.1f} MiB"


def chromium(path: Path) -> None:
    """Open the page in headless Chromium; the page's clock says when the last chart was drawn."""
    from tests import browser

    if not Path(browser.CHROMIUM).exists():
        note("chromium: draw every chart", "not measured (no chromium)")
        return
    load = os.getloadavg()[0]
    with browser.Browser() as chrome:
        started = time.monotonic()
        page = chrome.open(path.resolve().as_uri(), {
            "drawn": "document.body.getAttribute('data-figures-drawn')",
            "ms": "window.benchDrawnMs",
            "plots": "document.querySelectorAll('.js-plotly-plot').length"}, settle=0.1)
        wall = time.monotonic() - started
    if page.values["drawn"] != "yes" or page.errors:
        note("chromium: draw every chart", f"FAILED {page.errors[:2]}")
        return
    ROWS.append((f"chromium: every chart drawn ({page.values['plots']} charts)",
                 f"{page.values['ms'] / 1000:7.2f}", "", f"{load:5.1f}", "<= 5 s"))
    print(f"chromium: {page.values['plots']} charts drawn after {page.values['ms']:.0f} ms "
          f"(open to screenshot {wall:.1f} s)", flush=True)


def report_1m(tmp: Path, samples: int) -> Path:
    unit, _ = per_repetition(EXTRA)
    reps = max(1, round(samples / unit))
    spec = synthetic.Spec("big", tiers=TIERS, repetitions=reps, extra_cells=EXTRA)
    big = timed(f"construct a run of {reps * unit:,} samples (not bench)",
                lambda: synthetic.write_run(tmp / "results", spec))
    out = tmp / "big.html"
    timed("1M report from samples.jsonl alone (no copy yet)",
          lambda: write([frame.load(big)], out))
    (big / parquet_copy.NAME).unlink(missing_ok=True)
    frame._LAST.clear()
    timed("the run's Parquet copy, as `bench run` writes it at its end",
          lambda: frame.read_frame(big / "samples.jsonl"))
    frame._LAST.clear()
    timed("1M report: read + every section + write (bench report)",
          lambda: write([frame.load(big)], out), "<= 10 s")
    note("1M report: HTML size", mib(out), "< 10 MB")
    chromium(out)
    frame._LAST.clear()  # free the memory
    return big


def ingest_1m(tmp: Path, big: Path) -> None:
    run = timed("1M ingest: read the run", lambda: frame.load(big))
    engine = history.connect(f"sqlite:///{tmp / 'ingest.db'}")
    timed("1M ingest: into SQLite (100 rows per INSERT)", lambda: history.ingest(engine, run),
          "<= 5 s")
    engine.dispose()
    from tests import pgserver

    why = pgserver.missing()
    if why:
        note("1M ingest: into PostgreSQL", f"not measured ({why})")
        return
    with pgserver.server() as url:
        engine = history.connect(url)
        timed("1M ingest: into PostgreSQL (COPY)", lambda: history.ingest(engine, run),
              "<= 10 s")
        engine.dispose()


def trend(tmp: Path, series: int, runs: int) -> Path:
    extra = EXTRA
    _, per_run = per_repetition(extra)
    while per_run < series:  # more cpu cells until the runs carry enough series
        extra = extra * series // per_run + 1
        _, per_run = per_repetition(extra)
    path = tmp / "trend.db"
    engine = history.connect(f"sqlite:///{path}")

    def build() -> None:
        for night in range(runs):
            run = synthetic.write_run(tmp / "nightly", synthetic.Spec(
                f"night-{night:04d}", tiers=TIERS, repetitions=1, extra_cells=extra,
                seed=night, started_at=1_790_000_000 + night * 86400.0,
                shift=1.08 if night >= runs * 3 // 4 else 1.0))
            history.ingest_path(engine, run)
            shutil.rmtree(run)

    timed(f"construct and ingest {runs} runs (not bench)", build)
    found = timed(f"trend + change points, in process ({per_run} series x {runs} runs)",
                  lambda: history.series(history.points(engine)), "<= 2 s")
    note("trend: series / with a change point",
         f"{len(found)} / {sum(1 for s in found if s.changes)}")
    bench = [sys.executable, "-m", "bench.cli.main"]
    timed("trend: `bench history trend --format json` (fresh process)",
          lambda: subprocess.run([*bench, "history", "trend", "--db", f"sqlite:///{path}",
                                  "--format", "json"], check=True, capture_output=True),
          "<= 2 s")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--run", type=Path, help="a real run directory (e.g. a quick run)")
    parser.add_argument("--publish", action="store_true", help="also time `bench publish`")
    parser.add_argument("--keep", type=Path, help="work here and keep the data")
    args = parser.parse_args()
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        if args.run:
            out = tmp / "quick.html"
            timed(f"real run {args.run.name}: bench report",
                  lambda: write([frame.load(args.run)], out))
            note("real run: HTML size", mib(out))
            chromium(out)
        big = report_1m(tmp, args.samples)
        ingest_1m(tmp, big)
        shutil.rmtree(big)
        database = trend(tmp, args.series, args.runs)
        if args.publish:
            engine = history.connect(f"sqlite:///{database}")
            timed("publish: index + every run's report",
                  lambda: publish.publish(engine, tmp / "site"))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'step':<66} {'wall s':>7} {'CPU s':>7} {'load':>5}  target")
    for label, wall, cpu, load, target in ROWS:
        print(f"{label:<66} {wall:>7} {cpu:>7} {load:>5}  {target}")


if __name__ == "__main__":
    main()
