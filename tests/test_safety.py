"""Root safety: what a local user plants in a shared directory (a symlink at the lock file, a
foreign or linked work directory, a catalog of their own) must not make root bench write,
truncate, chmod or delete anything else. Each test checks that the target of the attack is
unchanged (its content hash and mode), not only that a message appeared."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.core import hostlock
from bench.core.errors import BenchError

NOBODY = 65534


def fingerprint(path: Path) -> tuple[str, int, int]:
    """Content hash (of every file below a directory), mode and owner."""
    st = path.stat()
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        digest.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        digest.update(f.read_bytes())
    return digest.hexdigest(), st.st_mode, st.st_uid


def bench(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "work"
    root.mkdir(mode=0o755)
    monkeypatch.setenv("BENCH_WORK_DIR", str(root))
    monkeypatch.delenv("BENCH_LOCK_PATH", raising=False)
    return root


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.conf"
    path.write_text("precious = true\n")
    path.chmod(0o600)
    return path


def test_a_symlink_at_the_host_lock_is_refused_and_its_target_untouched(
        work: Path, victim: Path) -> None:
    (work / ".lock").symlink_to(victim)
    before = fingerprint(victim)
    done = bench({**os.environ}, "cleanup", "--run", "no-such-run-safety")
    assert done.returncode != 0
    assert "symlink" in done.stdout + done.stderr
    assert fingerprint(victim) == before


def test_a_hard_link_or_foreign_lock_file_is_refused(work: Path, victim: Path) -> None:
    os.link(victim, work / ".lock")
    before = fingerprint(victim)
    with pytest.raises(BenchError, match="hard links"), hostlock.hold("x"):
        pass
    assert fingerprint(victim) == before
    (work / ".lock").unlink()
    (work / ".lock").write_text("theirs")
    os.chown(work / ".lock", NOBODY, NOBODY)
    with pytest.raises(BenchError, match="belongs to uid"), hostlock.hold("x"):
        pass
    assert (work / ".lock").read_text() == "theirs"


def test_a_planted_run_directory_is_refused(work: Path, tmp_path: Path) -> None:
    target = tmp_path / "etc-like"
    target.mkdir(mode=0o755)
    (target / "passwd").write_text("root:x:0:0\n")
    before = fingerprint(target)
    (work / "20260101-000000-quick-aaaa").symlink_to(target)
    with pytest.raises(BenchError, match="symlink"):
        hostlock.RunLock("20260101-000000-quick-aaaa")
    foreign = work / "20260101-000000-quick-bbbb"
    foreign.mkdir()
    foreign.chmod(0o777)
    os.chown(foreign, NOBODY, NOBODY)
    with pytest.raises(BenchError, match="belongs to uid"):
        hostlock.RunLock(foreign.name)
    assert fingerprint(target) == before
    assert stat_of(foreign) == (0o777, NOBODY)  # neither chmod-ed nor chown-ed


def stat_of(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_mode & 0o7777, st.st_uid


def test_cleanup_removes_only_dead_runs_bench_made(work: Path, tmp_path: Path) -> None:
    from bench.cli.host import cleanup_dead_runs

    users = work / "not-a-run"  # a directory someone else made there, looking like a run
    users.mkdir()
    (users / "data").write_text("mine\n")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep").write_text("keep\n")
    (work / "20260101-000000-quick-cccc").symlink_to(target)
    before = fingerprint(users), fingerprint(target)
    cleanup_dead_runs()
    assert users.is_dir() and (work / "20260101-000000-quick-cccc").is_symlink()
    assert (fingerprint(users), fingerprint(target)) == before

    dead = hostlock.RunLock("20260101-000000-quick-dddd")
    (dead.path / "leftover").write_text("x")
    dead.release(remove=False)  # as if SIGKILLed: its directory stays, its lock is gone
    live = hostlock.RunLock("20260101-000000-quick-eeee")
    try:
        cleanup_dead_runs()
        assert not dead.path.exists()
        assert live.path.is_dir()  # a run still going is spared
        assert (fingerprint(users), fingerprint(target)) == before
    finally:
        live.release()
    assert not live.path.exists()


# -- the tunables catalog decides what root writes ----------------------------------------------
def _rogue_catalog(directory: Path, path: str) -> Path:
    """The shipped catalog with one more entry, kernel.rogue, naming `path`."""
    import yaml

    from bench.tune import catalog as catalog_mod

    directory.mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load((catalog_mod.tuning_dir() / "tunables.yaml").read_text())
    data["tunables"]["kernel.rogue"] = {
        "path": path, "type": "int", "valid": [0, 1], "safe": [0, 1], "sweep": [0],
        "scope": "host-global", "tiers": ["host"], "risk": "low", "tuned": "sysctl",
        "doc": "https://docs.kernel.org/", "description": "not bench's"}
    (directory / "tunables.yaml").write_text(yaml.safe_dump(data))
    return directory / "tunables.yaml"


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    from tests.tune_fake import make_root

    root = make_root(tmp_path)
    for rel in ("proc/sys/kernel/core_uses_pid", "proc/sys/kernel/core_pattern",
                "proc/sys/kernel/modprobe", "sys/kernel/uevent_helper"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("1\n")
    return root


def test_a_catalog_from_the_environment_or_cwd_is_not_used(
        tmp_path: Path, fake_root: Path) -> None:
    rogue = _rogue_catalog(tmp_path / "evil" / "tuning", "/proc/sys/kernel/core_uses_pid")
    target = fake_root / "proc/sys/kernel/core_uses_pid"
    before = fingerprint(target)
    env = {**os.environ, "BENCH_SYSFS_ROOT": str(fake_root), "BENCH_TUNING_DIR": str(rogue.parent),
           "BENCH_TUNE_STATE_DIR": str(tmp_path / "state"),
           "BENCH_LOCK_PATH": str(tmp_path / "bench.lock")}
    done = subprocess.run([sys.executable, "-m", "bench.cli", "tune", "apply",
                           "kernel.rogue=0"], env=env, capture_output=True, text=True,
                          cwd=rogue.parent.parent, timeout=120)
    assert done.returncode != 0
    assert fingerprint(target) == before


@pytest.mark.parametrize("path", ["/proc/sys/kernel/core_uses_pid",
                                  "/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe",
                                  "/sys/kernel/uevent_helper"])
def test_an_explicit_catalog_cannot_name_paths_outside_the_allowlist(
        tmp_path: Path, fake_root: Path, path: str) -> None:
    rogue = _rogue_catalog(tmp_path / "trusted", path)
    target = fake_root / path.lstrip("/")
    before = fingerprint(target)
    env = {**os.environ, "BENCH_SYSFS_ROOT": str(fake_root),
           "BENCH_TUNE_STATE_DIR": str(tmp_path / "state"),
           "BENCH_LOCK_PATH": str(tmp_path / "bench.lock")}
    done = subprocess.run([sys.executable, "-m", "bench.cli", "tune", "apply", "--catalog",
                           str(rogue), "kernel.rogue=0"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "outside what bench may write" in done.stdout
    assert fingerprint(target) == before


def test_an_explicit_catalog_must_be_root_owned_and_not_writable_by_others(
        tmp_path: Path, fake_root: Path) -> None:
    from bench.tune import catalog as catalog_mod
    from bench.tune.catalog import TuneError

    catalog = _rogue_catalog(tmp_path / "cat", "/proc/sys/vm/swappiness")
    catalog.chmod(0o666)
    with pytest.raises(TuneError, match="writable by others"):
        catalog_mod.load(catalog)
    catalog.chmod(0o644)
    os.chown(catalog, NOBODY, NOBODY)
    with pytest.raises(TuneError, match="not root"):
        catalog_mod.load(catalog)
    os.chown(catalog, 0, 0)
    catalog.parent.chmod(0o777)  # anyone could swap the file
    with pytest.raises(TuneError, match="writable by others"):
        catalog_mod.load(catalog)


def test_a_symlink_in_the_tree_cannot_lead_a_write_outside_the_allowlist(
        tmp_path: Path, fake_root: Path) -> None:
    """/sys/block/evil -> a directory under /sys whose queue/read_ahead_kb is really
    /sys/kernel/uevent_helper: still under /sys, but not a path bench may write."""
    from bench.tune import catalog as catalog_mod
    from bench.tune.catalog import TuneError
    from bench.tune.sysfs import HostFs

    target = fake_root / "sys/kernel/uevent_helper"
    fake_queue = fake_root / "sys/kernel/x/queue"
    fake_queue.mkdir(parents=True)
    (fake_queue / "read_ahead_kb").symlink_to(target)
    (fake_root / "sys/block/evil").symlink_to("../kernel/x")
    before = fingerprint(target)
    tunable = catalog_mod.load().get("block.read_ahead_kb")
    with pytest.raises(TuneError, match="outside"):
        HostFs(fake_root).write(tunable, "evil", "4096")
    assert fingerprint(target) == before


def test_the_in_instance_writer_refuses_without_assert(tmp_path: Path, victim: Path) -> None:
    """The writer run inside an instance checks the resolved path with an `if`, so `python -O`
    (which drops asserts) cannot skip it. Its kernel here: a private mount namespace whose /sys
    is a tmpfs holding a planted symlink out of /sys (the host's /sys is never touched)."""
    from bench.core.procs import Completed
    from bench.tune import catalog as catalog_mod
    from bench.tune.catalog import TuneError
    from bench.tune.sysfs import InstanceFs

    setup = ("mount -t tmpfs none /sys && mkdir -p /sys/block/evil/queue && "
             f"ln -s {victim} /sys/block/evil/queue/read_ahead_kb && exec \"$@\"")

    class PrivateSys:
        def exec(self, argv: list[str], timeout: float) -> Completed:
            done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                                   setup, "sh", *argv], capture_output=True, text=True,
                                  env={**os.environ, "PYTHONOPTIMIZE": "1"}, timeout=timeout)
            if done.returncode:
                raise BenchError(f"exit {done.returncode}: {done.stderr}", "")
            return Completed(argv, 0, done.stdout, done.stderr, 0.0)

    before = fingerprint(victim)
    target = InstanceFs(PrivateSys(), "private mount namespace")  # type: ignore[arg-type]
    with pytest.raises(TuneError):
        target.write(catalog_mod.load().get("block.read_ahead_kb"), "evil", "4096")
    assert fingerprint(victim) == before


