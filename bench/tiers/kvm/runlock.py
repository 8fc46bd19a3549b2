"""Per-run locks of the kvm tier (bench/core/runlock.py in the kvm tier's own directory): its
guests outlive a crash of the run's process, so its cleanup asks these before destroying any."""

from __future__ import annotations

from pathlib import Path
from typing import IO

from bench.core import runlock
from bench.core.settings import settings


def lock_path(run_id: str) -> Path:
    return runlock.lock_path(run_id, settings().kvm_lock_dir)


def hold_run_lock(run_id: str) -> IO[str]:
    return runlock.hold(run_id, settings().kvm_lock_dir)


def run_is_live(run_id: str) -> bool:
    return runlock.is_live(run_id, settings().kvm_lock_dir)
