"""Per-run locks of the kvm tier: its guests outlive a crash of the run's process, so its
cleanup asks these before destroying any (`bench cleanup` in another shell spares a run whose
process still holds its lock)."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO

from bench.core.errors import BenchError
from bench.core.settings import settings


def lock_path(run_id: str) -> Path:
    return settings().kvm_lock_dir / f"{run_id}.lock"


def hold_run_lock(run_id: str) -> IO[str]:
    """Lock the run for as long as this process lives (the kernel drops it if we die)."""
    path = lock_path(run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "w")  # noqa: SIM115 (held until finish())
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise BenchError(f"Another bench process is running run {run_id} (it holds {path}).",
                         "wait for it to finish, or stop it first.") from None
    return handle


def run_is_live(run_id: str) -> bool:
    path = lock_path(run_id)
    if not path.exists():
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False
