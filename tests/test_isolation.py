"""The isolation family: checks that fail if isolation were broken, on real tiers.

Tolerances are the issue's: the offender with `pids: 100` and a bound of 2,000 sees fork fail
with EAGAIN and never holds more than 100 processes while its sibling's forks all succeed; the
host tier's safety cgroup holds a storm to its guard.
"""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bench.analysis import isolation as isolation_tables
from bench.core import procs
from bench.core.errors import CommandTimeout
from bench.core.image import Image
from bench.core.limits import Limits
from bench.core.rundir import RunDir
from bench.core.samples import Cell, Sample
from bench.kernel import cgroups, linuxns, seccomp
from bench.tiers.base import InstanceSpec, Tier, TierContext, guarded, tighter
from bench.tiers.host import GUARD_ROOT, HostInstance
from bench.tiers.registry import get as get_tier
from bench.workloads.base import RunContext
from bench.workloads.disk_fio import FioParams, fio_argv
from bench.workloads.isolation import antagonists, common
from bench.workloads.isolation.accounting import Accounting
from bench.workloads.isolation.containment import Containment, ContainmentParams
from bench.workloads.isolation.interference import Interference
from bench.workloads.isolation.visibility import Visibility, audit
from tests.conftest import need

INSIDE = Path(common.__file__).parent / "inside"


# -- unit ----------------------------------------------------------------------------------------

def _view(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "boot_id": "b1", "memtotal_kib": 1 << 24, "cpus_online": 2, "cpus_allowed": 2,
        "cpu_quota": None, "uptime_s": 100.0, "loadavg_1": 1.0, "processes": 200,
        "hostname": "h", "pid1": "systemd", "dev_nodes": 100, "proc_modules_readable": True,
        "proc_modules_lines": 50, "modules_disabled": "0", "cap_sys_module": True,
        "cap_sys_admin": True, "euid": 0, "cap_eff": "1ff", "cap_bnd": "1ff", "cap_bnd_count": 41,
        "sys_readonly": False, "proc_sys_readonly": False, "seccomp": 0, "no_new_privs": 0,
        "lsm": "none", "uid_map": "0 0 4294967295", "klog_readable": True, "pid_max": 32768,
        "namespaces": {"user": "user:[1]", "time": "time:[2]"}}
    return base | changes


def test_audit_of_the_host_itself_shows_everything() -> None:
    items = {i.metric: i.value for i in audit(_view(), _view(), None)}
    assert items["vis.shared_kernel"] == 1
    for exposed in ("vis.meminfo_is_host", "vis.uptime_is_host", "vis.host_processes_visible",
                    "vis.host_module_load_possible", "vis.host_proc_sys_writable",
                    "vis.host_kernel_log_readable", "vis.pid_max_shared"):
        assert items[exposed] == 1, exposed
    assert items["vis.own_user_ns"] == 0 and items["vis.seccomp_filter"] == 0


def test_audit_of_a_container_and_of_a_vm() -> None:
    container = _view(processes=3, hostname="c", pid1="init", cap_sys_module=False,
                      proc_sys_readonly=True, seccomp=2, klog_readable=False,
                      memtotal_kib=1 << 24, keyctl_errno=errno.EPERM)
    items = {i.metric: i for i in audit(container, _view(), Limits(memory_mb=512))}
    assert items["vis.meminfo_is_host"].value == 1  # /proc/meminfo ignores the memory limit
    assert "limit 512 MiB" in items["vis.meminfo_is_host"].shows
    assert items["vis.host_processes_visible"].value == 0
    assert items["vis.host_module_load_possible"].value == 0
    assert items["vis.host_proc_sys_writable"].value == 0
    assert items["vis.seccomp_filter"].value == 1
    assert items["vis.keyctl_allowed"].value == 0 and "EPERM" in items["vis.keyctl_allowed"].shows
    vm = _view(boot_id="guest", memtotal_kib=1 << 20, uptime_s=20.0)
    items = {i.metric: i for i in audit(vm, _view(), Limits(memory_mb=1024))}
    assert items["vis.shared_kernel"].value == 0
    for kernel_wide in ("vis.host_module_load_possible", "vis.host_proc_sys_writable",
                        "vis.host_kernel_log_readable", "vis.pid_max_shared",
                        "vis.meminfo_is_host", "vis.uptime_is_host"):
        assert items[kernel_wide].value == 0, kernel_wide


