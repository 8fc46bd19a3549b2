"""The same limits mean the same on cgroup v1 and v2.

This host runs cgroup v1, so the ns tier's integration tests exercise v1 for real; most test
hosts run pure v2, where the same tests run against the real v2 tree. Here, the files each
version's steps write are checked against a directory laid out like each hierarchy.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.core.limits import Limits
from bench.kernel import cgroups
from bench.kernel.cgroups import Cgroup, Hierarchies

MiB = 1 << 20
LIMITS = Limits(cpus=0.5, cpuset="0", memory_mb=64, pids=32, io_read_bps=20 * MiB,
                io_write_bps=10 * MiB)


def v2_tree(tmp_path: Path) -> tuple[Hierarchies, Path]:
    root = tmp_path / "unified"
    parent = root / "bench-ns" / "run-1"
    parent.mkdir(parents=True)
    (parent / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids\n")
    (parent / "cgroup.subtree_control").write_text("\n")
    (parent / "memory.swap.max").write_text("max\n")
    return Hierarchies(2, {c: root for c in cgroups.V2_CONTROLLERS}), parent


def v1_tree(tmp_path: Path) -> tuple[Hierarchies, dict[str, Path]]:
    roots = {c: tmp_path / c for c in ("cpu", "cpuacct", "cpuset", "memory", "blkio", "pids")}
    for controller, root in roots.items():
        parent = root / "bench-ns" / "run-1"
        parent.mkdir(parents=True)
        if controller == "cpuset":
            (parent / "cpuset.cpus").write_text("0-1\n")
            (parent / "cpuset.mems").write_text("0\n")
        if controller == "memory":
            (parent / "memory.memsw.limit_in_bytes").write_text("9223372036854771712\n")
    return Hierarchies(1, roots), roots


def written(steps: list[tuple[Path, str | None]], base: Path) -> dict[str, str | None]:
    return {str(path.relative_to(base)): value for path, value in steps}


def test_v2_limits(tmp_path: Path) -> None:
    h, parent = v2_tree(tmp_path)
    group = Cgroup(h, "bench-ns/run-1/main-1", cgroups.controllers_for(LIMITS))
    steps = written(group.setup(LIMITS, io_device="254:0"), parent)
    assert steps == {
        "cgroup.subtree_control": "+cpu +cpuset +memory +pids +io",
        "main-1": None,
        "main-1/cpu.max": "50000 100000",
        "main-1/cpuset.cpus": "0",
        "main-1/memory.max": str(64 * MiB),
        "main-1/memory.swap.max": "0",
        "main-1/pids.max": "32",
        "main-1/io.max": f"254:0 rbps={20 * MiB} wbps={10 * MiB}",
    }
    assert [str(p.relative_to(parent)) for p in group.join_files] == ["main-1/cgroup.procs"]
    group.make(LIMITS, io_device="254:0")  # a v2 group's steps, carried out
    assert (parent / "main-1" / "cpu.max").read_text() == "50000 100000"


def test_v1_limits_and_only_the_hierarchies_they_need(tmp_path: Path) -> None:
    h, _ = v1_tree(tmp_path)
    group = Cgroup(h, "bench-ns/run-1/main-1", cgroups.controllers_for(LIMITS))
    steps = {(path.relative_to(tmp_path).parts[0], path.name): value
             for path, value in group.setup(LIMITS, io_device="254:0")}
    assert steps[("cpu", "cpu.cfs_quota_us")] == "50000"
    assert steps[("cpu", "cpu.cfs_period_us")] == "100000"
    assert steps[("cpuset", "cpuset.cpus")] == "0"
    assert steps[("cpuset", "cpuset.mems")] == "0"  # a new v1 cpuset copies its parent's mems
    assert steps[("memory", "memory.limit_in_bytes")] == str(64 * MiB)
    assert steps[("memory", "memory.memsw.limit_in_bytes")] == str(64 * MiB)  # no swap escape
    assert steps[("pids", "pids.max")] == "32"
    assert steps[("blkio", "blkio.throttle.read_bps_device")] == f"254:0 {20 * MiB}"
    assert steps[("blkio", "blkio.throttle.write_bps_device")] == f"254:0 {10 * MiB}"
    assert {p.parent.parent.parent.parent.name for p in group.join_files} == {
        "cpu", "cpuset", "memory", "pids", "blkio"}
    assert all(p.name == "tasks" for p in group.join_files)


def test_v1_without_limits_joins_memory_only_for_accounting(tmp_path: Path) -> None:
    h, _ = v1_tree(tmp_path)
    group = Cgroup(h, "bench-ns/run-1/idle-1", cgroups.controllers_for(Limits()))
    assert [p.parent.parent.parent.parent.name for p in group.join_files] == ["memory"]
    assert all(value is None for _, value in group.setup(Limits()))


def test_io_limit_without_a_block_device_is_refused(tmp_path: Path) -> None:
    h, _ = v2_tree(tmp_path)
    group = Cgroup(h, "bench-ns/run-1/io-1")
    with pytest.raises(cgroups.CgroupError, match="block device"):
        group.setup(Limits(io_read_bps=MiB))
    with pytest.raises(cgroups.CgroupError, match="not on a block device"):
        cgroups.block_device("/proc/self")


def test_doctor_names_v2_controllers_and_the_missing_delegation(tmp_path: Path) -> None:
    from bench.cli.doctor_cgroups import v2_status

    root = tmp_path / "cgroup"
    (root / "bench-ns").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids\n")
    (root / "cgroup.subtree_control").write_text("cpu memory\n")
    (root / "bench-ns" / "cgroup.subtree_control").write_text("cpu io memory pids\n")
    ok, found, fix = v2_status(root, "0::/init.scope\n", writable=True)
    assert ok and not fix
    assert f"enabled in {root / 'bench-ns'} (bench's subtree): cpu io memory pids" in found
    ok, found, fix = v2_status(root, "0::/system.slice/nightly-bench.service\n", writable=False)
    assert not ok and "bench runs in /system.slice/nightly-bench.service" in found
    assert "the systemd unit nightly-bench.service without delegation" in fix
    assert "systemd-run --scope -p Delegate=yes" in fix
    (root / "cgroup.controllers").write_text("cpu pids\n")
    ok, _, fix = v2_status(root, "0::/\n", writable=True)
    assert not ok and "cpuset, memory, io" in fix
