"""libvirt's own top-level chains (LIBVIRT_INP, ... and the jumps to them), made by the first
network start of a libvirtd's life: bench journals them when its network start makes them, and
removes them only when libvirtd is gone (a live libvirtd adds every later network's rules to
them, so removing them under it breaks its next network start). Everything here happens in a
throwaway network namespace, with a private libvirtd of the test's own (tests/daemons.py): the
machine's rules and libvirtd are never touched."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import daemons

CHILD = """
import sys, time
from bench.tiers.kvm import libvirtd
from bench.tiers.kvm.net import RunNetwork
network = RunNetwork(libvirtd.connect(), sys.argv[1])
network.create()
print(network.subnet, flush=True)
time.sleep(600)
"""

OTHER_NETWORK = """<network><name>not-bench</name><forward mode='nat'/><bridge name='bkother0'/>
<ip address='192.168.251.1' netmask='255.255.255.0'/></network>"""


def in_ns(ns: str, argv: list[str], env: dict[str, str] | None = None,
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], env=env, capture_output=True,
                          text=True, timeout=300)


def rules(ns: str) -> dict[str, list[str]]:
    """Every chain and rule of the namespace (iptables -S of each table, v4 and v6)."""
    return {f"{binary} {table}": in_ns(ns, [binary, "-t", table, "-S"]).stdout.splitlines()
            for binary in ("iptables", "ip6tables") for table in ("filter", "nat", "mangle")}


def libvirt_lines(ns: str) -> list[str]:
    return [line for lines in rules(ns).values() for line in lines if "LIBVIRT_" in line]


def other_network_starts(ns: str, url: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """Another user's NAT network on the same libvirtd: started, then destroyed."""
    xml = directory / "other.xml"
    xml.write_text(OTHER_NETWORK)
    virsh = ["virsh", "-c", url]
    subprocess.run([*virsh, "net-create", str(xml)], capture_output=True, text=True,
                   timeout=120)
    done = subprocess.run([*virsh, "net-info", "not-bench"], capture_output=True, text=True,
                          timeout=60)
    subprocess.run([*virsh, "net-destroy", "not-bench"], capture_output=True, timeout=60)
    return done


@pytest.fixture
def netns_libvirtd() -> Iterator[tuple[str, daemons.Private, Path]]:
    if shutil.which("libvirtd") is None or shutil.which("iptables") is None:
        pytest.skip("needs libvirtd and iptables (`bench setup`)")
    ns = f"bench-chains-{secrets.token_hex(3)}"
    root = Path(tempfile.mkdtemp(prefix="bfc-", dir="/var/tmp"))  # a short socket path
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        with daemons.libvirtd(root, netns=ns) as daemon:
            yield ns, daemon, root
    finally:
        subprocess.run(["ip", "netns", "del", ns], timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def killed_run(ns: str, env: dict[str, str]) -> tuple[str, str]:
    """A run's network made in the namespace, then its process SIGKILLed: (run id, subnet)."""
    run_id = f"20260101-000000-chains-{secrets.token_hex(2)}"
    child = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", CHILD, run_id],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        subnet = child.stdout.readline().strip() if child.stdout else ""
        assert subnet, child.stderr.read() if child.stderr else ""
        assert "-N LIBVIRT_INP" in libvirt_lines(ns)
    finally:
        child.kill()
        child.wait()
    return run_id, subnet


def test_libvirts_chains_made_by_a_killed_run_go_once_libvirtd_is_gone(
        netns_libvirtd: tuple[str, daemons.Private, Path], tmp_path: Path) -> None:
    """...and chains that were there before a run (another user's network made them) stay."""
    ns, daemon, root = netns_libvirtd
    work = tmp_path / "work"
    work.mkdir(mode=0o755)
    env = {**os.environ, "BENCH_LIBVIRT_URI": daemon.url, "BENCH_WORK_DIR": str(work),
           "BENCH_TUNE_STATE_DIR": str(tmp_path / "state"),
           "BENCH_LOCK_PATH": str(tmp_path / "bench.lock")}
    before = rules(ns)
    assert not libvirt_lines(ns), "a fresh namespace has no libvirt chains"
    run_id, subnet = killed_run(ns, env)
    made = libvirt_lines(ns)
    assert "-A INPUT -j LIBVIRT_INP" in made and "-A POSTROUTING -j LIBVIRT_PRT" in made, made
    cleanup = [sys.executable, "-m", "bench.cli", "cleanup", "--run", run_id]
    done = in_ns(ns, cleanup, env)
    assert done.returncode == 0, done.stdout + done.stderr
    journal = tmp_path / "state" / "host-settings" / f"journal-fw-kvm-{run_id}.jsonl"
    # libvirtd lives: the run's own rules are gone, libvirt's chains stay (empty), and
    # another user's network still starts on it
    assert not [line for line in libvirt_lines(ns) if subnet in line or "-A LIBVIRT_" in line]
    assert "-N LIBVIRT_INP" in libvirt_lines(ns)
    assert "Active:         yes" in other_network_starts(ns, daemon.url, root).stdout
    # libvirtd stops: the next cleanup removes the chains bench's network made, and only them
    daemon.kill()
    done = in_ns(ns, cleanup, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert rules(ns) == before
    assert not journal.exists()
    # a new libvirtd makes them again on its first network start
    daemon.start()
    assert "Active:         yes" in other_network_starts(ns, daemon.url, root).stdout
    assert "-N LIBVIRT_INP" in libvirt_lines(ns)
    # chains that were there before a run are not its own: its cleanup leaves them
    before = rules(ns)
    run_id, _ = killed_run(ns, env)
    done = in_ns(ns, [sys.executable, "-m", "bench.cli", "cleanup", "--run", run_id], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert rules(ns) == before
    assert not list((tmp_path / "state" / "host-settings").glob("journal-fw-*.jsonl"))
