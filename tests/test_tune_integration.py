"""Tuning for real (root): a sweep of vm.dirty_background_ratio and read_ahead_kb with buffered
fio through `bench run` on the host and ns tiers leaves every catalogued value as it found it;
a SIGKILLed sweep is restored by the next start; the kernel's counterpart rule; the SSD-cache
scenario compares an emulated slow and fast device and removes them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench.core.image import Image
from bench.tiers.registry import TIERS
from bench.tune import catalog as catalog_mod
from bench.tune import journal as journal_mod
from bench.tune.sysfs import HostFs, block_device_of
from bench.tune.tuner import Tuner

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
CATALOG = catalog_mod.load()
SWEEP_TIERS = [t for t in ("host", "ns") if t in TIERS]


def _work_root() -> Path:
    path = Path(os.environ.get("BENCH_WORK_DIR", "/var/tmp/bench"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _snapshot() -> dict[str, str]:
    return Tuner(CATALOG, HostFs("/")).snapshot([block_device_of(_work_root())])


def _bench(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout)


def _scenario(tmp_path: Path, shipped: str, **changes: object) -> Path:
    data = yaml.safe_load((REPO / "scenarios" / f"{shipped}.yaml").read_text())
    data.update(changes)
    path = tmp_path / f"{shipped}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run_dir(results: Path) -> Path:
    (found,) = [p for p in results.iterdir() if p.is_dir()]
    return found


def test_dirty_sweep_restores_every_catalogued_value(
        bench_image: Image, results_dir: Path, tmp_path: Path) -> None:
    before = _snapshot()
    # 0.25 s runs: the test checks what the sweep sets and restores, not the rates (time)
    fio = {"size_mb": 64, "runtime_s": 0.25, "direct": False, "iodepth": 1, "ioengine": "psync"}
    path = _scenario(tmp_path, "dirty-sweep", tiers=SWEEP_TIERS, repetitions=2, warmup=0,
                     workloads=[{"workload": "disk.fio", "params": fio,
                                 "matrix": {"rw": ["read", "write"]}}])
    done = _bench("run", str(path), "--wait")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _snapshot() == before
    run = _run_dir(results_dir)
    manifest = json.loads((run / "manifest.json").read_text())
    tuning = manifest["tuning"]
    device = tuning["device"]
    assert tuning["differs_after"] == {} and tuning["restore_problems"] == []
    assert tuning["as_found"] == before
    assert tuning["writes"]["vm.dirty_background_ratio"] >= 2
    assert tuning["writes"][f"block.read_ahead_kb[{device}]"] >= 2
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    swept = {(s["cell"]["tier"], json.dumps(s["cell"]["tunables"], sort_keys=True))
             for s in samples}
    assert len(swept) == len(SWEEP_TIERS) * 5  # as found + 2 x 2 values
    shared = [s["metadata"]["tuning"]["vm.dirty_background_ratio"]["set"] for s in samples
              if "vm.dirty_background_ratio" in s["cell"]["tunables"]]
    assert shared and all(f"shared by every tier of this run that runs on the host's kernel "
                          f"({', '.join(SWEEP_TIERS)})" in x for x in shared)
    rec = _bench("tune", "recommend", str(run))
    assert rec.returncode == 0, rec.stdout + rec.stderr
    assert (run / "tuning" / "rollback.sh").exists()
    assert "include=throughput-performance" in next(
        (run / "tuning").glob("bench-*/tuned.conf")).read_text()


def test_a_killed_sweep_is_restored_at_the_next_start(
        bench_image: Image, results_dir: Path, tmp_path: Path) -> None:
    before = _snapshot()
    original = int(before["vm.dirty_background_ratio"])
    target = 3 if original != 3 else 4
    fio = {"size_mb": 64, "runtime_s": 20, "direct": False, "rw": "write"}
    path = _scenario(tmp_path, "dirty-sweep", name="killed-sweep", tiers=["host"],
                     repetitions=1, warmup=0,
                     workloads=[{"workload": "disk.fio", "params": fio}],
                     sweep={"tunables": {"vm.dirty_background_ratio": [target]},
                            "baseline": False})
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", str(path), "--wait"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        # (--wait queues behind any other bench run on this host; CI runs alone)
        deadline = time.monotonic() + 600
        while Path("/proc/sys/vm/dirty_background_ratio").read_text().strip() != str(target):
            assert proc.poll() is None and time.monotonic() < deadline, "the sweep never set it"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert Path("/proc/sys/vm/dirty_background_ratio").read_text().strip() == str(target)
    run_id = _run_dir(results_dir).name
    assert run_id in journal_mod.sessions()
    done = _bench("cleanup")  # what the next `bench run` does first, too
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{run_id}: vm.dirty_background_ratio: {target} -> {original}" in done.stdout
    assert _snapshot() == before
    assert run_id not in journal_mod.sessions()


def test_ctrl_c_during_a_sweep_restores_the_values(
        bench_image: Image, results_dir: Path, tmp_path: Path) -> None:
    before = _snapshot()
    target = 3 if before["vm.dirty_background_ratio"] != "3" else 4
    path = _scenario(tmp_path, "dirty-sweep", tiers=["host"], repetitions=1, warmup=0,
                     workloads=[{"workload": "disk.fio", "params": {
                         "size_mb": 64, "runtime_s": 20, "direct": False, "rw": "write"}}],
                     sweep={"tunables": {"vm.dirty_background_ratio": [target]},
                            "baseline": False})
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", str(path), "--wait"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while Path("/proc/sys/vm/dirty_background_ratio").read_text().strip() != str(target):
            assert proc.poll() is None and time.monotonic() < deadline, "the sweep never set it"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert _snapshot() == before  # restored by the run itself, no cleanup needed
    manifest = json.loads((_run_dir(results_dir) / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert manifest["tuning"]["restored"] == [f"vm.dirty_background_ratio: {target} -> "
                                              f"{before['vm.dirty_background_ratio']} (set)"]


def test_the_kernel_zeroes_the_counterpart_and_restore_brings_the_ratio_back(
        tmp_path: Path) -> None:
    before = _snapshot()
    journal = journal_mod.Journal("it-counterpart", tmp_path)
    tuner = Tuner(CATALOG, HostFs("/"), journal)
    try:
        tuner.apply("vm.dirty_background_bytes", 64 << 20)
        assert Path("/proc/sys/vm/dirty_background_ratio").read_text().strip() == "0"
    finally:
        tuner.restore_all()
        journal.close()
    assert _snapshot() == before


def test_ssd_cache_compares_slow_and_fast_devices_and_removes_them(
        bench_image: Image, results_dir: Path, tmp_path: Path) -> None:
    zram_before = {p.name for p in Path("/sys/block").glob("zram*")}
    path = _scenario(tmp_path, "ssd-cache", repetitions=2, warmup=1,
                     workloads=[{"workload": "disk.fio", "params": {
                         "size_mb": 64, "runtime_s": 0.5, "iodepth": 16, "rw": "randread"}}])
    done = _bench("run", str(path), "--wait")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = _run_dir(results_dir)
    tuning = json.loads((run / "manifest.json").read_text())["tuning"]
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    measured = {s["cell"]["cache"] for s in samples}
    for setup in yaml.safe_load(path.read_text())["sweep"]["cache"]:
        reason = [n for n in tuning["left_out"] if f"cache setup {setup} unavailable" in n]
        assert (setup in measured) != bool(reason), setup  # measured, or said why not
    if not Path("/sys/module/bcache").exists():
        assert any("no bcache" in n for n in tuning["left_out"])
    if not Path("/dev/mapper/control").exists():
        assert any("no device-mapper" in n for n in tuning["left_out"])

    def iops(setup: str) -> float:
        values = sorted(s["value"] for s in samples
                        if s["cell"]["cache"] == setup and s["metric"] == "iops")
        return values[len(values) // 2]

    assert iops("none-fast") > 10 * iops("none-slow")
    # fio ran for the 0.5 s asked (a fractional runtime once read the whole file: 41 s a run)
    assert all(300 <= s["metadata"]["runtime_ms"] <= 1000 for s in samples
               if s["metric"] == "iops"), [s["metadata"]["runtime_ms"] for s in samples]
    slow = next(s for s in samples if s["cell"]["cache"] == "none-slow")
    assert slow["metadata"]["cache"]["counters"]["top.read_ios"] > 0
    # everything the run made is gone
    loops = json.loads(subprocess.run(["losetup", "-J", "-l"], capture_output=True,
                                      text=True).stdout or '{"loopdevices": []}')
    assert not [d for d in loops["loopdevices"] if run.name in (d.get("back-file") or "")]
    assert {p.name for p in Path("/sys/block").glob("zram*")} == zram_before
    assert not list(journal_mod.state_dir().glob(f"*{run.name}*"))
    assert run.name not in Path("/proc/self/mountinfo").read_text()
    assert tuning["differs_after"] == {}


KILLED_LAB = """
import sys
from pathlib import Path
from bench.tune import journal
from bench.tune.cache import CacheLab
j = journal.Journal(sys.argv[1], Path(sys.argv[2]))  # the run's session lock, as in a run
lab = CacheLab(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[2]))
for name in ("none-slow", "none-fast"):
    lab.build(name)
