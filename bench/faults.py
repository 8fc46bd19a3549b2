"""Named fault points for the fault-injection tests.

With BENCH_FAULT_AT=<point>, a run that reaches that point writes its pid to BENCH_FAULT_MARK
and sleeps there, so a test can signal (or kill) it at exactly that point and then check that
nothing leaked. Without the variable a point costs one dictionary look-up.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

POINTS = ("image.build", "tier.prepared", "instance.started", "workload.running",
          "tune.applied", "cache.built")


def point(name: str) -> None:
    if os.environ.get("BENCH_FAULT_AT") != name:
        return
    mark = os.environ.get("BENCH_FAULT_MARK")
    if mark:
        Path(mark).write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("BENCH_FAULT_WAIT", "600")))