def test_visibility_probe_runs_on_this_host() -> None:
    seen = common.on_host("visibility", [], 30)
    assert seen["boot_id"] and seen["pid_max"] > 0 and seen["processes"] > 0


def test_docker_profile_rules_follow_the_kept_capabilities() -> None:
    """As the engine reads its profile: without CAP_SYS_ADMIN clone is allowed only without
    namespace flags and clone3 fails with ENOSYS (so glibc falls back to clone); keyctl and
    unshare are never allowed; an arch- or capability-bound rule counts only where it fits."""
    data = seccomp.profile()
    docker = seccomp.rules(data, linuxns.DOCKER_DEFAULT_CAPS, "amd64", (6, 1))
    by_name: dict[str, list[seccomp.Rule]] = {}
    for rule in docker:
        by_name.setdefault(rule.name, []).append(rule)
    (clone,) = by_name["clone"]
    assert clone.args == ((0, seccomp.OPS["SCMP_CMP_MASKED_EQ"], 0x7E020000, 0),)
    assert by_name["clone3"][0].action == seccomp.act_errno(errno.ENOSYS)
    assert "keyctl" not in by_name and "unshare" not in by_name and "mount" not in by_name
    assert "arch_prctl" in by_name and "chroot" in by_name and "set_tls" not in by_name
    admin = seccomp.rules(data, linuxns.DOCKER_DEFAULT_CAPS | {"SYS_ADMIN"}, "amd64", (6, 1))
    assert any(r.name == "mount" for r in admin)
    assert [r.args for r in admin if r.name == "clone"] == [()]
    assert len(seccomp.compile_bpf(data, linuxns.DOCKER_DEFAULT_CAPS)) % 8 == 0


