"""How fast the CLI answers: `bench --help` and `bench list` against `python -c 'import click'`.

Interleaved rounds (click, click command, --help, list, click, ...) so machine load hits all
alike; the medians and the ratios to the click import and to a bare click command (one
command, `--help`) are printed. Target (issue 16): `bench --help` and `bench list` under 0.3 s
here and at most 4 times the click import.

Usage:  python -m benchmarks.cli_startup [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = str(Path(sys.executable).with_name("bench"))
COMMANDS = {
    "import click": [sys.executable, "-c", "import click"],
    "click command": [sys.executable, "-c", "import click\n"
                      "@click.command()\ndef main() -> None:\n    'A bare command.'\n"
                      "main(['--help'])"],
    "bench --help": [BENCH, "--help"],
    "bench list": [BENCH, "list"],
}


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                   env={**os.environ, "COLUMNS": "200"})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    for argv in COMMANDS.values():  # warm the page cache and .pyc files
        timed(argv)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):
        for name, argv in COMMANDS.items():
            times[name].append(timed(argv))
    base = statistics.median(times["import click"])
    bare = statistics.median(times["click command"])
    load = os.getloadavg()[0]
    print(f"{'command':<14} {'median s':>9} {'x click':>8} {'x command':>10}   "
          f"(load average {load:.1f})")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<14} {median:9.3f} {median / base:8.2f} {median / bare:10.2f}")


if __name__ == "__main__":
    main()
