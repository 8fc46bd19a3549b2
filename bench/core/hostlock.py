"""One bench run per host at a time: two runs would disturb each other's numbers and tunables.

The lock is an flock(2) on a file, so it is released when its holder dies, however it dies;
whoever takes it next knows any leftovers on the host belong to dead runs.

Each run also holds a lock of its own (`<work dir>/<run id>/.alive`) for as long as it lives:
`bench cleanup` and the next run spare a run whose lock is held, even when it took the host lock
under another path (BENCH_LOCK_PATH). Both live in a shared directory (/var/tmp/bench), so they
are opened through bench.core.safefs: a planted symlink or foreign file is refused, never
followed or truncated.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from bench.core import safefs
from bench.core.errors import BenchError
from bench.core.settings import settings

ALIVE = ".alive"


def work_root() -> Path:
    return settings().work_dir


def lock_path() -> Path:
    """Beside the run work directories it guards, so one setting moves both together."""
    return settings().host_lock


@contextlib.contextmanager
def hold(run_id: str, wait: bool = False) -> Iterator[None]:
    path = lock_path()
    safefs.secure_dir(path.parent)
    fd = safefs.lock(path, wait)
    if fd is None:
        holder = _holder(path)
        raise BenchError(
            f"Another bench run holds this host ({holder}); two runs at once would disturb "
            "each other's measurements and tunables.",
            "wait for it to finish, or pass --wait to queue behind it.")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"run_id": run_id, "pid": os.getpid(),
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _holder(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            data = json.loads(os.read(fd, 4096))
        finally:
            os.close(fd)
        return f"run {data['run_id']}, pid {data['pid']}, since {data['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


class RunLock:
    """The run's work directory (made safely, with bench's marker) and its liveness lock."""

    def __init__(self, run_id: str) -> None:
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise BenchError(f"{run_id!r} is not a run id.", "use the id `bench run` printed.")
        self.run_id = run_id
        self.path = work_root() / run_id
        safefs.secure_dir(work_root())
        safefs.secure_dir(self.path)
        safefs.mark(self.path, run_id)
        for _ in range(50):  # a concurrent is_locked() holds it shared for an instant
            fd = safefs.lock(self.path / ALIVE)
            if fd is not None:
                break
            time.sleep(0.02)
        if fd is None:
            raise BenchError(f"Another bench process is running run {run_id}.",
                             "wait for it to finish, or stop it first.")
        self._fd: int | None = fd

    def release(self, remove: bool = True) -> None:
        """Remove the work directory (while still holding the lock), then drop the lock."""
        if remove:
            safefs.remove_marked(self.path)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def run_is_live(run_id: str) -> bool:
    return safefs.is_locked(work_root() / run_id / ALIVE)


def dead_run_dirs(pattern: str = "*") -> list[Path]:
    """Work directories bench made (its marker) for runs no process holds any more."""
    return [p for p in sorted(work_root().glob(pattern))
            if safefs.marked(p) == p.name and not run_is_live(p.name)]


def run_dirs(run_id: str | None) -> list[Path]:
    """A tier's cleanup: the named run's work directory, or (None) those of every dead run."""
    if run_id is not None:
        path = work_root() / run_id
        return [path] if safefs.marked(path) == run_id else []
    return dead_run_dirs()
