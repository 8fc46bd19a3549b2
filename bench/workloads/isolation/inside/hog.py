"""Memory hog: allocate and touch TARGET_MB of anonymous memory in 8 MiB steps as fast as it
can (a limit below TARGET_MB gets it killed), then hold it until SECONDS have passed (counted
from its start); print one JSON object. Progress goes to stderr line by line, so an
out-of-memory kill still tells how far it got.

  hog.py TARGET_MB SECONDS
"""

from __future__ import annotations

import json
import sys
import time

STEP = 8 << 20
PAGE = 4096


def main(target_mb: int, seconds: float) -> dict[str, object]:
    start = time.monotonic()
    held: list[bytearray] = []
    allocated = 0
    while allocated < target_mb << 20:
        chunk = bytearray(STEP)
        chunk[::PAGE] = b"\x01" * len(range(0, STEP, PAGE))  # touch every page
        held.append(chunk)
        allocated += STEP
        print(f"allocated_mb {allocated >> 20}", file=sys.stderr, flush=True)
    filled = time.monotonic() - start
    time.sleep(max(0.0, seconds - filled))
    return {"allocated_mb": allocated >> 20, "fill_s": filled,
            "mb_per_s": (allocated >> 20) / filled if filled > 0 else 0.0}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), float(sys.argv[2]))))