def _verdict(program: bytes, nr: int, arch: int, arg0: int) -> tuple[int, bool]:
    """Run a classic BPF seccomp program (the opcodes libseccomp emits) on one call: (its
    return value, whether it read the first argument)."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    a, pc, read_arg = 0, 0, False
    while True:
        code, jt, jf, k = struct.unpack_from("<HBBI", program, pc * 8)
        pc += 1
        if code == 0x20:  # ld [k]
            a, read_arg = struct.unpack_from("<I", data, k)[0], read_arg or k >= 16
        elif code == 0x54:  # and #k
            a &= k
        elif code in (0x15, 0x25, 0x35, 0x45):  # jeq, jgt, jge, jset #k
            hit = {0x15: a == k, 0x25: a > k, 0x35: a >= k, 0x45: bool(a & k)}[code]
            pc += jt if hit else jf
        elif code == 0x05:  # ja
            pc += k
        elif code == 0x06:  # ret #k
            return k, read_arg
        else:
            raise AssertionError(f"opcode {code:#x} not interpreted")


def test_the_tree_filter_gives_the_list_filter_s_verdict_on_every_call() -> None:
    """The binary-search program the ns tier loads decides every system call (x86-64, i386,
    x32, a foreign architecture; argument values where the filter looks at them) as the
    list libseccomp makes by default does."""
    data = seccomp.profile()
    tree = seccomp.compile_bpf(data, linuxns.DOCKER_DEFAULT_CAPS)
    listed = seccomp.compile_bpf(data, linuxns.DOCKER_DEFAULT_CAPS, tree=False)
    if os.uname().machine != "x86_64":
        pytest.skip("the calls below are x86's")
    assert tree != listed  # libseccomp >= 2.5 (Debian 11 on) builds the tree
    x86_64, i386, aarch64 = 0xC000003E, 0x40000003, 0xC00000B7
    calls = [(x86_64, nr) for nr in range(460)] + [(i386, nr) for nr in range(460)] \
        + [(x86_64, 0x40000000 + nr) for nr in range(560)] + [(aarch64, 0), (aarch64, 220)]
    for arch, nr in calls:
        first, reads = _verdict(listed, nr, arch, 0)
        assert _verdict(tree, nr, arch, 0)[0] == first, (hex(arch), nr)
        if reads:  # clone's flags, personality's persona, socket's family ...
            for arg0 in (0x7E020000, 0x10000011, 0xFFFFFFFF, 1 << 40, 8, 16, 0x20008):
                assert _verdict(tree, nr, arch, arg0)[0] == _verdict(listed, nr, arch, arg0)[0]
    assert _verdict(tree, 250, x86_64, 0)[0] == seccomp.act_errno(errno.EPERM)  # keyctl
    assert _verdict(tree, 39, x86_64, 0)[0] == seccomp.ACT_ALLOW  # getpid


def test_safety_bounds_are_enforced_by_the_parameters() -> None:
    for bad in ({"bound": 2001}, {"storm_s": 21}, {"storm_s": 4, "ramp_s": 3, "probe_s": 2}):
        with pytest.raises(ValidationError):
            ContainmentParams.model_validate(bad)


def test_guard_limits_merge_the_tighter_value() -> None:
    merged = tighter(Limits(pids=100, memory_mb=4096, cpus=1), Limits(pids=2032, memory_mb=512))
    assert (merged.pids, merged.memory_mb, merged.cpus) == (100, 512, 1)
    spec = guarded(InstanceSpec("x", Limits()), Limits(pids=50))
    assert spec.limits.pids == 50 and spec.guard == Limits(pids=50)


def test_fork_programs_bound_themselves() -> None:
    done = subprocess.run([sys.executable, str(INSIDE / "forks.py"), "storm", "20", "0.5"],
                          capture_output=True, text=True, timeout=30, check=True)
    storm = common.parse_json(done.stdout, "forks")
    assert storm["peak_children"] == 20 and storm["forks"] == 20
    probe = common.on_host("forks", ["probe", "0.3"], 30)
    assert probe["forks"] > 0 and probe["failures"] == {}


def test_memory_programs_make_what_they_say(tmp_path: Path) -> None:
    hog = common.on_host("hog", ["16", "0.1"], 30)
    assert hog["allocated_mb"] == 16
    written = common.on_host("acct", ["write", str(tmp_path / "f"), "2", "1"], 30)
    assert written["mb"] == 2 and (tmp_path / "f").stat().st_size == 2 << 20
    assert antagonists.hog_sizes(512) == (512, 768)  # its limit + 256 MiB ...
    guard, target = antagonists.hog_sizes(None)  # ... and never past 10% of RAM
    assert target <= antagonists.ram_mb() // 10 and guard < target


# -- integration -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiers(bench_image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        dict[str, Tier]]:
    """Tiers prepared on first use, finished at the end of the module."""
    prepared: dict[str, Tier] = {}
    work = tmp_path_factory.mktemp("isolation")
    run_id = f"test-iso-{uuid.uuid4().hex[:6]}"

    class Lazy(dict[str, Tier]):
        def __missing__(self, name: str) -> Tier:
            tier = get_tier(name)
            availability = tier.available()
            need(name, availability.ok, availability.reason)
            (work / name).mkdir()
            tier.prepare(TierContext(run_id, bench_image, work / name, work))
            prepared[name] = self[name] = tier
            return tier

    try:
        yield Lazy()
    finally:
        for tier in prepared.values():
            tier.finish()


def _context(tier: Tier, raw: Path, limits: Limits, seconds: float = 120) -> RunContext:
    def spec(role: str, command: list[str] | None) -> InstanceSpec:
        return InstanceSpec(role=role, limits=limits, command=command)

    return RunContext(tier=tier, instance=None, peer=None, new_spec=spec,
                      deadline=time.monotonic() + seconds, raw_dir=raw, run_key="t")


@pytest.mark.integration
@pytest.mark.parametrize("tier_name", ["ns", "docker"])
def test_pids_limit_contains_a_fork_storm(tier_name: str, tiers: dict[str, Tier],
                                          tmp_path: Path) -> None:
    tier = tiers[tier_name]
    params = ContainmentParams(bound=2000, pids_limit=100, storm_s=4, ramp_s=1.5, probe_s=2)
    found = {m.metric: m for m in Containment().run(
        _context(tier, tmp_path, Limits(cpus=1, memory_mb=512)), params)}
    offender_failures = found["offender_fork_failures"].metadata["offender_failures"]
    assert offender_failures.get("EAGAIN", 0) > 0, offender_failures
    assert found["offender_peak_processes"].value <= 100
    assert found["sibling_fork_failures"].value == 0
    assert found["host_fork_failures"].value == 0
    assert found["sibling_fork_latency_factor"].value > 0


@pytest.mark.integration
def test_host_tier_runs_a_storm_inside_a_pids_cgroup_of_its_own(tiers: dict[str, Tier],
                                                                tmp_path: Path) -> None:
    tier = tiers["host"]
    instance = tier.start(guarded(InstanceSpec("offender", Limits()), Limits(pids=30)))
    assert isinstance(instance, HostInstance)
    try:
        group = instance.guard
        assert group is not None and GUARD_ROOT in group.rel
        storm = common.inside(instance, "forks", ["storm", "200", "1"], 30)
        assert storm["peak_processes"] <= 30 and storm["failures"].get("EAGAIN", 0) > 0
    finally:
        instance.stop()
    hierarchies = cgroups.detect()
    assert not any((root / group.rel).exists() for root in hierarchies.unique_roots)


@pytest.mark.integration
def test_disk_writer_moves_at_most_its_cap_in_all(tiers: dict[str, Tier], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Writers at most 1 GiB in all, not only in their file: fio's time_based loop rewrites
    the file until the runtime ends (1.7 GiB in 4 s here, buffered). Checked with the cap
    scaled down to 32 MiB so the test writes little; the rate cap spreads it over the window."""
    assert common.MAX_WRITE_MB == 1024
    argv = fio_argv(FioParams(rw="randwrite", io_limit_mb=1024), "/scratch")
    assert "--io_size=1024m" in argv and "--time_based" not in argv
    monkeypatch.setattr(antagonists, "MAX_WRITE_MB", 32)
    tier = tiers["host"]
    instance = tier.start(InstanceSpec("antagonist", Limits()))
    try:
        ctx = _context(tier, tmp_path, Limits())
        ctx.instance = instance
        wrote = antagonists.run("disk_buffered", ctx, 2.0, 1, 256)
    finally:
        instance.stop()
    assert 0 < wrote.metadata["io_MiB"] <= 32, wrote.metadata
    assert wrote.metadata["runtime_ms"] >= 1000 and wrote.metadata["rate_cap_MiBps"] == 16


