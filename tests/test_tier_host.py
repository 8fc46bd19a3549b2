"""The host tier's chroot mounts live in a mount namespace of bench's own (kernel/mountns.py):
the machine's mount table never shows them, while commands inside see the same chroot and
keep every other namespace, bench's session, autogroup and cgroup."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.core import cprogram, hostlock, safefs
from bench.core.errors import CommandError
from bench.core.image import Image
from bench.core.limits import Limits
from bench.core.rundir import new_run_id
from bench.kernel import mountns, sysmount
from bench.tiers.base import InstanceSpec, TierContext
from bench.tiers.host import HostTier

pytestmark = [pytest.mark.integration, pytest.mark.part("host")]
SHARED = ("pid", "net", "uts", "ipc", "cgroup", "user")
# what a command inside reports: namespaces, session, autogroup, cgroups, its mount points
SHOW = ["sh", "-c", "for n in " + " ".join([*SHARED, "mnt"]) + "; do readlink /proc/self/ns/$n; "
        "done; echo sid $(cut -d' ' -f6 /proc/self/stat); "
        "echo group $(cut -d' ' -f1 /proc/self/autogroup); "
        "grep -v ':pids:' /proc/self/cgroup | sort | tr '\\n' ' '; echo; "
        "cut -d' ' -f2 /proc/self/mounts | sort -u | tr '\\n' ' '; echo; test -x /usr/bin/fio"]


def host_mounts() -> list[str]:
    """The test process's own mount table: the machine's (bench's tests run there)."""
    return Path("/proc/self/mounts").read_text().splitlines()


def show_self() -> list[str]:
    ns = [os.readlink(f"/proc/self/ns/{n}") for n in [*SHARED, "mnt"]]
    cgroups = " ".join(sorted(line for line in Path("/proc/self/cgroup").read_text().splitlines()
                              if ":pids:" not in line))
    # empty where the kernel runs without autogroups (booted with noautogroup)
    autogroup = " ".join(["group", *Path("/proc/self/autogroup").read_text().split()[:1]])
    return [*ns, f"sid {os.getsid(0)}", autogroup, cgroups]


@pytest.fixture(scope="module")
def host(bench_image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostTier]:
    work = tmp_path_factory.mktemp("host-ns")
    tier = HostTier()
    tier.prepare(TierContext(new_run_id("hostns"), bench_image, work, work))
    yield tier
    tier.finish()
    assert not sysmount.mounts_under(work)
    assert mountns.holders(work) == [] and not os.path.exists(f"/proc/{tier.holder.pid}")


def test_the_hosts_mount_table_shows_none_of_the_tiers_mounts(host: HostTier) -> None:
    work = str(host.ctx.workdir)
    assert not [line for line in host_mounts() if work in line]
    assert not sysmount.mounts_under(work)
    assert os.listdir(host.root) == []  # the host sees the empty directory the root is
    instance = host.start(InstanceSpec("main", Limits()))
    try:
        lines = [line.strip() for line in instance.exec(SHOW, timeout=30).stdout.splitlines()]
        instance.exec(["sh", "-c", "echo hello > /tmp/f && echo data > /scratch/f"], timeout=30)
        assert instance.read_file("/tmp/f") == b"hello\n"  # read through the holder's root
        secret = host.scratch.parent / "host-secret"  # a file of the host, not in the image
        secret.write_text("host only\n")
        instance.exec(["ln", "-s", str(secret), "/tmp/planted"], timeout=30)
        with pytest.raises(FileNotFoundError):  # symlinks resolve inside the root
            instance.read_file("/tmp/planted")
    finally:
        instance.stop()
    assert (host.scratch / "f").read_text() == "data\n"  # /scratch is the host's directory
    ours = show_self()
    # the same namespaces but the mount one, bench's session, autogroup and cgroups
    assert lines[:len(SHARED)] == ours[:len(SHARED)]
    assert lines[len(SHARED)] != ours[len(SHARED)]
    assert lines[len(SHARED) + 1:len(SHARED) + 4] == ours[len(SHARED) + 1:], lines
    # the chroot's view: the image's root and its mounts, nothing of the host's other mounts
    points = set(lines[-1].split())
    assert {"/", "/proc", "/sys", "/sys/fs/cgroup", "/dev", "/tmp", "/scratch"} <= points
    assert not [p for p in points if p.startswith(("/var/", "/run/", "/mnt/"))], points
    assert not [line for line in host_mounts() if work in line]
    assert "mount namespace of bench's own" in host.metadata()["mounts"]


def test_started_spawned_and_guarded_commands_run_in_it_too(host: HostTier) -> None:
    ours = show_self()
    n = len(SHARED)
    command = host.start(InstanceSpec("cmd", Limits(), command=SHOW))
    assert command.wait(30) == 0, command.output()
    lines = [line.strip() for line in command.output().splitlines()]
    assert lines[:n] == ours[:n] and lines[n] != ours[n] and lines[n + 1:n + 4] == ours[n + 1:]
    guarded = host.start(InstanceSpec("guarded", Limits(), guard=Limits(pids=30)))
    try:
        shown = [line.strip() for line in guarded.exec(SHOW, timeout=30).stdout.splitlines()]
        assert shown[:n + 3] == lines[:n + 3]  # same namespaces (mount one too), session, group
        assert "bench-guard" in guarded.exec(["cat", "/proc/self/cgroup"], timeout=30).stdout
        server = guarded.spawn(["sh", "-c", "readlink /proc/self/ns/mnt; exec sleep 30"])
        (log,) = host.ctx.workdir.glob("guarded-bg-*.log")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "mnt:" not in log.read_text():
            time.sleep(0.05)
        server.stop()
        assert log.read_text().split() == [shown[n]]
    finally:
        guarded.stop()


def test_a_host_directory_bound_as_scratch_shows_inside_only(host: HostTier,
                                                             tmp_path: Path) -> None:
    """An SSD-cache setup is built on the host and bound over the instances' /scratch."""
    (tmp_path / "cache-marker").write_text("cache\n")
    instance = host.start(InstanceSpec("main", Limits()))
    try:
        host.bind_scratch(tmp_path)
        try:
            assert instance.exec(["cat", "/scratch/cache-marker"], timeout=30).stdout == "cache\n"
            assert not [line for line in host_mounts() if str(tmp_path) in line]
        finally:
            host.unbind_scratch()
        after = instance.exec(["ls", "/scratch"], timeout=30).stdout  # the tier's own again
        assert "cache-marker" not in after and sorted(after.split()) == sorted(
            p.name for p in host.scratch.iterdir())
    finally:
        instance.stop()


def test_commands_enter_through_the_static_helper_or_nsenter(
        host: HostTier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bench-mntexec (gcc is here) starts them, failing as chroot(8) did; without gcc, nsenter."""
    assert host.holder.entry == "bench-mntexec", host.holder.entry
    instance = host.start(InstanceSpec("main", Limits()))
    with pytest.raises(CommandError) as missing:
        instance.exec(["no-such-tool"], timeout=30)
    assert missing.value.returncode == 127 and "no-such-tool" in missing.value.stderr
    monkeypatch.setattr(cprogram, "build", lambda name, file: (None, "gcc not found"))
    (tmp_path / "root").mkdir()
    holder = mountns.MountHolder(tmp_path / "root", [
        {"bind": True, "source": str(host.ctx.image.rootfs), "target": "/", "readonly": True}])
    try:
        argv = holder.argv(["cat", "/etc/debian_version"])
        assert Path(argv[0]).name == "nsenter" and holder.entry.startswith("nsenter")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and done.stdout.strip(), done.stderr
    finally:
        holder.stop()


def test_a_mount_that_fails_is_one_error_and_leaves_no_holder(tmp_path: Path) -> None:
    with pytest.raises(OSError, match=r"mount /no/such/image on .*No such file"):
        mountns.MountHolder(tmp_path, [{"bind": True, "source": "/no/such/image", "target": "/"}])
    assert mountns.holders(tmp_path) == []


def test_cleanup_kills_a_holder_left_over(bench_image: Image) -> None:
    """`bench cleanup` finds a holder by its command line (the root it holds) and kills it."""
    run_id = new_run_id("hostleft")
    work = hostlock.work_root() / run_id
    safefs.secure_dir(work)
    safefs.mark(work, run_id)  # a dead run's work directory: marked, no process holds it
    tier = HostTier()
    try:
        tier.prepare(TierContext(run_id, bench_image, work / "host", work))
        pid = tier.holder.pid
        assert mountns.holders(work) == [pid]
        removed = HostTier().cleanup(run_id)
        assert f"mount namespace holder {pid}" in removed
        tier.holder.proc.wait(10)
        assert mountns.holders(work) == []
    finally:
        tier.finish()
        safefs.remove_marked(work)
    assert not work.exists()
