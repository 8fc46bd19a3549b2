"""One bench run per host at a time: two runs would disturb each other's numbers and tunables.

The lock is an flock(2) on a file, so it is released when its holder dies, however it dies;
whoever takes it next knows any leftovers on the host belong to dead runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from bench.core.errors import BenchError
from bench.core.settings import settings


def lock_path() -> Path:
    """Beside the run work directories it guards, so one setting moves both together."""
    return settings().host_lock


@contextlib.contextmanager
def hold(run_id: str, wait: bool = False) -> Iterator[None]:
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = _holder(path)
            raise BenchError(
                f"Another bench run holds this host ({holder}); two runs at once would disturb "
                "each other's measurements and tunables.",
                "wait for it to finish, or pass --wait to queue behind it.") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"run_id": run_id, "pid": os.getpid(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _holder(path: Path) -> str:
    try:
        data = json.loads(path.read_text())
        return f"run {data['run_id']}, pid {data['pid']}, since {data['since']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"