@pytest.mark.integration
@pytest.mark.parametrize("tier_name", ["host", "ns", "docker"])
def test_visibility_audit_tells_tiers_apart(tier_name: str, tiers: dict[str, Tier],
                                            tmp_path: Path) -> None:
    tier = tiers[tier_name]
    limits = Limits(cpus=1, memory_mb=512)
    instance = tier.start(InstanceSpec("main", limits))
    try:
        ctx = _context(tier, tmp_path, limits)
        ctx.instance = instance
        items = {m.metric: m for m in Visibility().run(ctx, Visibility().parse_params({}))}
        pid1 = instance.exec(["grep", "^Seccomp:", "/proc/1/status"], timeout=30).stdout.split()
    finally:
        instance.stop()
    assert pid1[-1] == ("0" if tier_name == "host" else "2")  # the init is filtered too
    assert items["vis.shared_kernel"].value == 1
    isolated = tier_name != "host"
    assert items["vis.host_processes_visible"].value == (0 if isolated else 1)
    assert items["vis.pid1_is_host"].value == (0 if isolated else 1)
    assert items["vis.host_kernel_log_readable"].value == (0 if isolated else 1)
    assert items["vis.capability_bounding_set"].value == (14 if isolated else
                                                          items["vis.capability_bounding_set"].value)
    assert items["vis.seccomp_filter"].value == (0 if tier_name == "host" else 1)
    # keyctl: no capability guards it, Docker's default profile refuses it (EPERM); the ns
    # tier loads that profile in its init and in each exec
    assert items["vis.keyctl_allowed"].value == (0 if isolated else 1), items["vis.keyctl_allowed"]
    if tier_name == "ns":
        assert "Docker's default profile" in tier.metadata()["seccomp"]


