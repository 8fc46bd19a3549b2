"""The typical-host lane: bench's own tests run inside a guest that is a typical test host.

The guest is the kvm tier's (booted with bench/tiers/kvm/, Debian's cloud kernel, systemd as
PID 1 with the unified cgroup v2 tree, device-mapper, bcache). Two disks are hot-plugged into it:
the bench image (read-only, at /var/lib/bench/images) and a lane disk holding bench and its
dependencies, installed on the host from wheels built with `pip wheel` (libvirt-python's wheel
is compiled on the host; its runtime library is not in the guest, and nothing inside imports it:
the kvm tier is the one tier the lane does not run). The guest has no registry access. The inner
pytest writes JUnit XML and its run directories to the lane disk, which is read back with
debugfs once the guest is down.

Run it with `tox -e lane` (BENCH_LANE=1; BENCH_LANE_OUT names where the results go).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.core import image as image_mod
from bench.core.errors import CommandTimeout
from bench.core.image import Image
from bench.core.limits import Limits
from bench.core.rundir import new_run_id
from bench.tiers.base import InstanceSpec, TierContext
from bench.tiers.kvm.domxml import disk_xml
from bench.tiers.kvm.tier import KvmInstance, KvmTier

REPO = Path(__file__).resolve().parents[2]
# what runs inside, and the tests the lane must show (each passed, none skipped)
INNER = ["tests/test_tier_ns.py", "tests/test_selftest.py", "tests/test_cgroups.py",
         "tests/test_typical_host.py"]
NAMED = (
    "test_memory_limit_stops_a_process_that_exceeds_it",
    "test_half_a_cpu_halves_sysbench",
    "test_cpuset_and_pids_limits",
    "test_block_io_throttle_on_the_scratch_device",
    "test_container_to_container_through_the_bridge",
    "test_host_network_mode",
    "test_cleanup_after_sigkill_of_bench_run",
    "test_selftest_measures_each_injected_limit",
    "test_ns_limits_on_cgroup_v2_by_their_effect",
    "test_doctor_names_the_v2_controllers_of_benchs_subtree",
    "test_ssd_cache_setups_build_cache_and_leave_nothing",
)
REQUIRE = "host,ns,cgroup-v2,device-mapper,bcache"
INNER_TIMEOUT = float(os.environ.get("BENCH_LANE_TIMEOUT", 1800))
LANE_MEMORY_MB = 3072
PIP = [sys.executable, "-m", "pip"]


def _run(argv: list[str], timeout: float = 900) -> None:
    subprocess.run(argv, check=True, timeout=timeout, stdout=subprocess.DEVNULL)


def lane_disk(work: Path) -> Path:
    """An ext4 disk with /site (bench and its dependencies), the tests and the scenarios."""
    wheels = Path(os.environ.get("BENCH_LANE_WHEELS", "/var/tmp/bench-lane-wheels"))
    wheels.mkdir(parents=True, exist_ok=True)
    _run([*PIP, "wheel", "-q", "--wheel-dir", str(wheels), f"{REPO}[test]"], timeout=1200)
    staging = work / "lane-staging"
    _run([*PIP, "install", "-q", "--no-index", "--find-links", str(wheels), "--target",
          str(staging / "site"), "--no-compile", "bench[test]"], timeout=600)
    for name in ("tests", "scenarios", "tuning"):
        shutil.copytree(REPO / name, staging / name,
                        ignore=shutil.ignore_patterns("__pycache__", "lane"))
    shutil.copy(REPO / "pyproject.toml", staging / "pyproject.toml")
    (staging / "out").mkdir()
    disk = work / "lane.raw"
    with open(disk, "wb") as fh:
        fh.truncate(3 << 30)
    _run(["mkfs.ext4", "-q", "-F", "-L", "bench-lane", "-d", str(staging), str(disk)])
    shutil.rmtree(staging)
    return disk


def image_disk(img: Image, work: Path) -> Path:
    disk = work / "image.raw"
    with open(disk, "wb") as fh:
        fh.truncate(2 << 30)
    staging = work / "image-staging"
    staging.mkdir()
    # a hard-linked copy of just this image (mkfs.ext4 -d copies a whole directory tree)
    _run(["cp", "-al", str(img.path), str(staging / img.hash)])
    _run(["mkfs.ext4", "-q", "-F", "-L", "bench-images", "-d", str(staging), str(disk)])
    shutil.rmtree(staging)
    return disk


@pytest.fixture(scope="module")
def lane_out() -> Path:
    path = Path(os.environ.get("BENCH_LANE_OUT", "/tmp/bench-lane")) / time.strftime(
        "%Y%m%d-%H%M%S")
    path.mkdir(parents=True)
    return path


@pytest.fixture(scope="module")
def guest(lane_out: Path) -> Iterator[tuple[KvmTier, KvmInstance, Path]]:
    if os.geteuid() != 0:
        pytest.fail("the lane needs root (libvirt, mkfs, debugfs)")
    img = image_mod.find() or image_mod.build(log=lambda *_: None)
    run_id = new_run_id("lane")
    # not under BENCH_WORK_DIR: other runs' cleanup removes what no live run holds there
    work = Path(os.environ.get("BENCH_LANE_WORK", "/var/tmp/bench-lane")) / run_id
    (work / "kvm").mkdir(parents=True)
    lane = lane_disk(work)
    images = image_disk(img, work)
    os.environ["BENCH_KVM_MEMORY_MB"] = str(LANE_MEMORY_MB)
    os.environ.setdefault("BENCH_KVM_BOOT_TIMEOUT", "600")  # TCG on a busy host
    tier = KvmTier()
    availability = tier.available()
    assert availability.ok, f"{availability.reason} Fix: {availability.fix}"
    tier.prepare(TierContext(run_id, img, work / "kvm", lane_out / "raw"))
    try:
        instance = tier.start(InstanceSpec(role="lane", limits=Limits()))
        assert isinstance(instance, KvmInstance) and instance.domain is not None
        import libvirt

        for disk, target, readonly in ((images, "vdc", True), (lane, "vdd", False)):
            instance.qemu.give(disk)  # QEMU may run as a user of its own (libvirt-qemu)
            instance.domain.attachDeviceFlags(disk_xml(disk, target, readonly),
                                              libvirt.VIR_DOMAIN_AFFECT_LIVE)
        script = ("for d in vdc vdd; do for i in $(seq 600); do [ -b /dev/$d ] && break; "
                  "sleep 0.1; done; done; mkdir -p /var/lib/bench/images /lane && "
                  "mount -o ro /dev/vdc /var/lib/bench/images && mount /dev/vdd /lane && "
                  "mkdir -p /scratch/work")
        instance.exec(["sh", "-c", script], timeout=120)
        yield tier, instance, lane
        instance.stop()
    finally:
        tier.finish()
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.timeout(INNER_TIMEOUT + 900)
def test_typical_host_lane(guest: tuple[KvmTier, KvmInstance, Path], lane_out: Path) -> None:
    _tier, instance, lane = guest
    facts = instance.exec(["sh", "-c", "uname -r; cat /sys/fs/cgroup/cgroup.controllers; "
                           "stat -fc %T /sys/fs/cgroup"], timeout=60).stdout
    (lane_out / "guest-facts.txt").write_text(facts)
    assert "cgroup2fs" in facts, facts
    env = {"PYTHONPATH": "/lane/site", "PATH": "/lane/site/bin:/usr/local/sbin:/usr/local/bin:"
           "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
           "BENCH_REQUIRE": REQUIRE, "BENCH_WORK_DIR": "/scratch/work",
           "BENCH_RESULTS_DIR": "/lane/out/results", "BENCH_LOCK_PATH": "/run/bench.lock",
           "BENCH_LANE_GUEST": "1"}
    argv = ["env", *(f"{k}={v}" for k, v in env.items()), "python3", "-m", "pytest",
            "-p", "no:cacheprovider", "-q", "-rA", "--basetemp=/scratch/pytest",
            "--timeout=900", "-o", "junit_logging=all",
            "--junitxml=/lane/out/junit.xml", "--rootdir=/lane", "-c", "/lane/pyproject.toml",
            *(f"/lane/{t}" for t in INNER),
            *[a for k in os.environ.get("BENCH_LANE_K", "").split() for a in ("-k", k)]]
    began = time.monotonic()
    done = instance.agent.start(["sh", "-c", '"$@" > /lane/out/pytest.log 2>&1; sync', "sh",
                                 *argv], capture=False)
    try:
        state = instance.agent.wait(done, argv, began + INNER_TIMEOUT, INNER_TIMEOUT)
    except CommandTimeout:
        state = {"exitcode": "timeout"}
    wall = time.monotonic() - began
    instance.stop()  # the lane disk is read back from the host once the guest is down
    _run(["debugfs", "-R", f"rdump /out {lane_out}", str(lane)], timeout=300)
    (lane_out / "inner-wall-seconds.txt").write_text(f"{wall:.0f}\n")
    log = (lane_out / "out" / "pytest.log").read_text() if (lane_out / "out/pytest.log").exists() \
        else "(no pytest.log)"
    junit = lane_out / "out" / "junit.xml"
    assert junit.exists(), log[-5000:]
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    cases = {c.get("name", ""): c for c in suite.iter("testcase")}
    bad = {n: [x.tag for x in c] for n, c in cases.items()
           if any(x.tag in ("failure", "error", "skipped") for x in c)}
    assert not bad, f"{bad}\n{log[-8000:]}"
    assert state.get("exitcode") == 0, log[-8000:]
    missing = [n for n in NAMED if n not in cases]
    assert not missing, f"the lane ran without {missing}"
