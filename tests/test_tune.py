"""Tuning against a fake procfs/sysfs root: catalog validation, refusals, apply/verify/restore,
counterparts, the journal's crash recovery (SIGKILL between write and restore), sweeps in
scenarios, cache-setup detection, and recommendations."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench.core.errors import BenchError, ScenarioError
from bench.core.rundir import RunDir
from bench.core.samples import Cell, Sample
from bench.run import scenario as scenario_mod
from bench.tune import cache, recommend
from bench.tune import catalog as catalog_mod
from bench.tune import journal as journal_mod
from bench.tune.catalog import TuneError
from bench.tune.sweep import SweepSpec, axes
from bench.tune.sysfs import HostFs
from bench.tune.tuner import Tuner, recover
from tests.tune_fake import FakeKernel, make_root, read

REPO = Path(__file__).resolve().parent.parent
CATALOG = catalog_mod.load()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_root(tmp_path)


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state"
    monkeypatch.setenv("BENCH_TUNE_STATE_DIR", str(path))
    return path


# -- the catalog -----------------------------------------------------------------------------
def test_shipped_catalog_has_what_the_issue_lists() -> None:
    wanted = ["vm.dirty_ratio", "vm.dirty_background_ratio", "vm.dirty_bytes",
              "vm.dirty_background_bytes", "vm.dirty_expire_centisecs",
              "vm.dirty_writeback_centisecs", "vm.swappiness", "vm.vfs_cache_pressure",
              "vm.watermark_scale_factor", "vm.min_free_kbytes", "vm.extra_free_kbytes",
              "mm.transparent_hugepage.enabled", "block.scheduler", "block.read_ahead_kb",
              "block.nr_requests", "net.core.rmem_max", "net.core.wmem_max",
              "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"]
    assert [n for n in wanted if n not in CATALOG.tunables] == []
    assert CATALOG.get("vm.dirty_bytes").counterpart == "vm.dirty_ratio"
    assert CATALOG.get("vm.dirty_background_bytes").counterpart == "vm.dirty_background_ratio"
    assert CATALOG.get("vm.extra_free_kbytes").probe
    assert CATALOG.get("block.read_ahead_kb").scope == "per-device"
    assert CATALOG.get("net.ipv4.tcp_rmem").scope == "per-netns"
    assert "docker" not in CATALOG.get("net.ipv4.tcp_rmem").tiers


BASE = {"path": "/proc/sys/vm/swappiness", "type": "int", "valid": [0, 200], "safe": [1, 100],
        "sweep": [10, 60], "scope": "host-global", "tiers": ["host"], "risk": "low",
        "tuned": "sysctl", "doc": "https://docs.kernel.org/x", "description": "d"}


def _catalog(**tunables: dict[str, object]) -> str:
    return json.dumps({"version": 1, "tunables": tunables})


@pytest.mark.parametrize(("entry", "message"), [
    ({**BASE, "safe": [1, 300]}, "safe range [1, 300] must lie inside the valid range"),
    ({**BASE, "sweep": [150]}, "sweep value 150: 150 is outside the safe range 1..100"),
    ({**BASE, "path": "/etc/passwd"}, "must be an absolute path under /proc/sys/ or /sys/"),
    ({**BASE, "path": "/proc/sys/../../etc/shadow"}, "must not hold '..'"),
    ({**BASE, "path": "/sys/block/{dev}/queue/x"}, "the only placeholder allowed"),
    ({**BASE, "scope": "per-device"}, "per-device tunables (and only they) hold {device}"),
    ({**BASE, "tiers": ["lxc"]}, "unknown tier 'lxc'"),
    ({**BASE, "colour": "red"}, "tunables.vm.swappiness.colour: unknown key"),
    ({**BASE, "counterpart": "vm.nothing"}, "'vm.nothing' is not in the catalog"),
])
def test_invalid_catalog_names_the_field(entry: dict[str, object], message: str) -> None:
    with pytest.raises(TuneError) as err:
        catalog_mod.parse_catalog(_catalog(**{"vm.swappiness": entry}), "cat.yaml")
    assert "cat.yaml" in err.value.cause
    assert message in err.value.cause


def test_counterparts_must_name_each_other() -> None:
    a = {**BASE, "path": "/proc/sys/vm/a_bytes", "counterpart": "vm.b", "zero_means_unset": True}
    b = {**BASE, "path": "/proc/sys/vm/b", "counterpart": "vm.c"}
    c = {**BASE, "path": "/proc/sys/vm/c"}
    with pytest.raises(TuneError, match=r"must name vm\.a as its counterpart too"):
        catalog_mod.parse_catalog(_catalog(**{"vm.a": a, "vm.b": b, "vm.c": c}), "x")


# -- refusals --------------------------------------------------------------------------------
def test_writes_outside_the_catalog_are_refused(root: Path) -> None:
    tuner = Tuner(CATALOG, HostFs(root))
    with pytest.raises(TuneError, match="not in the tunables catalog"):
        tuner.apply("kernel.panic", 1)
    with pytest.raises(TuneError, match="not a path in the tunables catalog"):
        CATALOG.by_path("/proc/sys/kernel/panic")
    assert CATALOG.by_path("/sys/block/vda/queue/read_ahead_kb")[1] == "vda"


def test_out_of_range_values_are_refused_unless_overridden(root: Path) -> None:
    tuner = Tuner(CATALOG, FakeKernel(root))
    with pytest.raises(TuneError) as err:
        tuner.apply("vm.dirty_background_ratio", 70)
    assert "outside the safe range 1..50" in err.value.cause
    assert "--allow-unsafe" in err.value.fix
    with pytest.raises(TuneError, match=r"outside the valid range 0\.\.100"):
        Tuner(CATALOG, FakeKernel(root), allow_unsafe=True).apply("vm.dirty_background_ratio",
                                                                  101)
    with pytest.raises(TuneError, match="not one of none, mq-deadline, kyber, bfq"):
        tuner.apply("block.scheduler", "cfq", "vda")
    (root / "sys/block/vda/queue/scheduler").write_text("none [mq-deadline]\n")
    with pytest.raises(TuneError, match="offers only none, mq-deadline"):
        tuner.apply("block.scheduler", "bfq", "vda")
    with pytest.raises(TuneError, match="takes an integer"):
        tuner.apply("vm.swappiness", "lots")
    assert read(root, "proc/sys/vm/dirty_background_ratio") == "10"
    assert tuner.journal.entries() == []
    change = Tuner(CATALOG, FakeKernel(root), allow_unsafe=True).apply(
        "vm.dirty_background_ratio", 70)
    assert change.written and read(root, "proc/sys/vm/dirty_background_ratio") == "70"


def test_paths_escaping_the_tree_are_refused(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("60\n")
    swappiness = root / "proc/sys/vm/swappiness"
    swappiness.unlink()
    swappiness.symlink_to(outside)
    tuner = Tuner(CATALOG, HostFs(root))
    with pytest.raises(TuneError, match=r"outside .*proc/sys; bench writes nothing outside"):
        tuner.apply("vm.swappiness", 10)
    assert outside.read_text() == "60\n"
    with pytest.raises(TuneError, match="not a block device name"):
        tuner.apply("block.read_ahead_kb", 1024, "../../../etc")
    # the kernel's own symlinks inside /sys are fine
    assert tuner.apply("block.read_ahead_kb", 1024, "vda").written


# -- apply, verify, restore ------------------------------------------------------------------
def test_apply_journals_before_writing_and_restore_puts_everything_back(
        root: Path, state: Path) -> None:
    journal = journal_mod.Journal("run-a", state)
    target = FakeKernel(root)
    tuner = Tuner(CATALOG, target, journal)
    tuner.apply("vm.dirty_background_ratio", 5)
    tuner.apply("block.read_ahead_kb", 4096, "vda")
    tuner.apply("net.ipv4.tcp_rmem", "4096 131072 33554432")
    tuner.apply("mm.transparent_hugepage.enabled", "never")
    lines = [json.loads(x) for x in (state / "journal-run-a.jsonl").read_text().splitlines()]
    originals = {(e["name"], e["device"]): e["original"] for e in lines}
    assert originals[("vm.dirty_background_ratio", None)] == "10"
    assert originals[("vm.dirty_background_bytes", None)] == "0"  # its counterpart
    assert originals[("block.read_ahead_kb", "vda")] == "128"
    assert originals[("net.ipv4.tcp_rmem", None)] == "4096 131072 6291456"
    assert originals[("mm.transparent_hugepage.enabled", None)] == "madvise"
    assert read(root, "sys/block/vda/queue/read_ahead_kb") == "4096"
    tuner.restore_all()
    journal.close()
    assert read(root, "proc/sys/vm/dirty_background_ratio") == "10"
    assert read(root, "sys/block/vda/queue/read_ahead_kb") == "128"
    assert read(root, "proc/sys/net/ipv4/tcp_rmem") == "4096 131072 6291456"
    assert read(root, "sys/kernel/mm/transparent_hugepage/enabled") == "always [madvise] never"
    assert not (state / "journal-run-a.jsonl").exists()
    assert not (state / "journal-run-a.lock").exists()


def test_a_value_the_kernel_changes_fails_verification(root: Path) -> None:
    tuner = Tuner(CATALOG, FakeKernel(root))
    with pytest.raises(TuneError, match="wrote '1026' but it reads back '1024'"):
        tuner.apply("block.read_ahead_kb", 1026, "vda")
    tuner.restore_all()
    assert read(root, "sys/block/vda/queue/read_ahead_kb") == "128"


def test_only_differing_values_are_written(root: Path) -> None:
    target = FakeKernel(root)
    tuner = Tuner(CATALOG, target)
    assert not tuner.apply("vm.swappiness", 60).written
    tuner.set_state({("vm.dirty_background_ratio", None): 5})
    tuner.set_state({("vm.dirty_background_ratio", None): 5})
    assert target.writes == [("vm.dirty_background_ratio", "5")]
    tuner.set_state({("block.read_ahead_kb", "vda"): 1024})  # the previous one goes back
    assert read(root, "proc/sys/vm/dirty_background_ratio") == "10"
    assert read(root, "sys/block/vda/queue/read_ahead_kb") == "1024"
    tuner.set_state({})
    assert read(root, "sys/block/vda/queue/read_ahead_kb") == "128"


@pytest.mark.parametrize("active_bytes", [False, True])
def test_counterparts_restore_the_member_that_was_active(root: Path, active_bytes: bool) -> None:
    if active_bytes:  # the host runs on dirty_bytes (dirty_ratio reads 0)
        (root / "proc/sys/vm/dirty_bytes").write_text("268435456\n")
        (root / "proc/sys/vm/dirty_ratio").write_text("0\n")
    target = FakeKernel(root)
    tuner = Tuner(CATALOG, target)
    if active_bytes:
        tuner.apply("vm.dirty_ratio", 30)
        assert read(root, "proc/sys/vm/dirty_bytes") == "0"
    else:
        tuner.apply("vm.dirty_bytes", 67108864)
        assert read(root, "proc/sys/vm/dirty_ratio") == "0"
    target.writes.clear()
    tuner.restore_all()  # writing 0 to dirty_bytes would be refused by the (fake) kernel
    if active_bytes:
        assert target.writes == [("vm.dirty_bytes", "268435456")]
        assert read(root, "proc/sys/vm/dirty_ratio") == "0"
    else:
        assert target.writes == [("vm.dirty_ratio", "20")]
        assert read(root, "proc/sys/vm/dirty_bytes") == "0"
        assert read(root, "proc/sys/vm/dirty_ratio") == "20"


def test_switching_counterparts_within_a_sweep(root: Path) -> None:
    tuner = Tuner(CATALOG, FakeKernel(root))
    tuner.set_state({("vm.dirty_background_bytes", None): 33554432})
    assert read(root, "proc/sys/vm/dirty_background_ratio") == "0"
    tuner.set_state({("vm.dirty_background_ratio", None): 5})
    assert (read(root, "proc/sys/vm/dirty_background_ratio"),
            read(root, "proc/sys/vm/dirty_background_bytes")) == ("5", "0")
    tuner.set_state({("vm.swappiness", None): 10})
    assert (read(root, "proc/sys/vm/dirty_background_ratio"),
            read(root, "proc/sys/vm/dirty_background_bytes")) == ("10", "0")
    tuner.restore_all()
    assert read(root, "proc/sys/vm/swappiness") == "60"


def test_side_effects_are_restored_too(root: Path) -> None:
    """A scheduler change resets nr_requests: its original is journaled and comes back."""
    tuner = Tuner(CATALOG, FakeKernel(root))
    tuner.apply("block.scheduler", "bfq", "vda")
    assert read(root, "sys/block/vda/queue/nr_requests") == "64"
    tuner.apply("block.nr_requests", 128, "vda")
    tuner.restore_all()
    assert read(root, "sys/block/vda/queue/scheduler") == "none [mq-deadline] kyber bfq"
    assert read(root, "sys/block/vda/queue/nr_requests") == "256"


def test_snapshot_reports_probed_tunables_as_unavailable(root: Path) -> None:
    snap = Tuner(CATALOG, HostFs(root)).snapshot(["vda"])
    assert snap["vm.extra_free_kbytes"].startswith("unavailable:")
    assert "vendor patch" in snap["vm.extra_free_kbytes"]
    assert snap["block.scheduler[vda]"] == "mq-deadline"
    assert snap["net.ipv4.tcp_wmem"] == "4096 16384 4194304"
    with pytest.raises(TuneError, match="unavailable"):
        Tuner(CATALOG, HostFs(root)).apply("vm.extra_free_kbytes", 65536)


# -- crash recovery --------------------------------------------------------------------------
WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from bench.tune import catalog, journal
    from bench.tune.tuner import Tuner
    from tests.tune_fake import FakeKernel
    j = journal.Journal("run-killed", Path(sys.argv[2]))
    t = Tuner(catalog.load(), FakeKernel(Path(sys.argv[1])), j)
    t.apply("vm.dirty_background_ratio", 2)
    t.apply("block.read_ahead_kb", 2048, "vda")
    if sys.argv[3] == "pair":
        t.apply("vm.dirty_bytes", 67108864)
    else:
        t.apply("mm.transparent_hugepage.enabled", "never")
    print("applied", flush=True)
    time.sleep(120)
    t.restore_all()  # never reached: SIGKILL comes first
""")