def test_a_command_can_keep_the_callers_session() -> None:
    """A timeout still kills a process group of its own; only the session (the scheduler's
    autogroup) is the caller's."""
    ids = [sys.executable, "-c", "import os; print(os.getsid(0), os.getpgid(0), os.getpid())"]
    sid, pgid, pid = map(int, procs.run(ids, new_session=False).stdout.split())
    assert sid == os.getsid(0) and pgid == pid
    sid, pgid, pid = map(int, procs.run(ids).stdout.split())
    assert sid == pid == pgid
    with pytest.raises(CommandTimeout):
        procs.run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5,
                  new_session=False)


@pytest.mark.integration
def test_host_tier_commands_share_benchs_scheduling_group(tiers: dict[str, Tier]) -> None:
    """Bare metal has no CPU shield between two programs: host-tier commands, guarded or not,
    run in bench's session, so the kernel's autogroup does not split the CPUs between them
    (with a session each, a 1-thread victim next to a 2-thread hog slowed 1.0-1.1x, not 1.5)."""
    tier = tiers["host"]
    show = ["python3", "-c", "import os; print(os.getsid(0))"]
    for guard in (None, Limits(pids=30)):
        instance = tier.start(InstanceSpec("main", Limits(), guard=guard))
        try:
            assert int(instance.exec(show, timeout=30).stdout) == os.getsid(0), guard
        finally:
            instance.stop()


@pytest.mark.integration
@pytest.mark.parametrize("tier_name", ["host", "ns", "docker"])
def test_disjoint_cpusets_shield_the_victim_from_a_cpu_hog(tier_name: str, tiers: dict[str, Tier],
                                                          tmp_path: Path) -> None:
    """Victim (1 sysbench thread) and a 2-thread hog, each `cpus: 1` on its own CPU of two:
    isolated tiers keep the victim within 10%; the host tier (no cpusets) slows it >= 1.30x.
    One more attempt if the first misses (a shared machine); both are in the message."""
    tier = tiers[tier_name]
    params = Interference().parse_params({
        "victim": "cpu.sysbench", "victim_params": {"threads": 1, "seconds": 1},
        "antagonist": "cpu", "threads": 2, "pairs": 3,
        "victim_limits": {"cpuset": "0"}, "antagonist_limits": {"cpuset": "1"}})
    isolated = tier.applies_limits

    def ok(slowdown: float) -> bool:
        return slowdown <= 1.10 if isolated else slowdown >= 1.30

    seen: list[list[float]] = []
    for _ in range(2):
        found = {m.metric: m for m in Interference().run(
            _context(tier, tmp_path, Limits(cpus=1, memory_mb=512)), params)}
        slowdown = found["victim_slowdown"]
        seen.append(slowdown.metadata["pair_ratios"])
        assert found["antagonist_events_per_s"].value > 0
        if ok(slowdown.value):
            break
    assert ok(slowdown.value), f"{tier_name}: victim slowdown per pair, per attempt: {seen}"


@pytest.mark.integration
@pytest.mark.parametrize("tier_name", ["ns", "docker"])
def test_dirty_page_cache_made_inside_shows_on_the_host_and_in_the_table(
        tier_name: str, tiers: dict[str, Tier], tmp_path: Path) -> None:
    """100 MiB of dirty page cache written inside raises the host's Dirty by >= 90 MiB, and the
    accounting table of the run shows it for the tier."""
    tier = tiers[tier_name]
    limits = Limits(cpus=1, memory_mb=1024)
    instance = tier.start(InstanceSpec("main", limits))
    seen = []
    try:
        ctx = _context(tier, tmp_path, limits)
        ctx.instance = instance
        params = Accounting().parse_params({"dirty_mb": 100, "cycles": 3,
                                            "kinds": ["dirty_cache"]})
        for _ in range(2):  # one more attempt if others' writeback overlapped (both reported)
            found = Accounting().run(ctx, params)
            metrics = {m.metric: m for m in found}
            seen.append(metrics["dirty_host_Dirty_MiB"].value)
            if seen[-1] >= 90:
                break
    finally:
        instance.stop()
    assert seen[-1] >= 90, f"host Dirty rise per attempt (MiB): {seen}; " \
        f"{metrics['dirty_host_Dirty_MiB'].metadata}"
    assert metrics["dirty_cache_reported_MiB"].value > 0
    samples = [Sample(run_id="t", cell=Cell(tier=tier_name, workload="isolation.accounting"),
                      repetition=0, metric=m.metric, value=m.value, unit=m.unit,
                      direction=m.direction, timestamp=0.0, metadata=m.metadata) for m in found]
    table = isolation_tables.accounting(samples)
    assert table is not None
    assert table.get("dirty page cache: host Dirty raise (MiB)", tier_name) != "-"


