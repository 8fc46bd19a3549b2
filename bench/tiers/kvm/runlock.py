"""Per-run locks of the kvm tier: its guests outlive a crash of the run's process, so its
cleanup asks these before destroying any (`bench cleanup` in another shell spares a run whose
process still holds its lock). They live in /run/lock, which anyone may write: the directory
and files are made and opened through bench.core.safefs (no planted symlink or file is used)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from bench.core import safefs
from bench.core.errors import BenchError
from bench.core.settings import settings


def lock_path(run_id: str) -> Path:
    return settings().kvm_lock_dir / f"{run_id}.lock"


def hold_run_lock(run_id: str) -> IO[str]:
    """Lock the run for as long as this process lives (the kernel drops it if we die)."""
    path = lock_path(run_id)
    safefs.secure_dir(path.parent)
    fd = safefs.lock(path)
    if fd is None:
        raise BenchError(f"Another bench process is running run {run_id} (it holds {path}).",
                         "wait for it to finish, or stop it first.")
    return os.fdopen(fd, "w")  # held until finish()


def run_is_live(run_id: str) -> bool:
    return safefs.is_locked(lock_path(run_id))