def _killed_writer(root: Path, state: Path, third: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(state), third],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "applied"
    assert journal_mod.is_live("run-killed", state)
    assert recover(CATALOG, state) == []  # a live session is left alone
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read(root, "proc/sys/vm/dirty_background_ratio") == "2"
    assert read(root, "sys/block/vda/queue/read_ahead_kb") == "2048"
    if third == "pair":
        assert read(root, "proc/sys/vm/dirty_bytes") == "67108864"
        assert read(root, "proc/sys/vm/dirty_ratio") == "0"  # the kernel zeroed it
    assert not journal_mod.is_live("run-killed", state)


def _assert_original(root: Path) -> None:
    assert read(root, "proc/sys/vm/dirty_background_ratio") == "10"
    assert read(root, "sys/block/vda/queue/read_ahead_kb") == "128"
    assert read(root, "proc/sys/vm/dirty_bytes") == "0"
    assert read(root, "proc/sys/vm/dirty_ratio") == "20"
    thp = CATALOG.get("mm.transparent_hugepage.enabled")
    assert thp.parse(read(root, "sys/kernel/mm/transparent_hugepage/enabled")) == "madvise"


def test_kill_9_between_write_and_restore_is_restored_at_the_next_start(
        root: Path, state: Path) -> None:
    _killed_writer(root, state, "pair")
    restored = recover(CATALOG, state, target=lambda r: FakeKernel(Path(r)))
    assert restored == ["run-killed: vm.dirty_ratio: 0 -> 20 (set)",
                        "run-killed: block.read_ahead_kb[vda]: 2048 -> 128 (set)",
                        "run-killed: vm.dirty_background_ratio: 2 -> 10 (set)"]
    _assert_original(root)
    assert journal_mod.sessions(state) == []