# -- host settings the ns tier changes: journaled, restored after SIGKILL ------------------------
BRIDGE_CHILD = """
import sys, time
from bench.tiers.ns.net import Bridge
bridge = Bridge(sys.argv[1])
bridge.create()
print(bridge.subnet, flush=True)
time.sleep(600)
"""


def _in_ns(ns: str, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], env=env, capture_output=True,
                          text=True, timeout=300)


def test_ip_forward_and_forward_rules_are_restored_after_sigkill(
        tmp_path: Path, work: Path) -> None:
    """In a throwaway network namespace (forwarding is per namespace: the host's is never
    touched): a bridge made with forwarding off, its process SIGKILLed, then `bench cleanup`."""
    import secrets

    ns = f"bench-safety-{secrets.token_hex(3)}"
    run_id = f"20260101-000000-safety-{secrets.token_hex(2)}"
    env = {**os.environ, "BENCH_TUNE_STATE_DIR": str(tmp_path / "state"),
           "BENCH_LOCK_PATH": str(tmp_path / "bench.lock"), "BENCH_WORK_DIR": str(work)}
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        forward = ["cat", "/proc/sys/net/ipv4/ip_forward"]
        _in_ns(ns, ["sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward"], env)
        rules_before = _in_ns(ns, ["iptables-save"], env).stdout.count("-A ")
        assert _in_ns(ns, forward, env).stdout.strip() == "0"
        child = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c",
                                  BRIDGE_CHILD, run_id], env=env, stdout=subprocess.PIPE,
                                 text=True)
        try:
            subnet = child.stdout.readline().strip() if child.stdout else ""
            assert subnet, "the bridge was not made"
            assert _in_ns(ns, forward, env).stdout.strip() == "1"
            rules = _in_ns(ns, ["iptables", "-S", "FORWARD"], env).stdout
            journal = tmp_path / "state" / "host-settings" / f"journal-fw-ns-{run_id}.jsonl"
            assert len(journal.read_text().splitlines()) == 3, "each rule journaled first"
        finally:
            child.kill()
            child.wait()
        assert _in_ns(ns, forward, env).stdout.strip() == "1"  # SIGKILL left it on
        done = _in_ns(ns, [sys.executable, "-m", "bench.cli", "cleanup", "--run", run_id], env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert _in_ns(ns, forward, env).stdout.strip() == "0"
        assert _in_ns(ns, ["iptables-save"], env).stdout.count("-A ") == rules_before
        assert not journal.exists()
        # while it ran, FORWARD accepted only the run's traffic: from its subnet out of its
        # bridge, and into it only replies (conntrack) to connections its containers opened
        assert f"-s {subnet} -i bn" in rules
        assert f"-d {subnet} -o bn" in rules and "RELATED,ESTABLISHED" in rules
        assert not [line for line in rules.splitlines()
                    if "-o bn" in line and "ESTABLISHED" not in line]
    finally:
        subprocess.run(["ip", "netns", "del", ns], timeout=30)


FORWARDING_CHILD = """
import sys, time
from bench.tune.hostnet import Forwarding
Forwarding(sys.argv[1]).enable()
print("on", flush=True)
time.sleep(600)
"""


def test_ip_forward_is_journaled_and_restored_once_its_last_user_is_killed(
        tmp_path: Path, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a fake procfs root: two users (a kvm and an ns run) turn forwarding on and are
    SIGKILLed one after the other; the original comes back only when neither is alive (at the
    next run's start here)."""
    from bench.cli.host import cleanup_dead_runs
    from bench.tune import hostnet
    from bench.tune.journal import Entry

    ip_forward = tmp_path / "root" / "proc/sys/net/ipv4/ip_forward"
    ip_forward.parent.mkdir(parents=True)
    ip_forward.write_text("0\n")
    monkeypatch.setenv("BENCH_SYSFS_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("BENCH_TUNE_STATE_DIR", str(tmp_path / "state"))
    env = {**os.environ}
    users = []
    try:
        for owner in ("kvm-run1", "ns-run2"):
            users.append(subprocess.Popen([sys.executable, "-c", FORWARDING_CHILD, owner],
                                          env=env, stdout=subprocess.PIPE, text=True))
            assert users[-1].stdout and users[-1].stdout.readline().strip() == "on"
        assert ip_forward.read_text() == "1"
        journal = tmp_path / "state" / "host-settings" / f"journal-sysctl-{hostnet.netns()}.jsonl"
        entries = [Entry.model_validate_json(line) for line in journal.read_text().splitlines()]
        assert [(e.name, e.original, e.written) for e in entries] == [
            ("net.ipv4.ip_forward", "0", "1")], "journaled once, by the first user"
        users[0].kill()
        users[0].wait()
        assert hostnet.recover() == [] and ip_forward.read_text() == "1", "one user is alive"
        users[1].kill()
        users[1].wait()
        assert cleanup_dead_runs() == ["host setting: net.ipv4.ip_forward restored to 0"]
        assert ip_forward.read_text() == "0" and not journal.exists()
    finally:
        for user in users:
            user.kill()
            user.wait()


def test_ip_forward_changed_by_another_user_during_a_run_is_left_as_they_set_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        ) -> None:
    """Under a fake procfs root: bench turns forwarding on, someone else (not bench) writes the
    file during the run; at teardown bench does not write over theirs, and says so."""
    from bench.tune import hostnet

    ip_forward = tmp_path / "root" / "proc/sys/net/ipv4/ip_forward"
    ip_forward.parent.mkdir(parents=True)
    ip_forward.write_text("0\n")
    monkeypatch.setenv("BENCH_SYSFS_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("BENCH_TUNE_STATE_DIR", str(tmp_path / "state"))
    user = hostnet.Forwarding("kvm-run1")
    user.enable()
    assert ip_forward.read_text() == "1"
    ip_forward.write_text("0\n")  # another program's own write, during the run
    theirs = fingerprint(ip_forward)
    released = user.release()
    assert fingerprint(ip_forward) == theirs, "bench wrote over another user's value"
    assert released == []
    said = capsys.readouterr().err
    assert "net.ipv4.ip_forward left at 0" in said and "another user changed it" in said
    assert not list((tmp_path / "state" / "host-settings").glob("journal-*.jsonl"))
    # unchanged since bench set it: restored as before
    user.enable()
    assert user.release() == ["net.ipv4.ip_forward restored to 0"]
    assert ip_forward.read_text() == "0"


def test_a_host_sysctl_outside_the_allowlist_or_behind_a_symlink_is_refused(
        tmp_path: Path, victim: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.tune.catalog import TuneError
    from bench.tune.hostnet import HostSysctls

    root = tmp_path / "root"
    (root / "proc/sys/net/ipv4").mkdir(parents=True)
    (root / "proc/sys/net/ipv4/ip_forward").symlink_to(victim)
    (root / "proc/sys/kernel").mkdir()
    (root / "proc/sys/kernel/core_pattern").write_text("core\n")
    monkeypatch.setenv("BENCH_SYSFS_ROOT", str(root))
    monkeypatch.setenv("BENCH_TUNE_STATE_DIR", str(tmp_path / "state"))
    before = fingerprint(victim)
    user = HostSysctls("run-x")
    try:
        for name in ("net.ipv4.ip_forward", "kernel.core_pattern"):
            with pytest.raises(TuneError, match="outside the subtrees"):
                user.set(name, "1")
    finally:
        user.release()
    assert fingerprint(victim) == before
    assert (root / "proc/sys/kernel/core_pattern").read_text() == "core\n"


# -- fault points are inert in normal runs -----------------------------------------------
def test_a_fault_mark_never_overwrites_an_existing_file(
        tmp_path: Path, victim: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.core import faults

    link = tmp_path / "mark-link"
    link.symlink_to(victim)
    before = fingerprint(victim)
    monkeypatch.setenv("BENCH_FAULT_AT", "tier.prepared")
    monkeypatch.setenv("BENCH_FAULT_WAIT", "0")
    for mark in (victim, link):
        monkeypatch.setenv("BENCH_FAULT_MARK", str(mark))
        faults._hits.clear()
        with pytest.raises(BenchError, match="exists already"):
            faults.point("tier.prepared")
        assert fingerprint(victim) == before
    monkeypatch.setenv("BENCH_FAULT_AT", "no.such.point")  # only the named points exist
    monkeypatch.setenv("BENCH_FAULT_MARK", str(tmp_path / "new-mark"))
    faults.point("no.such.point")
    assert not (tmp_path / "new-mark").exists()


# -- the image build verifies what it downloads --------------------------------------------------
def _fake_wheel(directory: Path) -> Path:
    """A wheel named like pyperf 2.11.0 that is not PyPI's (as a hostile mirror would serve)."""
    import zipfile

    directory.mkdir()
    wheel = directory / "pyperf-2.11.0-py3-none-any.whl"
    info = "pyperf-2.11.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pyperf/__init__.py", "PWNED = True\n")
        zf.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: pyperf\nVersion: 2.11.0\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: x\nRoot-Is-Purelib: true\n"
                                     "Tag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return wheel


def test_the_image_build_refuses_a_pyperf_wheel_that_is_not_the_pinned_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.core import image

    mirror = _fake_wheel(tmp_path / "mirror").parent
    rootfs = tmp_path / "rootfs"
    (rootfs / "usr/lib/python3.11").mkdir(parents=True)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(mirror))
    monkeypatch.setenv("PIP_CONSTRAINT", "")
    with pytest.raises(BenchError):
        image._install_pyperf(rootfs)
    assert not list(rootfs.rglob("pyperf"))  # nothing of it reached the image


def test_kvm_run_locks_in_run_lock_refuse_planted_links_and_directories(
        tmp_path: Path, victim: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """/run/lock is world-writable: a symlink at a run's lock, or a directory someone else
    made for bench's locks, is refused and its target left as it was."""
    from bench.tiers.kvm import runlock

    shared = tmp_path / "run-lock"
    shared.mkdir()
    shared.chmod(0o1777)
    monkeypatch.setenv("BENCH_KVM_LOCK_DIR", str(shared / "bench-kvm"))
    (shared / "bench-kvm").mkdir()
    (shared / "bench-kvm" / "run-a.lock").symlink_to(victim)
    before = fingerprint(victim)
    with pytest.raises(BenchError, match="symlink"):
        runlock.hold_run_lock("run-a")
    assert fingerprint(victim) == before
    held = runlock.hold_run_lock("run-b")
    try:
        assert runlock.run_is_live("run-b") and not runlock.run_is_live("run-a")
    finally:
        held.close()
    os.chown(shared / "bench-kvm", NOBODY, NOBODY)  # planted by another user
    with pytest.raises(BenchError, match="belongs to uid"):
        runlock.hold_run_lock("run-c")
    assert not (shared / "bench-kvm" / "run-c.lock").exists()