print("built", flush=True)
sys.stdin.read()
"""


def test_cache_devices_of_a_killed_run_are_removed_by_cleanup(tmp_path: Path) -> None:
    from bench.tune import cache

    run_id = f"it-lab-{os.getpid()}"
    zram_before = {p.name for p in Path("/sys/block").glob("zram*")}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_LAB, run_id, str(tmp_path)],
                            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "built"
    proc.kill()
    proc.wait()
    loops = subprocess.run(["losetup", "-j", str(tmp_path / f"tune-cache-{run_id}" /
                                                 f"bench-{run_id}-none-slow-slow.img")],
                           capture_output=True, text=True).stdout
    assert loops.strip(), "the slow loop device should be left behind by the kill"
    assert run_id in Path("/proc/self/mountinfo").read_text()
    removed = cache.cleanup(run_id, tmp_path)
    assert any(line.startswith(f"{run_id}: loop /dev/loop") for line in removed), removed
    assert any("blkio throttle" in line for line in removed), removed
    assert run_id not in Path("/proc/self/mountinfo").read_text()
    assert {p.name for p in Path("/sys/block").glob("zram*")} == zram_before
    assert not (tmp_path / f"cache-{run_id}.json").exists()
    assert not (tmp_path / f"tune-cache-{run_id}").exists()
