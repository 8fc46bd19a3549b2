"""The same commands on two versions of bench, interleaved: a checkout of the version before
(`git worktree add --detach DIR REV`) against this one, each command a fresh process of this
venv's Python (the older tree first on PYTHONPATH), in a new random order every round.

Cases: `click` (python -c 'import click'), `list` (bench list), `trend` (bench history trend
--format json over --db), `report` (`bench report`'s write of --run read from samples.jsonl:
any Parquet copy is removed first), `ingest` (`history.ingest` of --run, read first, into a new
SQLite database: the child times the ingest itself, as report_scale's "1M ingest" step does, and
reports that instead of its whole life). Prints the median wall and CPU seconds (CPU counts the
child's threads) per version, and each median over `click`'s when `click` is among the cases.

Usage:  python -m benchmarks.before_after --base DIR [--cases click,list,trend,report,ingest]
            [--rounds 9] [--db sqlite:///PATH] [--run RUN_DIR]
`--db` and `--run` can be made by `python -m benchmarks.report_scale --keep DIR`.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from time import perf_counter

REPORT = ("import sys; from pathlib import Path; from bench.analysis import frame; "
          "from bench.report import write; "
          "(Path(sys.argv[1]) / 'samples.parquet').unlink(missing_ok=True); "
          "write([frame.load(Path(sys.argv[1]))], Path(sys.argv[2]))")
INGEST = ("import sys, time; from pathlib import Path; from bench.analysis import frame, history; "
          "run = frame.load(Path(sys.argv[1])); db = Path(sys.argv[2]).with_suffix('.db'); "
          "db.unlink(missing_ok=True); engine = history.connect(f'sqlite:///{db}'); "
          "w, c = time.perf_counter(), time.process_time(); history.ingest(engine, run); "
          "print(time.perf_counter() - w, time.process_time() - c)")


def argv_of(case: str, args: argparse.Namespace, out: Path) -> list[str]:
    py = sys.executable
    return {"click": [py, "-c", "import click"],
            "list": [py, "-m", "bench.cli", "list"],
            "trend": [py, "-m", "bench.cli", "history", "trend", "--db", str(args.db),
                      "--format", "json"],
            "report": [py, "-c", REPORT, str(args.run.resolve()), str(out)],
            "ingest": [py, "-c", INGEST, str(args.run.resolve()), str(out)]}[case]


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """`cwd` outside both trees: `python -c`/`-m` put the working directory first on sys.path,
    before PYTHONPATH, so from a checkout's root both versions would be that checkout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = perf_counter()
    done = subprocess.run(argv, env=env, check=True, stdout=subprocess.PIPE, text=True, cwd=cwd)
    wall = perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if argv[2] == INGEST:  # the child's own timing of the step
        own = done.stdout.split()
        return float(own[0]), float(own[1])
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="checkout of the older bench")
    parser.add_argument("--cases", default="click,list")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--db", help="history database URL (trend)")
    parser.add_argument("--run", type=Path, help="run directory (report)")
    args = parser.parse_args()
    cases = args.cases.split(",")
    envs = {"before": {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(args.base.resolve())},
            "after": {**os.environ, "COLUMNS": "200"}}
    keys = [(case, version) for case in cases for version in envs]
    walls: dict[tuple[str, str], list[float]] = {key: [] for key in keys}
    cpus: dict[tuple[str, str], list[float]] = {key: [] for key in keys}
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.html"
        for key in keys:  # warm the page cache and both trees' .pyc files
            timed(argv_of(key[0], args, out), envs[key[1]], Path(tmp))
        for _ in range(args.rounds):
            loads.append(os.getloadavg()[0])
            random.shuffle(keys)
            for case, version in keys:
                wall, cpu = timed(argv_of(case, args, out), envs[version], Path(tmp))
                walls[case, version].append(wall)
                cpus[case, version].append(cpu)
    click = statistics.median(walls["click", "after"]) if "click" in cases else None
    print(f"{args.rounds} rounds, load average {min(loads):.1f}-{max(loads):.1f}")
    for case in cases:
        for version in envs:
            wall = statistics.median(walls[case, version])
            cpu = statistics.median(cpus[case, version])
            ratio = f"  {wall / click:6.2f} x click" if click else ""
            print(f"{case:7} {version:7} {wall:8.3f} s wall {cpu:8.3f} s CPU{ratio}")


if __name__ == "__main__":
    main()
