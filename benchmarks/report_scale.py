"""How long reports, history and publishing take, and how big the HTML gets.

  quick run     `bench report` of a real run directory (give it with --run)
  1M report     `bench report` of one constructed run with about 1,000,000 samples
  1M history    `bench history ingest` of constructed nightly runs totalling about 1,000,000
                samples into SQLite, then `bench publish` (index with trends and change points,
                one report per run) and a second publish (the index only: reports exist)

Usage:  python -m benchmarks.report_scale [--run RUN_DIR] [--samples 1000000] [--nights 200]
The constructed data go to a temporary directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench.analysis import frame, history
from bench.report import publish, write
from tests import synthetic

TIERS = ("host", "ns", "docker", "kvm")
EXTRA = 32  # extra cpu cells per tier, so a run has many cells


def per_repetition() -> int:
    """Samples one repetition of a constructed run writes (all tiers, all cells)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = synthetic.write_run(Path(tmp), synthetic.Spec("probe", tiers=TIERS,
                                                             repetitions=1, extra_cells=EXTRA))
        return sum(1 for _ in open(path / "samples.jsonl"))


def timed(label: str, func, rows: list[tuple[str, str]]):  # type: ignore[no-untyped-def]
    started = time.monotonic()
    result = func()
    seconds = time.monotonic() - started
    rows.append((label, f"{seconds:8.1f} s"))
    print(f"{label}: {seconds:.1f} s", flush=True)
    return result


def mib(path: Path) -> str:
    return f"{path.stat().st_size / 2**20:8.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a real run directory (e.g. a quick run)")
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--nights", type=int, default=200)
    args = parser.parse_args()
    rows: list[tuple[str, str]] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        if args.run:
            run = timed("quick run: load", lambda: frame.load(args.run), rows)
            out = tmp / "quick.html"
            timed(f"quick run: report ({len(run.frame):,} samples)",
                  lambda: write([run], out), rows)
            rows.append(("quick run: HTML size", mib(out)))

        unit = per_repetition()
        reps = max(1, round(args.samples / unit))
        spec = synthetic.Spec("big", tiers=TIERS, repetitions=reps, extra_cells=EXTRA)
        big = timed(f"1M run: write ({reps * unit:,} samples)",
                    lambda: synthetic.write_run(tmp / "results", spec), rows)
        loaded = timed("1M run: load samples.jsonl", lambda: frame.load(big), rows)
        out = tmp / "big.html"
        timed("1M run: report", lambda: write([loaded], out), rows)
        rows.append(("1M run: HTML size", mib(out)))
        from bench.tune.recommend import recommendation_html

        timed("1M run: of which the tuning section (bench/tune/recommend.py)",
              lambda: recommendation_html(big), rows)
        loaded.frame = loaded.frame.iloc[:0]  # free the memory

        per_night = max(1, round(args.samples / args.nights / unit))
        paths = timed(f"history: write {args.nights} runs x {per_night * unit:,} samples", lambda: [
            synthetic.write_run(tmp / "nightly", synthetic.Spec(
                f"night-{night:04d}", tiers=TIERS, repetitions=per_night, extra_cells=EXTRA,
                seed=night, started_at=1_790_000_000 + night * 86400.0,
                shift=1.08 if night >= args.nights * 3 // 4 else 1.0))
            for night in range(args.nights)], rows)
        engine = history.connect(f"sqlite:///{tmp / 'history.db'}")
        timed("history: ingest all runs",
              lambda: [history.ingest_path(engine, p) for p in paths], rows)
        rows.append(("history: database size", mib(tmp / "history.db")))
        found = timed("history: trend + change points (all series)",
                      lambda: history.series(history.points(engine)), rows)
        rows.append(("history: series / with a change point",
                     f"{len(found)} / {sum(1 for s in found if s.changes)}"))
        site = tmp / "site"
        timed("publish: index + every run's report", lambda: publish.publish(engine, site), rows)
        timed("publish again: index only (reports kept)",
              lambda: publish.publish(engine, site), rows)
        rows.append(("publish: index.html size", mib(site / "index.html")))
        size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
        rows.append(("publish: whole site size", f"{size / 2**20:8.1f} MiB"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


if __name__ == "__main__":
    main()
