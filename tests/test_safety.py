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
    from bench.cli.main import cleanup_dead_runs

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
