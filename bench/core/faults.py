"""Named fault points for the fault-injection tests.

With BENCH_FAULT_AT=<point>, a run that reaches that point writes its pid to BENCH_FAULT_MARK
and sleeps there (BENCH_FAULT_WAIT seconds, default 600), so a test can signal (or kill) it at
exactly that point and then check that nothing leaked. BENCH_FAULT_HIT=N pauses at the N-th
time the point is reached instead of the first (e.g. after a run has taken samples). Without
the variable a point costs one dictionary look-up.

Inert in normal runs: a point acts only when BENCH_FAULT_AT names it exactly (one of POINTS),
and the mark is written only as a new file (O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600), so a path
taken from the environment can never make root overwrite or truncate an existing file.
"""

from __future__ import annotations

import os
import time

from bench.core import safefs
from bench.core.errors import BenchError
from bench.core.settings import settings

POINTS = ("image.build", "tier.prepared", "instance.started", "workload.running",
          "tune.applied", "cache.built")


_hits: dict[str, int] = {}


def point(name: str) -> None:
    """Pause at the BENCH_FAULT_HIT-th (default: first) time the run reaches `name`."""
    conf = settings()
    if name not in POINTS or conf.fault_at != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != conf.fault_hit:
        return
    mark = conf.fault_mark
    if mark:
        try:
            safefs.create_new(mark, str(os.getpid()).encode())
        except FileExistsError:
            raise BenchError(f"The fault mark {mark} exists already (or is a link); bench "
                             "writes it only as a new file.", "remove it first.") from None
    time.sleep(conf.fault_wait)