def test_bench_tune_restore_restores_a_killed_runs_journal(
        root: Path, state: Path, tmp_path: Path) -> None:
    _killed_writer(root, state, "thp")
    env = {**os.environ, "BENCH_SYSFS_ROOT": str(root), "BENCH_TUNE_STATE_DIR": str(state),
           "BENCH_LOCK_PATH": str(tmp_path / "bench.lock")}
    done = subprocess.run([sys.executable, "-m", "bench.cli", "tune", "restore"], env=env,
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "3 value(s) restored" in done.stdout
    _assert_original(root)


def test_a_torn_last_journal_line_is_ignored(root: Path, state: Path) -> None:
    journal = journal_mod.Journal("run-torn", state)
    Tuner(CATALOG, HostFs(root), journal).apply("vm.swappiness", 10)
    journal.close()
    with open(state / "journal-run-torn.jsonl", "a") as fh:
        fh.write('{"v": 1, "session": "run-to')
    recover(CATALOG, state)
    assert read(root, "proc/sys/vm/swappiness") == "60"


def test_an_unreadable_journal_line_before_the_last_is_an_error(root: Path, state: Path) -> None:
    journal = journal_mod.Journal("run-bad", state)
    Tuner(CATALOG, HostFs(root), journal).apply("vm.swappiness", 10)
    journal.close()
    path = state / "journal-run-bad.jsonl"
    path.write_text("{garbage\n" + path.read_text())
    with pytest.raises(TuneError, match=r"journal-run-bad\.jsonl:1 is not a journal entry"):
        recover(CATALOG, state)
    assert read(root, "proc/sys/vm/swappiness") == "10"  # left for a person, not guessed


def test_the_manual_journal_waits_for_bench_tune_restore(root: Path, state: Path) -> None:
    journal = journal_mod.Journal(journal_mod.MANUAL, state)
    Tuner(CATALOG, HostFs(root), journal).apply("vm.swappiness", 10)
    journal.close()
    assert recover(CATALOG, state) == []  # a run's start leaves `bench tune apply` alone
    assert read(root, "proc/sys/vm/swappiness") == "10"
    assert recover(CATALOG, state, include_manual=True) == ["manual: vm.swappiness: 10 -> 60 "
                                                             "(set)"]
    assert read(root, "proc/sys/vm/swappiness") == "60"


# -- sweeps in scenarios ---------------------------------------------------------------------
SCENARIO = """
name: s
tiers: [host]
workloads:
  - workload: disk.fio
    matrix: {rw: [read, write]}
"""


def test_sweep_expands_into_cells() -> None:
    scen = scenario_mod.parse(SCENARIO + """
sweep:
  tunables:
    vm.dirty_background_ratio: [1, 20]
    block.read_ahead_kb: null
  profiles: {writeback-early: null, mine: {vm.swappiness: 10}}
""", "s.yaml")
    assert scen.sweep is not None
    settings = scen.sweep.settings()
    assert settings[0] == {}
    assert {"block.read_ahead_kb": 4096} in settings  # the catalog's default sweep
    assert {"vm.swappiness": 10} in settings
    assert len(settings) == 1 + 2 + 3 + 2
    from bench.run import plan

    cells = plan.cells_of(scen, ["host"])
    assert len(cells) == 2 * len(settings)
    assert len({c.cell.key for c in cells}) == len(cells)


@pytest.mark.parametrize(("sweep", "message"), [
    ("tunables: {vm.nope: [1]}", "sweep.tunables: Value error, unknown tunable 'vm.nope'"),
    ("tunables: {vm.dirty_background_ratio: [70]}", "70 is outside the safe range 1..50"),
    ("cache: [flashcache]", "unknown cache setup 'flashcache'"),
    ("profiles: {nope: null}", "unknown profile 'nope'"),
    ("tunables: {vm.swappiness: [10]}\n  colour: red", "sweep.colour: unknown key"),
])
def test_bad_sweeps_name_the_field(sweep: str, message: str) -> None:
    with pytest.raises(ScenarioError) as err:
        scenario_mod.parse(SCENARIO + "sweep:\n  " + sweep + "\n", "s.yaml")
    assert message in err.value.cause


def test_unsafe_sweep_values_need_the_override() -> None:
    scen = scenario_mod.parse(SCENARIO + "sweep:\n  allow_unsafe: true\n  tunables: "
                              "{vm.dirty_background_ratio: [70]}\n", "s.yaml")
    assert scen.sweep is not None and {"vm.dirty_background_ratio": 70} in scen.sweep.settings()


def test_tiers_that_cannot_set_a_tunable_are_left_out_with_the_reason() -> None:
    spec = SweepSpec(tunables={"net.ipv4.tcp_rmem": None, "vm.extra_free_kbytes": [65536]},
                     cache=["none-fast"])
    pairs, notes = axes(spec, "docker")
    assert all("net.ipv4.tcp_rmem" not in t for t, _ in pairs)
    assert any("cannot be set from the docker tier: docker sets namespaced sysctls" in n
               for n in notes)
    assert any("cache setup none-fast unavailable: the docker tier cannot mount a cache device"
               in n for n in notes)
    if not Path("/proc/sys/vm/extra_free_kbytes").exists():
        assert any("extra_free_kbytes does not exist" in n for n in notes)


# -- cache setups ----------------------------------------------------------------------------
def test_cache_setups_go_where_the_tier_can_mount_them() -> None:
    from bench.tiers.kvm.domxml import disk_xml

    spec = SweepSpec(cache=["none-slow", "bcache-writeback", "dm-writecache-ssd"])
    kvm, kvm_notes = axes(spec, "kvm")  # built inside the guest's own kernel
    assert [c for _, c in kvm] == ["none-slow", "bcache-writeback", "dm-writecache-ssd"]
    assert kvm_notes == []
    host, host_notes = axes(spec, "host")  # this host's kernel decides
    if not Path("/sys/module/bcache").exists():
        assert "bcache-writeback" not in [c for _, c in host]
        assert any("bcache" in n for n in host_notes)
    xml = disk_xml(Path("/x/slow.raw"), "vdc", read_bps=50 << 20, read_iops=400)
    assert "<read_bytes_sec>52428800</read_bytes_sec>" in xml
    assert "<read_iops_sec>400</read_iops_sec>" in xml and "write_iops" not in xml
    assert 'cache="writeback" io="threads"' in disk_xml(Path("/dev/shm/f"), "vdd",
                                                         cache="writeback")


class _RecordingShell:
    """A guest that cannot exist here: records the argv the lab would run inside it."""

    def __init__(self) -> None:
        self.argvs: list[list[str]] = []

    def run(self, argv: list[str], timeout: float = 60, check: bool = True) -> str:
        self.argvs.append(argv)
        return "2097152\n" if argv[:2] == ["blockdev", "--getsz"] else ""

    def read(self, path: str) -> str:
        return ""

    def write(self, path: str, text: str) -> None:
        self.argvs.append(["write", path, text])

    def exists(self, path: str) -> bool:
        return True

    def realpath(self, path: str) -> str:
        return path


def test_guest_lab_gives_each_setup_its_own_aligned_slices() -> None:
    from bench.tune.cache.given import GivenDevicesLab

    shell = _RecordingShell()
    names = ["none", "none-slow", "lvmcache-writeback", "dm-writecache-ssd"]
    lab = GivenDevicesLab("r1", shell, "/dev/vdc", "/dev/vdd", "/scratch", "iotune", names)
    lab.build("dm-writecache-ssd")
    lab.build("none-slow")
    tables = [a[a.index("--table") + 1] for a in shell.argvs if a[:2] == ["dmsetup", "create"]]
    linear = [t.split() for t in tables if " linear " in t]
    # three setups (none is no setup): thirds of the disks, each a whole number of MiB
    assert {(t[3], int(t[4])) for t in linear} == {("/dev/vdc", 2 * 698368),
                                                  ("/dev/vdd", 2 * 698368), ("/dev/vdc", 0)}
    assert all(int(t[1]) % 2048 == 0 for t in linear)
    assert any(t.split()[2] == "writecache" for t in tables)
    binds = [a for a in shell.argvs if a[:2] == ["mount", "--bind"]]
    assert [b[2:] for b in binds] == [["/run/bench-cache/dm-writecache-ssd", "/scratch"],
                                      ["/run/bench-cache/none-slow", "/scratch"]]
    assert ["umount", "/scratch"] in shell.argvs  # the first setup unbound before the next
    lab.destroy()
    removed = [a[-1] for a in shell.argvs if a[:2] == ["dmsetup", "remove"]]
    assert len(removed) == len(tables)


def test_cache_recipes_and_setups() -> None:
    names = set(cache.setups())
    assert {"none-slow", "none-fast", "bcache-writeback", "bcache-writethrough",
            "bcache-writearound", "lvmcache-writethrough", "lvmcache-writeback",
            "dm-writecache-ssd"} <= names


def test_missing_kernel_features_are_named(tmp_path: Path) -> None:
    probe = cache.Probe(tmp_path)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/devices").write_text("Block devices:\n  7 loop\n253 zram\n")
    (tmp_path / "proc/filesystems").write_text("\text4\n")
    why = probe.device_mapper()
    assert "no device-mapper in /proc/devices or /proc/misc" in why
    assert "no /dev/mapper/control" in why
    assert "bcache" in probe.bcache()
    assert "blkio.throttle.read_bps_device is missing" in probe.blkio_throttle()
    (tmp_path / "sys/module/dm_mod").mkdir(parents=True)
    (tmp_path / "sys/module/dm_cache").mkdir(parents=True)
    assert probe.device_mapper() == ""
    assert probe.dm_target("cache") == ""


def test_cache_status_parsers_and_tables() -> None:
    # the status line format of Documentation/admin-guide/device-mapper/cache.rst
    status = ("0 2097152 cache 8 27/4096 128 1003/16384 1234 567 89 10 3 1004 12 1 "
              "writeback 2 migration_threshold 2048 smq 0 rw -")
    parsed = cache.parse_dm_cache_status(status)
    assert parsed["read_hits"] == 1234 and parsed["write_misses"] == 10
    assert parsed["dirty"] == 12 and parsed["cache_blocks_used"] == 1003
    wc = cache.parse_dm_writecache_status("0 2097152 writecache 0 131072 130000 512 0 0")
    assert wc == {"error": 0, "blocks": 131072, "free_blocks": 130000, "writeback_blocks": 512,
                  "reads": 0, "read_hits": 0}
    wc = cache.parse_dm_writecache_status(  # 6.1's status line, with the event counters
        "0 2097152 writecache 0 24576 20000 0 900 850 300 0 300 0 0 0 2 0")
    assert wc["reads"] == 900 and wc["read_hits"] == 850 and wc["writes"] == 300
    assert cache.dm_cache_table(100, "/m", "/d", "/o", 64, "writeback", "smq") == \
        "0 100 cache /m /d /o 128 1 writeback smq 0"
    assert cache._human_bytes("1.5M") == 1572864


def _bcache_lab(tmp_path: Path, dirty_data: str | None) -> tuple[cache.CacheLab, str]:
    """A lab holding one bcache setup whose sysfs directory is a fake tree (no bcache here)."""
    name = next(n for n, (r, _) in cache.setups().items() if r.kind == "bcache")
    recipe, variant = cache.setups()[name]
    sysdir = tmp_path / "bcache"
    sysdir.mkdir(exist_ok=True)
    (sysdir / "writeback_percent").write_text("10\n")
    (sysdir / "dirty_data").unlink(missing_ok=True)
    if dirty_data is not None:
        (sysdir / "dirty_data").write_text(dirty_data)
    lab = cache.CacheLab("test-drain", tmp_path, state_dir=tmp_path)
    lab.built[name] = cache.Built(setup=name, recipe=recipe, variant=variant, top="",
                                  mount=tmp_path, bcache_dir=sysdir, details={"options": {}})
    return lab, name


def test_drain_fails_when_the_dirty_counter_cannot_be_read(tmp_path: Path) -> None:
    lab, name = _bcache_lab(tmp_path, "0\n")
    assert lab.drain(name, timeout=30) == 0
    for unreadable in (None, "n/a\n"):
        lab, name = _bcache_lab(tmp_path, unreadable)
        with pytest.raises(BenchError, match="Cannot read the dirty counter"):
            lab.drain(name, timeout=30)


def test_a_failed_removal_is_a_failure_and_its_state_is_kept(tmp_path: Path) -> None:
    removable = tmp_path / "slow.img"
    removable.write_text("x")
    stuck = tmp_path / "stuck"  # a directory: unlink() refuses it
    (stuck / "inside").mkdir(parents=True)
    state = tmp_path / "cache-dead-run.json"
    state.write_text(json.dumps({"run_id": "dead-run", "made": [
        {"kind": "file", "path": str(stuck)}, {"kind": "file", "path": str(removable)}]}))
    with pytest.raises(BenchError, match="Could not remove 1 cache device part") as failed:
        cache.cleanup("dead-run", tmp_path)
    assert str(stuck) in str(failed.value) and "bench cleanup" in failed.value.fix
    assert not removable.exists() and stuck.exists()
    assert state.exists()  # the next `bench cleanup` tries again
    (stuck / "inside").rmdir()
    stuck.rmdir()
    stuck.mkdir()
    state.write_text(json.dumps({"run_id": "dead-run", "made": []}))
    assert cache.cleanup("dead-run", tmp_path) == []
    assert not state.exists()


# -- recommendations -------------------------------------------------------------------------
def _fake_run(results: Path, values: dict[str, list[float]]) -> RunDir:
    rundir = RunDir.create("20260101-000000-dirty-sweep-abcd")
    rundir.write_manifest({
        "run_id": rundir.run_id, "host": {"hostname": "testhost"}, "tiers": ["host"],
        "tuning": {"as_found": {"vm.dirty_background_ratio": "10", "vm.dirty_background_bytes":
                                "0", "block.read_ahead_kb[vda]": "8192"},
                   "device": "vda", "shared": "vm.dirty_background_ratio is host-wide",
                   "left_out": []}})
    settings = {"base": {}, "ra": {"block.read_ahead_kb": 1024},
                "dbr": {"vm.dirty_background_ratio": 1},
                "bad": {"vm.dirty_background_ratio": 20}}
    for label, series in values.items():
        cell = Cell(tier="host", workload="disk.fio", params={"rw": "read", "note": "<b>x</b>"},
                    tunables=settings[label])
        for rep, value in enumerate(series):
            for metric, v, unit, direction in (("bandwidth_MBps", value, "MB/s", "higher"),
                                               ("clat_p99_us", 1000.0 / value, "us", "lower")):
                rundir.add_sample(Sample(run_id=rundir.run_id, cell=cell, repetition=rep,
                                         metric=metric, value=v, unit=unit,
                                         direction=direction, timestamp=0.0))
    return rundir


def test_recommendation_verdicts_and_files(results_dir: Path, root: Path, tmp_path: Path) -> None:
    rundir = _fake_run(results_dir, {
        "base": [100, 102, 98, 101, 99, 100, 103, 97],
        "ra": [130, 133, 128, 131, 129, 132, 127, 130],  # +30%: adopt
        "dbr": [101, 99, 100, 102, 98, 97, 103, 100],  # no effect
        "bad": [70, 72, 69, 71, 68, 70, 73, 71],  # -30%: harmful
    })
    rec = recommend.analyse(rundir)
    verdicts = {recommend.setting_text(r.setting): r.verdict for r in rec.results}
    assert verdicts == {"block.read_ahead_kb=1024": "adopt",
                        "vm.dirty_background_ratio=1": "no evidence",
                        "vm.dirty_background_ratio=20": "harmful"}
    ra = next(r for r in rec.results if r.verdict == "adopt")
    assert ra.current == {"block.read_ahead_kb": "8192"}
    assert 0.25 < ra.primary.change < 0.35 and ra.primary.ci_low > 0
    assert ra.primary.p_adjusted >= ra.primary.p
    assert rec.apply == {"block.read_ahead_kb": 1024}
    paths = {p.name: p for p in recommend.write_files(rec, tmp_path / "out")}
    tuned = paths["tuned.conf"].read_text()
    assert "include=throughput-performance" in tuned
    assert "[disk]\ndevices=vda\nreadahead=1024" in tuned
    assert 'KERNEL=="vda", ATTR{queue/read_ahead_kb}="1024"' in paths[
        f"60-bench-{rundir.run_id}.rules"].read_text()
    assert "vm.dirty_background_ratio" not in paths[f"90-bench-{rundir.run_id}.conf"].read_text()
    # the rollback script writes back what the manifest recorded (rehearsed on the fake tree)
    (root / "sys/block/vda/queue/read_ahead_kb").write_text("1024\n")
    done = subprocess.run(["sh", str(paths["rollback.sh"])], env={**os.environ,
                          "ROOT": str(root)}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert read(root, "sys/block/vda/queue/read_ahead_kb") == "8192"
    fragment = recommend.html_fragment(rec)
    assert "&lt;b&gt;x&lt;/b&gt;" in fragment and "<b>x</b>" not in fragment
    assert "adopt" in fragment and "harmful" in fragment


def test_recommendations_show_cost_factors_above_one_when_slower(results_dir: Path) -> None:
    rundir = _fake_run(results_dir, {
        "base": [100, 102, 98, 101, 99, 100, 103, 97],
        "ra": [130, 133, 128, 131, 129, 132, 127, 130],  # throughput +30%: faster
        "bad": [70, 72, 69, 71, 68, 70, 73, 71],  # throughput -30%: slower
    })
    rec = recommend.analyse(rundir)
    faster, slower = (next(r for r in rec.results if r.setting == setting)
                      for setting in ({"block.read_ahead_kb": 1024},
                                      {"vm.dirty_background_ratio": 20}))
    for result, factor in ((faster, 100 / 130), (slower, 100 / 70)):
        for c in (result.primary, *result.others):  # MB/s (higher) and p99 (lower) alike
            assert c.cost == pytest.approx(factor, rel=0.03), c
            assert c.cost_low <= c.cost <= c.cost_high
    assert faster.primary.cost_high < 1 < slower.primary.cost_low
    row = next(r for r in recommend.rows(rec) if r["setting"] == "vm.dirty_background_ratio=20")
    assert row["metric"] == "bandwidth_MBps ↑" and row["cost"].startswith("1.4")
    for text in (recommend.markdown(rec), recommend.html_fragment(rec)):
        assert "&gt; 1 = slower" in text or "> 1 = slower" in text
        assert "Holm" in text


def test_a_failed_recommendation_shows_its_error_in_the_report(
        results_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.analysis import frame
    from bench.report import build

    rundir = _fake_run(results_dir, {"base": [100, 101, 99], "ra": [130, 131, 129]})

    def unreadable(path: Path | None = None) -> None:
        raise TuneError("Cannot read the tunables catalog /nowhere/tunables.yaml: No such "
                        "file or directory.", "reinstall bench.")

    monkeypatch.setattr(catalog_mod, "load", unreadable)
    page = build.render([frame.load(str(rundir.path))])
    assert f"No recommendation for run {rundir.run_id}" in page
    assert "Cannot read the tunables catalog /nowhere/tunables.yaml" in page
    assert "Fix: reinstall bench." in page


def test_a_sysctl_recommendation_and_its_rollback(results_dir: Path, root: Path,
                                                  tmp_path: Path) -> None:
    rundir = _fake_run(results_dir, {
        "base": [100, 101, 99, 100, 102, 98], "dbr": [120, 121, 119, 122, 118, 120]})
    rec = recommend.analyse(rundir, correction="bh")
    assert rec.apply == {"vm.dirty_background_ratio": 1}
    paths = {p.name: p for p in recommend.write_files(rec, tmp_path / "out")}
    assert "vm.dirty_background_ratio = 1" in paths[f"90-bench-{rundir.run_id}.conf"].read_text()
    assert "[sysctl]\nvm.dirty_background_ratio=1" in paths["tuned.conf"].read_text()
    (root / "proc/sys/vm/dirty_background_ratio").write_text("1\n")
    subprocess.run(["sh", str(paths["rollback.sh"])], env={**os.environ, "ROOT": str(root)},
                   check=True, capture_output=True, timeout=30)
    assert read(root, "proc/sys/vm/dirty_background_ratio") == "10"


def test_recommend_refuses_a_run_without_a_sweep(results_dir: Path) -> None:
    rundir = RunDir.create("20260101-000000-quick-abcd")
    rundir.write_manifest({"run_id": rundir.run_id})
    rundir.add_sample(Sample(run_id=rundir.run_id, cell=Cell(tier="host", workload="memory"),
                             repetition=0, metric="copy_MBps", value=1.0, unit="MB/s",
                             direction="higher", timestamp=time.time()))
    from bench.core.errors import BenchError

    with pytest.raises(BenchError, match="swept no tunable or cache setup"):
        recommend.analyse(rundir)


# -- the runner's hook -----------------------------------------------------------------------
class MemoryGuest:
    """A stand-in for a VM the kvm tier cannot start here: its own small 'kernel' in a dict,
    reached only through the Instance calls the hook uses (exec of cat/test/the writer)."""

    def __init__(self) -> None:
        from bench.core.limits import Limits
        from bench.tiers.base import InstanceSpec

        self.spec = InstanceSpec(role="main", limits=Limits())
        self.files = {"/proc/sys/vm/dirty_background_ratio": "10\n",
                      "/proc/sys/vm/dirty_background_bytes": "0\n",
                      "/sys/block/vda/queue/read_ahead_kb": "128\n"}
        self.calls: list[list[str]] = []

    def exec(self, argv: list[str], timeout: float) -> object:
        from bench.core.errors import CommandError
        from bench.core.procs import Completed

        self.calls.append(argv)
        if argv[0] == "cat":
            return Completed(argv, 0, self.files[argv[1]], "", 0.0)
        if argv[0] == "test":
            if argv[2] not in self.files:
                raise CommandError(argv, 1, "")
            return Completed(argv, 0, "", "", 0.0)
        if argv[:2] == ["python3", "-c"] and "os.write" in argv[2]:
            self.files[argv[4]] = argv[5]  # [.., pattern, path, text]
            return Completed(argv, 0, "", "", 0.0)
        if argv[:2] == ["python3", "-c"]:  # the guest's scratch device
            return Completed(argv, 0, "vda\n", "", 0.0)
        raise AssertionError(argv)

    def scratch_dir(self) -> str:
        return "/scratch"


def _hook(tmp_path: Path, text: str, tiers: list[str]) -> tuple[object, RunDir]:
    from bench.tune.hook import TuningHook

    scen = scenario_mod.parse(text, "s.yaml")
    rundir = RunDir.create("20260101-000000-s-0001")
    rundir.write_manifest({"run_id": rundir.run_id})
    return TuningHook(scen, rundir, tiers, lambda _: None), rundir


def test_kvm_sets_guest_local_values_inside_the_guest(
        root: Path, state: Path, results_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_SYSFS_ROOT", str(root))
    hook, rundir = _hook(tmp_path, SCENARIO + """
sweep:
  tunables: {vm.dirty_background_ratio: [2], block.read_ahead_kb: [1024]}
  device: vda
""", ["host", "kvm"])
    hook.start(tmp_path)  # type: ignore[attr-defined]
    guest = MemoryGuest()
    for setting in ({"vm.dirty_background_ratio": 2}, {"block.read_ahead_kb": 1024}):
        cell = Cell(tier="kvm", workload="disk.fio", tunables=setting)
        hook.before_run(cell, object(), guest, None)  # type: ignore[attr-defined]
        meta = hook.after_run(cell)  # type: ignore[attr-defined]
        assert "inside the guest" in next(iter(meta["tuning"].values()))["set"]
    # the guest got the values; the host (the fake root) was never touched
    assert guest.files["/sys/block/vda/queue/read_ahead_kb"] == "1024"
    assert guest.files["/proc/sys/vm/dirty_background_ratio"].strip() == "10"  # put back
    assert read(root, "proc/sys/vm/dirty_background_ratio") == "10"
    assert read(root, "sys/block/vda/queue/read_ahead_kb") == "128"
    cell = Cell(tier="host", workload="disk.fio", tunables={"vm.dirty_background_ratio": 2})
    hook.before_run(cell, object(), None, None)  # type: ignore[attr-defined]
    meta = hook.after_run(cell)  # type: ignore[attr-defined]
    assert meta["tuning"]["vm.dirty_background_ratio"]["set"] == \
        "on the host, shared by every tier of this run that runs on the host's kernel (host)"
    assert read(root, "proc/sys/vm/dirty_background_ratio") == "2"
    hook.finish()  # type: ignore[attr-defined]
    assert read(root, "proc/sys/vm/dirty_background_ratio") == "10"
    tuning = rundir.manifest()["tuning"]
    assert tuning["differs_after"] == {}
    assert tuning["writes"]["vm.dirty_background_ratio (kvm main)"] == 2
    assert "kvm tier sets its own copy inside the guest" in tuning["shared"]


def test_the_runners_start_restores_a_killed_runs_values(
        root: Path, state: Path, results_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _killed_writer(root, state, "thp")
    monkeypatch.setenv("BENCH_SYSFS_ROOT", str(root))
    hook, _ = _hook(tmp_path, SCENARIO, ["host"])  # a run without a sweep recovers too
    hook.start(tmp_path)  # type: ignore[attr-defined]
    _assert_original(root)
    assert journal_mod.sessions(state) == []


def test_bench_tune_apply_and_restore_from_the_command_line(
        root: Path, state: Path, tmp_path: Path) -> None:
    env = {**os.environ, "BENCH_SYSFS_ROOT": str(root), "BENCH_TUNE_STATE_DIR": str(state),
           "BENCH_LOCK_PATH": str(tmp_path / "bench.lock")}

    def bench(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bench.cli", "tune", *args], env=env,
                              capture_output=True, text=True, cwd=REPO, timeout=120)

    refused = bench("apply", "/etc/passwd=1")
    assert refused.returncode == 2
    assert "/etc/passwd is not a path in the tunables catalog" in refused.stdout
    refused = bench("apply", "vm.swappiness=10", "vm.dirty_background_ratio=70")
    assert refused.returncode == 2 and "outside the safe range 1..50" in refused.stdout
    assert read(root, "proc/sys/vm/swappiness") == "60"  # nothing written when one is refused
    done = bench("apply", "vm.dirty_background_ratio=70", "--allow-unsafe",
                 "/sys/block/vda/queue/read_ahead_kb=512")
    assert done.returncode == 0, done.stdout + done.stderr
    assert read(root, "proc/sys/vm/dirty_background_ratio") == "70"
    assert read(root, "sys/block/vda/queue/read_ahead_kb") == "512"
    assert "applied by `bench tune apply`" in bench("show", "--device", "vda").stdout
    done = bench("restore")
    assert done.returncode == 0 and "2 value(s) restored" in done.stdout
    assert read(root, "proc/sys/vm/dirty_background_ratio") == "10"
    assert read(root, "sys/block/vda/queue/read_ahead_kb") == "128"


class _BcacheShell(_RecordingShell):
    """bcache as 6.1 has it: after `detach` the superblock says "no cache" at once, but the
    kernel refuses `attach` (EINVAL, "already attached") until it has let go of the set."""

    def __init__(self, refusals: int) -> None:
        super().__init__()
        self.state, self.refusals = "clean", refusals

    def read(self, path: str) -> str:
        return self.state if path.endswith("/state") else ""

    def write(self, path: str, text: str) -> None:
        super().write(path, text)
        if path.endswith("/detach"):
            self.state = "no cache"
        elif path.endswith("/attach"):
            if self.refusals:
                self.refusals -= 1
                raise OSError(22, "Invalid argument")
            self.state = "clean"


def test_emptying_bcache_attaches_again_once_the_kernel_lets_go(tmp_path: Path) -> None:
    from bench.tune.cache.emptying import empty_cache

    lab, name = _bcache_lab(tmp_path, "0\n")
    built = lab.built[name]
    built.details["cache_set"] = "/sys/fs/bcache/1234-abcd"
    shell = _BcacheShell(refusals=2)
    empty_cache(shell, built)
    attaches = [a for a in shell.argvs if a[0] == "write" and a[1].endswith("/attach")]
    assert len(attaches) == 3 and attaches[-1][2] == "1234-abcd" and shell.state == "clean"


class _SmqShell(_RecordingShell):
    """dm-cache whose smq policy promotes part of what is missed on each warm-up pass."""

    def __init__(self, misses_per_pass: list[int]) -> None:
        super().__init__()
        self.misses_per_pass, self.hits, self.misses = misses_per_pass, 0, 0

    def run(self, argv: list[str], timeout: float = 60, check: bool = True) -> str:
        super().run(argv, timeout, check)
        if argv[-1] == "read" and self.misses_per_pass:  # one pass of the warm-up script
            missed = self.misses_per_pass.pop(0)
            self.hits, self.misses = self.hits + 32 - missed, self.misses + missed
        if argv[:2] == ["dmsetup", "status"]:
            return (f"0 2097152 cache 8 27/4096 128 10/7936 {self.hits} {self.misses} "
                    "0 0 0 10 0 1 writeback 2 migration_threshold 2048 smq 0 rw -")
        return ""


def test_warming_reads_until_a_pass_is_served_from_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.tune.cache import state as state_mod

    monkeypatch.setattr(state_mod.time, "sleep", lambda _: None)
    name = "lvmcache-writeback"
    recipe, variant = cache.setups()[name]
    lab = cache.CacheLab("test-warm", tmp_path, state_dir=tmp_path)
    lab.shell = _SmqShell([32, 20, 6, 0, 0])
    lab.built[name] = cache.Built(setup=name, recipe=recipe, variant=variant, top="/dev/x",
                                  mount=tmp_path, slow="/dev/s", fast="/dev/f", dm_name="c",
                                  details={"options": {}, "cache_meta": "/dev/m"})
    monkeypatch.setattr(lab, "make_cold", lambda _: None)
    lab.make_warm(name)
    assert lab.built[name].details["warm"] == {"passes": 4, "last_pass_miss_ratio": 0.0}
    lab.shell = _SmqShell([32] * 10)  # a cache that never warms: bounded, and says so
    lab.make_warm(name, passes=3)
    assert lab.built[name].details["warm"] == {"passes": 3, "last_pass_miss_ratio": 1.0}