def _sample(tier: str, workload: str, metric: str, value: float, rep: int = 0,
            **params: Any) -> Sample:
    meta: dict[str, Any] = {"shows": f"{tier} view", "victim": params.get("victim"),
                            "bound": 2000, "safety_pids_guard": 2032,
                            "pids_limit_applied": params.get("pids_limit")}
    return Sample(run_id="r", cell=Cell(tier=tier, workload=workload, params=params),
                  repetition=rep, metric=metric, value=value, unit="x", direction="lower",
                  timestamp=0.0, metadata=meta)


def test_tables_and_report_section_from_samples(tmp_path: Path) -> None:
    from bench.analysis.frame import Run, read_frame
    from bench.report import isolation as section
    from bench.report.page import Page

    samples = [_sample(t, "isolation.visibility", "vis.hostname_is_host", float(t == "host"))
               for t in ("host", "ns", "docker", "kvm")]
    samples += [_sample(t, "isolation.interference", "victim_slowdown", v, rep,
                        victim="cpu.sysbench", antagonist="cpu")
                for t, base in (("host", 1.5), ("ns", 1.0)) for rep, v in
                enumerate((base, base + 0.02, base - 0.01))]
    samples += [_sample("ns", "isolation.forkbomb", "offender_peak_processes", 98,
                        pids_limit=100)]
    vis = isolation_tables.visibility(samples)
    assert vis is not None and vis.columns == ["host", "ns", "docker", "kvm"]
    assert vis.get("hostname_is_host", "host").startswith("1") and \
        vis.get("hostname_is_host", "ns").startswith("0")
    heat, _ = isolation_tables.interference(samples)
    assert heat.rows == ["host", "ns"] and heat.flags[("host", heat.columns[0])] == 1.5
    assert "[" in heat.get("ns", heat.columns[0])  # a CI from three repetitions
    held = isolation_tables.containment(samples)
    assert held is not None and held.get(held.rows[0], "offender_peak_processes").startswith("98")
    empty, full = tmp_path / "empty", tmp_path / "full"
    empty.mkdir()
    full.mkdir()
    rundir = RunDir(full)
    for sample in [*samples, _sample("ns", "isolation.visibility", "vis.pid1_is_host", 0.0)
                   .model_copy(update={"metadata": {"shows": "<script>x</script>"}})]:
        rundir.add_sample(sample)
    page = Page("t")

    def run_of(path: Path) -> Run:
        return Run(path.name, path, {}, read_frame(path / "samples.jsonl"), [])

    section.add(page, [run_of(empty)])
    assert page.sections == []  # no isolation samples: no section
    section.add(page, [run_of(full)])
    (anchor, _, body), = page.sections
    assert anchor == "isolation" and "data-figure" in body  # the heat map
    assert "<script>x" not in body and "&lt;script&gt;x" in body  # escaped


def test_interference_parameters_reject_bad_victims_and_limits() -> None:
    for bad in ({"victim": "isolation.forkbomb"}, {"victim": "density.idle"},
                {"victim_limits": {"cpuset": "zero"}}, {"antagonist": "nuke"},
                {"write_mb": 2048}):
        with pytest.raises(ValidationError):
            Interference().parse_params(bad)


def test_nested_parameters_are_hashable_frame_columns(tmp_path: Path) -> None:
    """An interference cell's parameters hold dicts (the victim's parameters, per-instance
    limits): the frame every report figure reads turns them into canonical JSON text."""
    from bench.analysis.frame import read_frame

    rundir = RunDir(tmp_path)
    for rep in range(2):
        rundir.add_sample(_sample("ns", "isolation.interference", "victim_slowdown", 1.0, rep,
                                  victim="cpu.sysbench", victim_params={"threads": 1},
                                  victim_limits={"cpuset": "0"}))
    frame = read_frame(rundir.samples_path)
    assert frame["param.victim_params"].nunique() == 1
    assert frame["param.victim_limits"].iloc[0] == '{"cpuset":"0"}'
