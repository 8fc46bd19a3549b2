"""A run killed by a limit says so: the OOM killer (memory_mb below what the workload needs), a
refused fork (pids), a timeout; with the limit, what the workload reached, and the fix. Real
runs on the ns and docker tiers; the counters come from the instance's own control groups."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.core.image import Image
from bench.tiers.registry import TIERS
from tests.parts import need

pytestmark = pytest.mark.integration
TIERS_HERE = ["ns", "docker"]

SCENARIO = """
name: kills
description: limits below what the workloads need
tiers: [{tiers}]
repetitions: 1
warmup: 0
limits: {{memory_mb: 64, pids: 16}}
workloads:
  - workload: memory
    params: {{size_mb: 256, seconds: 0.5}}
  - workload: cpu.sysbench
    params: {{threads: 64, seconds: 1}}
  - workload: disk.fio
    params: {{size_mb: 16, runtime_s: 6, rw: read}}
    timeout_s: 2
"""


@pytest.mark.part("ns", "docker")
def test_runs_killed_by_a_limit_say_why(tmp_path: Path, bench_image: Image,
                                       results_dir: Path) -> None:
    for tier in TIERS_HERE:  # both tiers, each required or a reason to skip
        availability = TIERS[tier]().available()
        need(tier, availability.ok, availability.reason)
    scenario = tmp_path / "kills.yaml"
    scenario.write_text(SCENARIO.format(tiers=", ".join(TIERS_HERE)))
    env = {**os.environ, "BENCH_LOCK_PATH": str(tmp_path / "bench.lock")}
    done = subprocess.run([sys.executable, "-m", "bench.cli", "run", str(scenario)], env=env,
                          capture_output=True, text=True, timeout=600)
    run = next(results_dir.iterdir())
    records = [json.loads(line) for line in (run / "runs.jsonl").read_text().splitlines()]
    assert len(records) == 3 * len(TIERS_HERE), done.stdout[-2000:]
    errors = [r["error"] for r in records]
    oom = [e for e in errors if "killed by the OOM killer" in e]
    assert len(oom) == len(TIERS_HERE), errors  # exit 137 (docker) and -9 (ns) alike
    for error in oom:
        assert "memory limit is 64 MiB (limits.memory_mb)" in error
        assert "bench-memprobe bandwidth 256" in error and "raise limits.memory_mb" in error
    forks = [e for e in errors if "pids limit of 16 (limits.pids)" in e]
    assert len(forks) == len(TIERS_HERE), errors
    assert all("refused" in e and "raise limits.pids" in e for e in forks)
    slow = [r for r in records if r["status"] == "timeout"]
    assert len(slow) == len(TIERS_HERE), errors
    assert all("timeout of 2 s" in r["error"] and "timeout_s" in r["error"] for r in slow)
