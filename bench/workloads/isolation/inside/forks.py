"""Fork storm and fork probe, printing one JSON object.

  forks.py storm BOUND SECONDS   fork as fast as possible until BOUND children are alive (each
                                 execs `sleep`, which ends by itself), retrying failed forks,
                                 for SECONDS; then kill and reap them all
  forks.py probe SECONDS         fork a child that exits at once and reap it, again and again,
                                 for SECONDS: the latency of each round trip and every failure

Both bound themselves: the storm never holds more than BOUND children, its children's sleep
outlives it by at most 2 s, and both stop after SECONDS.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sys
import time

SLEEP = "/bin/sleep"


def storm(bound: int, seconds: float) -> dict[str, object]:
    children: list[int] = []
    failures: dict[str, int] = {}
    forks = 0
    first_failure_at: int | None = None
    peak = 0
    reached: float | None = None
    start = time.monotonic()
    end = start + seconds
    linger = f"{seconds + 2:.0f}"
    while time.monotonic() < end:
        if len(children) >= bound:
            if reached is None:
                reached = time.monotonic() - start
            time.sleep(0.01)
            continue
        try:
            pid = os.fork()
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            failures[name] = failures.get(name, 0) + 1
            if first_failure_at is None:
                first_failure_at = len(children)
            time.sleep(0.001)
            continue
        if pid == 0:
            try:
                os.execv(SLEEP, [SLEEP, linger])  # noqa: S606 - a fixed program
            finally:
                os._exit(127)
        forks += 1
        children.append(pid)
        peak = max(peak, len(children))
    elapsed = time.monotonic() - start
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    busy = reached if reached is not None else elapsed  # forking, not holding at the bound
    return {"mode": "storm", "bound": bound, "seconds": elapsed, "forks": forks,
            "bound_reached_s": reached, "forks_per_s": forks / busy if busy > 0 else 0.0,
            "peak_children": peak, "peak_processes": peak + 1, "failures": failures,
            "first_failure_at_children": first_failure_at}


def probe(seconds: float) -> dict[str, object]:
    latencies: list[float] = []
    failures: dict[str, int] = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        try:
            pid = os.fork()
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            failures[name] = failures.get(name, 0) + 1
            time.sleep(0.001)
            continue
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        latencies.append((time.perf_counter() - t0) * 1e6)
    latencies.sort()

    def pick(q: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else None

    return {"mode": "probe", "forks": len(latencies), "failures": failures,
            "p50_us": pick(0.5), "p99_us": pick(0.99),
            "max_us": latencies[-1] if latencies else None}


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "storm":
        print(json.dumps(storm(int(argv[1]), float(argv[2]))))
    elif len(argv) == 2 and argv[0] == "probe":
        print(json.dumps(probe(float(argv[1]))))
    else:
        print("usage: forks.py storm BOUND SECONDS | probe SECONDS", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
