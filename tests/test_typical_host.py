"""A typical test host for real: cgroup v2 limits by their effect, and the SSD-cache setups built,
measured and torn down. The lane (tests/lane/) runs these inside the kvm tier's guest, which has
the unified cgroup v2 tree, device-mapper and bcache; elsewhere they skip (or fail under
BENCH_REQUIRE=cgroup-v2,device-mapper,bcache).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.core.errors import CommandError
from bench.core.image import Image
from bench.core.limits import Limits
from bench.kernel import cgroups
from bench.tiers.base import Instance, InstanceSpec, TierContext
from bench.tiers.ns.tier import NsTier
from bench.tune import cache
from tests.conftest import need
from tests.test_tier_ns import sysbench_events

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20
CACHES = ["none-slow", "none-fast", "bcache-writeback", "lvmcache-writeback",
          "dm-writecache-ssd"]


def _out_dir() -> Path:
    path = Path(os.environ.get("BENCH_RESULTS_DIR", "/tmp")) / "typical-host"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _v2() -> bool:
    return os.geteuid() == 0 and cgroups.detect().version == 2


@pytest.fixture(scope="module")
def ns_tier(bench_image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NsTier]:
    need("cgroup-v2", _v2(), "this host mounts cgroup v1 (the lane's guest has v2)")
    work = tmp_path_factory.mktemp("v2-work")
    tier = NsTier()
    tier.prepare(TierContext(f"test-v2-{os.getpid()}", bench_image, work / "ns", work))
    try:
        yield tier
    finally:
        tier.finish()


def _fio_bw(box: Instance, rw: str) -> float:
    out = box.exec(["fio", "--name=t", "--filename=/scratch/f", f"--rw={rw}", "--bs=1m",
                    "--direct=1", "--size=48m", "--runtime=3", "--time_based",
                    "--ioengine=libaio", "--iodepth=4", "--output-format=json"], 120).stdout
    side = "read" if rw == "read" else "write"
    return float(json.loads(out[out.find("{"):])["jobs"][0][side]["bw_bytes"])


def test_ns_limits_on_cgroup_v2_by_their_effect(ns_tier: NsTier) -> None:
    """Every limit on cgroup v2, set vs measured by its effect; the table goes to the results."""
    rows: list[dict[str, Any]] = []
    started: list[Instance] = []
    try:
        half = ns_tier.start(InstanceSpec("v2-cpu", Limits(cpus=0.5)))
        free = ns_tier.start(InstanceSpec("v2-free", Limits()))
        started += [half, free]
        shares, ratios = [], []
        for round_no in range(6):
            pair = (half, free) if round_no % 2 else (free, half)
            got = {id(i): sysbench_events(i) for i in pair}
            shares.append(got[id(half)][1])
            # CPU time per wall second, next to what an unlimited twin got in the same round
            # (under TCG on a busy host a vCPU does not always get a whole CPU)
            ratios.append(got[id(half)][1] / min(1.0, got[id(free)][1]))
        rows.append({"limit": "cpus", "set": 0.5, "measured": statistics.median(ratios),
                     "raw_share": statistics.median(shares),
                     "how": "CPU seconds per wall second of sysbench, over an unlimited twin's "
                            "(interleaved pairs)"})

        pinned = ns_tier.start(InstanceSpec("v2-pin", Limits(cpuset="1", pids=32)))
        started.append(pinned)
        cpus = pinned.exec(["python3", "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                           timeout=30).stdout.strip()
        rows.append({"limit": "cpuset", "set": "1", "measured": cpus,
                     "how": "sched_getaffinity inside"})
        forked = pinned.exec(["python3", "-c", FORK_COUNT], timeout=60).stdout.split()
        rows.append({"limit": "pids", "set": 32, "measured": int(forked[0]),
                     "how": "processes alive when fork was refused (+ the shell and init)"})

        small = ns_tier.start(InstanceSpec("v2-mem", Limits(memory_mb=64)))
        started.append(small)
        survived = 0
        for mb in (16, 32, 48, 56, 72, 96):
            try:
                small.exec(["python3", "-c", f"b = b'x' * ({mb} << 20)"], timeout=60)
                survived = mb
            except CommandError as exc:
                assert exc.returncode in (137, -9), exc
                rows.append({"limit": "memory_mb", "set": 64,
                             "measured": f"{survived} MiB allocated, {mb} MiB OOM-killed",
                             "how": "largest allocation that survives"})
                break
        else:
            pytest.fail("a 96 MiB allocation survived a 64 MiB memory limit")

        rate = 20 * MiB
        for key, rw in (("io_read_bps", "read"), ("io_write_bps", "write")):
            box = ns_tier.start(InstanceSpec(f"v2-{rw}", Limits(**{key: rate}), scratch="bind"))
            started.append(box)
            if rw == "read":
                _fio_bw(box, "write")  # lay the file out (not throttled for reads)
            rows.append({"limit": key, "set": rate, "measured": _fio_bw(box, rw),
                         "how": "fio direct=1 1 MiB blocks on the scratch device"})
    finally:
        for instance in started:
            instance.stop()
    (_out_dir() / "ns-limits-v2.json").write_text(json.dumps(rows, indent=1))
    got = {r["limit"]: r["measured"] for r in rows}
    assert got["cpus"] == pytest.approx(0.5, rel=0.10), rows
    assert got["cpuset"] == "[1]", rows
    assert 20 <= got["pids"] <= 32, rows
    assert got["io_read_bps"] == pytest.approx(rate, rel=0.05), rows
    assert got["io_write_bps"] == pytest.approx(rate, rel=0.05), rows


def test_doctor_names_the_v2_controllers_of_benchs_subtree(ns_tier: NsTier) -> None:
    from bench.cli.doctor_cgroups import status

    box = ns_tier.start(InstanceSpec("v2-doctor", Limits(pids=64)))  # bench's subtree exists
    try:
        ok, found, fix = status()
    finally:
        box.stop()
    assert ok, fix
    assert "cgroup v2 at /sys/fs/cgroup" in found
    assert "enabled in /sys/fs/cgroup/bench-ns (bench's subtree): cpuset cpu io memory pids" \
        in found, found


FORK_COUNT = """
import subprocess
ps = []
try:
    for _ in range(64):
        ps.append(subprocess.Popen(['sleep', '30']))
