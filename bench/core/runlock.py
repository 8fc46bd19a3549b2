"""Per-run liveness locks: a run holds an flock on <dir>/<run id>.lock for as long as its process
lives (the kernel drops it if the process dies), so cleanup in another shell, or by another
run, spares every run that is still going and removes only what dead runs left."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO

from bench.core.errors import BenchError
from bench.core.settings import settings


def lock_path(run_id: str, directory: Path | None = None) -> Path:
    return (directory or settings().run_lock_dir) / f"{run_id}.lock"


def hold(run_id: str, directory: Path | None = None) -> IO[str]:
    """Take the run's lock (close the handle to release it)."""
    path = lock_path(run_id, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "w")  # noqa: SIM115 (held until the run ends)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise BenchError(f"Another bench process is running run {run_id} (it holds {path}).",
                         "wait for it to finish, or stop it first.") from None
    return handle


def release(run_id: str, handle: IO[str], directory: Path | None = None) -> None:
    lock_path(run_id, directory).unlink(missing_ok=True)
    handle.close()


def is_live(run_id: str, directory: Path | None = None) -> bool:
    path = lock_path(run_id, directory)
    if not path.exists():
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False
