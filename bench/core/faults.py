"""Named fault points for the fault-injection tests.

With BENCH_FAULT_AT=<point>, a run that reaches that point writes its pid to BENCH_FAULT_MARK
and sleeps there (BENCH_FAULT_WAIT seconds, default 600), so a test can signal (or kill) it at
exactly that point and then check that nothing leaked. BENCH_FAULT_HIT=N pauses at the N-th
time the point is reached instead of the first (e.g. after a run has taken samples). Without
the variable a point costs one dictionary look-up.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.core.settings import settings

POINTS = ("image.build", "tier.prepared", "instance.started", "workload.running",
          "tune.applied", "cache.built")


_hits: dict[str, int] = {}


def point(name: str) -> None:
    """Pause at the BENCH_FAULT_HIT-th (default: first) time the run reaches `name`."""
    conf = settings()
    if conf.fault_at != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != conf.fault_hit:
        return
    mark = conf.fault_mark
    if mark:
        Path(mark).write_text(str(os.getpid()))
    time.sleep(conf.fault_wait)
