"""Cleanup spares runs that are still going, whoever started them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli.host import cleanup_dead_runs
from bench.core import runlock


def test_cleanup_spares_a_live_run_and_removes_it_once_its_process_died(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("BENCH_RUN_LOCK_DIR", str(tmp_path / "locks"))
    live, dead = tmp_path / "work" / "live-run", tmp_path / "work" / "dead-run"
    for work in (live, dead):
        (work / "ns").mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom bench.core import runlock\n"
         "h = runlock.hold('live-run')\nprint('held', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
        env={"BENCH_RUN_LOCK_DIR": str(tmp_path / "locks"), "PATH": "/usr/bin:/bin"})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert runlock.is_live("live-run") and not runlock.is_live("dead-run")
        cleanup_dead_runs()
        assert live.exists() and not dead.exists()
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 5
    while runlock.is_live("live-run") and time.monotonic() < deadline:
        time.sleep(0.05)
    cleanup_dead_runs()
    assert not live.exists()