except OSError:
    pass
print(len(ps))
for p in ps:
    p.kill()
"""


def _leftovers() -> list[str]:
    found = []
    dm = subprocess.run(["dmsetup", "ls"], capture_output=True, text=True).stdout
    found += [f"dm {line}" for line in dm.splitlines() if line.startswith("bench-")]
    found += [f"bcache {p.name}" for p in Path("/sys/block").glob("bcache*")]
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    found += [f"loop {line}" for line in loops.splitlines() if "bench-" in line]
    return found


def _scenario(tmp_path: Path, state: str) -> Path:
    data = yaml.safe_load((REPO / "scenarios" / "ssd-cache.yaml").read_text())
    data.update(repetitions=2, warmup=1, name=f"ssd-cache-{state}")
    data["workloads"] = [{"workload": "disk.fio", "params": {
        "size_mb": 32, "runtime_s": 1.0, "iodepth": 1, "rw": "randread", "bs": "4k"}}]
    data["sweep"] = {"cache": CACHES, "cache_state": state}
    path = tmp_path / f"ssd-cache-{state}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _cache_run(tmp_path: Path, state: str) -> list[dict[str, Any]]:
    results = Path(os.environ.get("BENCH_RESULTS_DIR", tmp_path / "results"))
    before = set(results.glob("*")) if results.exists() else set()
    done = subprocess.run([sys.executable, "-m", "bench.cli", "run",
                           str(_scenario(tmp_path, state))], cwd=REPO, capture_output=True,
                          text=True, timeout=1200, env={**os.environ,
                                                        "BENCH_RESULTS_DIR": str(results)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run,) = set(results.glob("*ssd-cache*")) - before
    return [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]


def test_ssd_cache_setups_build_cache_and_leave_nothing(tmp_path: Path) -> None:
    for part in ("device-mapper", "bcache"):
        why = cache.Probe().feature(part)
        need(part, not why, why)
    table: dict[str, dict[str, Any]] = {}
    for state in ("cold", "warm"):
        for sample in _cache_run(tmp_path, state):
            if sample["metric"] != "iops":
                continue
            row = table.setdefault(sample["cell"]["cache"], {})
            row.setdefault(f"iops_{state}", []).append(sample["value"])
            meta = sample["metadata"].get("cache", {})
            row[f"counters_{state}"] = meta.get("counters", {})
            row[f"hits_{state}"] = row.get(f"hits_{state}", 0) + _hits(meta.get("counters", {}))
            row[f"dirty_after_drain_{state}"] = meta.get("dirty_left_after_drain")
        assert not _leftovers(), _leftovers()
    summary = {name: {"iops_cold": statistics.median(row["iops_cold"]),
                      "iops_warm": statistics.median(row["iops_warm"]),
                      **{k: v for k, v in row.items() if not k.startswith("iops")}}
               for name, row in table.items()}
    (_out_dir() / "ssd-cache.json").write_text(json.dumps(summary, indent=1))
    assert set(summary) == set(CACHES), summary
    slow, fast = summary["none-slow"], summary["none-fast"]
    assert fast["iops_cold"] >= 5 * slow["iops_cold"], summary
    for name in CACHES[2:]:  # the caches: warm from the cache, cold from the slow device
        row = summary[name]
        assert row["iops_warm"] >= 3 * row["iops_cold"], (name, summary)
        assert row["hits_warm"] > 0, (name, summary)
        assert row["dirty_after_drain_cold"] == 0 and row["dirty_after_drain_warm"] == 0


def _hits(counters: dict[str, int]) -> int:
    """Read hits of a run. dm-cache and dm-writecache count them as they happen; bcache folds
    its counters into stats_total only every 300/22 s (13.6 s, longer than a run), so for it the
    reads its cache (fast) device served during the run count."""
    if "cache.cache_hits" in counters:
        return counters.get("fast.read_ios", 0)
    return counters.get("cache.read_hits", 0)
