"""`bench selftest`: does the measurement chain see a limit we inject ourselves?

On every available tier, three known limits are injected and measured with the same workloads a
run uses; each must come out within 5% of what was injected:

- CPU: a CFS quota of 0.5 CPU must halve single-thread sysbench events/s (interleaved with an
  unlimited instance, medians of a few runs);
- disk: a block I/O read throttle of 20 MiB/s must cap fio's O_DIRECT sequential read;
- network: a tbf qdisc of 200 Mbit/s on the host side of the instance's link must cap iperf3.
  tbf counts whole Ethernet frames, iperf3 counts TCP payload, so the expected goodput is the
  rate x MSS / frame size (1448 / 1514 at MTU 1500 with TCP timestamps).

On the host tier the limits are injected around the host's own processes: a cgroup for CPU and
disk, and a veth pair between two network namespaces made for the test for the network (the
host's loopback is never shaped). Everything made here is removed on the way out.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core import image, procs
from bench.core.errors import BenchError
from bench.core.limits import Limits
from bench.core.settings import settings
from bench.kernel import cgroups
from bench.tiers import get as get_tier
from bench.tiers.base import Instance, InstanceSpec, Tier, TierContext
from bench.workloads.cpu_sysbench import parse_sysbench_cpu
from bench.workloads.disk_fio import parse_fio_json
from bench.workloads.net_iperf3 import parse_iperf3_json

TOLERANCE = 0.05
CPU_QUOTA = 0.5
IO_BPS = 20 * 2**20
TBF_MBIT = 200
FRAME_EFFICIENCY = 1448 / 1514
IOPS = 300  # io_read_iops: fio 4k random reads (the bps limit does not bind at 1.2 MB/s)
NET_MBIT = 100  # net_mbit: the instance's own egress limit, iperf3 from it to another
ROUNDS = 3


@dataclass
class Check:
    tier: str
    limit: str
    expected: float
    measured: float
    unit: str
    detail: str = ""
    skipped: str = ""

    @property
    def error(self) -> float:
        return abs(self.measured / self.expected - 1) if self.expected else float("inf")

    @property
    def passed(self) -> bool:
        return not self.skipped and self.error <= TOLERANCE


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _sysbench(run: Callable[[list[str]], str]) -> float:
    out = run(["sysbench", "cpu", "--threads=1", "--time=2", "run"])
    return next(m.value for m in parse_sysbench_cpu(out) if m.metric == "events_per_s")


def _fio_read(run: Callable[[list[str]], str], scratch: str) -> float:
    out = run(["fio", "--name=selftest", f"--filename={scratch}/selftest-fio.dat", "--rw=read",
               "--bs=1m", "--direct=1", "--size=128m", "--runtime=4", "--time_based",
               "--ioengine=libaio", "--iodepth=4", "--output-format=json"])
    return next(m.value for m in parse_fio_json(out, "read") if m.metric == "bandwidth_MBps") * 1e6


def _iperf3(client: Callable[[list[str]], str], address: str, port: int) -> float:
    out = client(["iperf3", "-c", address, "-p", str(port), "-t", "4", "-J"])
    return next(m.value for m in parse_iperf3_json(out) if m.metric == "throughput_Gbps") * 1e3


def _cpu_check(tier: str, free: Callable[[list[str]], str],
               limited: Callable[[list[str]], str]) -> Check:
    base, capped = [], []
    for _ in range(ROUNDS):  # interleaved, so drifts of the machine hit both alike
        base.append(_sysbench(free))
        capped.append(_sysbench(limited))
    ratio = _median(capped) / _median(base)
    return Check(tier, f"CPU quota {CPU_QUOTA} CPU", CPU_QUOTA, ratio, "x unlimited",
                 f"sysbench 1 thread: {_median(base):.0f} -> {_median(capped):.0f} events/s")


def _io_check(tier: str, run: Callable[[list[str]], str], scratch: str) -> Check:
    measured = _median([_fio_read(run, scratch) for _ in range(2)])
    return Check(tier, "block I/O read 20 MiB/s", IO_BPS / 2**20, measured / 2**20, "MiB/s",
                 "fio O_DIRECT sequential read, 1 MiB blocks")


def _net_check(tier: str, measured_mbit: float, where: str) -> Check:
    expected = TBF_MBIT * FRAME_EFFICIENCY
    return Check(tier, f"tbf {TBF_MBIT} Mbit/s", expected, measured_mbit, "Mbit/s",
                 f"iperf3 TCP goodput over {where}; tbf counts frames, so the expected "
                 f"goodput is {TBF_MBIT} x 1448/1514")


@contextlib.contextmanager
def _tbf(link: str) -> Iterator[None]:
    procs.run(["tc", "qdisc", "replace", "dev", link, "root", "tbf", "rate", f"{TBF_MBIT}mbit",
               "burst", "64kb", "latency", "50ms"], timeout=10)
    try:
        yield
    finally:
        procs.run(["tc", "qdisc", "del", "dev", link, "root"], timeout=10, check=False)


def _until_listening(run: Callable[[list[str]], str]) -> Callable[[list[str]], str]:
    """iperf3 exits 0 with 'Connection refused' in its JSON while its server is still binding."""
    def retrying(argv: list[str]) -> str:
        out = ""
        for _ in range(50):
            out = run(argv)
            if "refused" not in out:
                break
            time.sleep(0.1)
        return out

    return retrying


def _host_link_of(instance: Instance) -> str | None:
    """The host end of the instance's veth: its eth0's iflink is that link's ifindex."""
    try:
        peer = instance.exec(["cat", "/sys/class/net/eth0/iflink"], timeout=10).stdout.strip()
    except BenchError:
        return None
    for link in Path("/sys/class/net").iterdir():
        with contextlib.suppress(OSError):
            if (link / "ifindex").read_text().strip() == peer:
                return link.name
    return None


class SelfTest:
    def __init__(self, tiers: list[str], log: Callable[[str], None] = print) -> None:
        self.tier_names = tiers
        self.log = log
        self.run_id = f"selftest-{secrets.token_hex(3)}"
        self.work = settings().work_dir / self.run_id

    def run(self) -> list[Check]:
        img = image.require()
        checks: list[Check] = []
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            for name in self.tier_names:
                tier = get_tier(name)
                availability = tier.available()
                if not availability.ok:
                    checks.append(Check(name, "all", 0, 0, "", skipped=availability.reason))
                    continue
                tier_dir = self.work / name
                tier_dir.mkdir(parents=True, exist_ok=True)
                raw = tier_dir / "raw"
                raw.mkdir(exist_ok=True)
                tier.prepare(TierContext(self.run_id, img, tier_dir, raw))
                try:
                    self.log(f"selftest: {name} ...")
                    checks += (self._host(tier) if tier.is_baseline else self._isolated(tier))
                finally:
                    tier.finish()
        finally:
            for name in self.tier_names:
                with contextlib.suppress(Exception):
                    get_tier(name).cleanup(self.run_id)
            shutil.rmtree(self.work, ignore_errors=True)
        return checks

    # -- the host tier: limits injected around the host's own processes ------------------
    def _host(self, tier: Tier) -> list[Check]:
        root = tier.ctx.workdir / "host-root"
        scratch_host = tier.ctx.workdir / "host-scratch"
        hierarchies = cgroups.detect()
        rel = f"{cgroups.ROOT_NAME}/{self.run_id}"
        checks = []

        def chroot(group: cgroups.Cgroup | None) -> Callable[[list[str]], str]:
            def enter() -> None:
                if group is not None:
                    group.join(0)
                os.chroot(root)
                os.chdir("/")

            def run(argv: list[str]) -> str:
                return procs.run(argv, timeout=120, preexec=enter).stdout

            return run

        cpu = cgroups.Cgroup(hierarchies, f"{rel}/cpu")
        io = cgroups.Cgroup(hierarchies, f"{rel}/io")
        try:
            cpu.create(Limits(cpus=CPU_QUOTA))
            checks.append(_cpu_check("host", chroot(None), chroot(cpu)))
            io.create(Limits(io_read_bps=IO_BPS), cgroups.block_device(scratch_host))
            checks.append(_io_check("host", chroot(io), "/scratch"))
        finally:
            cpu.remove()
            io.remove()
            cgroups.remove_tree(hierarchies, rel)
        checks.append(self._host_network(chroot(None)))
        return checks

    def _host_network(self, run: Callable[[list[str]], str]) -> Check:
        tag = self.run_id[-6:]
        a, b = f"bst{tag}a", f"bst{tag}b"
        ns_a, ns_b = f"bench-{self.run_id}-a", f"bench-{self.run_id}-b"
        server: Any = None
        try:
            for ns in (ns_a, ns_b):
                procs.run(["ip", "netns", "add", ns], timeout=10)
            procs.run(["ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b,
                       "netns", ns_b], timeout=10)
            for ns, link, addr in ((ns_a, a, "10.214.0.1/30"), (ns_b, b, "10.214.0.2/30")):
                procs.run(["ip", "-n", ns, "addr", "add", addr, "dev", link], timeout=10)
                procs.run(["ip", "-n", ns, "link", "set", link, "up"], timeout=10)
                procs.run(["ip", "-n", ns, "link", "set", "lo", "up"], timeout=10)
            root = str(self.work / "host" / "host-root")
            server = procs.spawn(["ip", "netns", "exec", ns_b, "chroot", root,
                                  "iperf3", "-s", "-B", "10.214.0.2", "-p", "5201"])
            procs.run(["ip", "-n", ns_a, "link", "set", a, "up"], timeout=10)
            procs.run(["ip", "netns", "exec", ns_a, "tc", "qdisc", "replace", "dev", a, "root",
                       "tbf", "rate", f"{TBF_MBIT}mbit", "burst", "64kb", "latency", "50ms"],
                      timeout=10)

            client = _until_listening(lambda argv: procs.run(
                ["ip", "netns", "exec", ns_a, "chroot", root, *argv], timeout=60).stdout)
            measured = _median([_iperf3(client, "10.214.0.2", 5201) for _ in range(2)])
            return _net_check("host", measured, "a veth pair between two test namespaces")
        finally:
            if server is not None:
                procs.terminate(server)
            for ns in (ns_a, ns_b):
                procs.run(["ip", "netns", "del", ns], timeout=10, check=False)

    # -- isolating tiers: the same scenario keys every run uses ----------------------------
    def _isolated(self, tier: Tier) -> list[Check]:
        name = tier.name
        checks = []
        free = tier.start(InstanceSpec(role="st-free", limits=Limits()))
        limited = tier.start(InstanceSpec(role="st-cpu", limits=Limits(cpus=CPU_QUOTA)))
        try:
            checks.append(_cpu_check(name, lambda a: free.exec(a, 120).stdout,
                                     lambda a: limited.exec(a, 120).stdout))
            checks += _readback_checks(name, limited, Limits(cpus=CPU_QUOTA))
        finally:
            limited.stop()
        io_limits = Limits(io_read_bps=IO_BPS, io_read_iops=IOPS, net_mbit=NET_MBIT)
        io = tier.start(InstanceSpec(role="st-io", limits=io_limits, scratch="bind"))
        try:
            checks.append(_io_check(name, lambda a: io.exec(a, 120).stdout, io.scratch_dir()))
            checks += _readback_checks(name, io, io_limits)
            checks.append(_iops_check(name, lambda a: io.exec(a, 120).stdout, io.scratch_dir()))
            checks.append(_net_limit_check(name, io, free))
        except BenchError as exc:
            checks.append(Check(name, "block I/O read 20 MiB/s", 20, 0, "MiB/s",
                                skipped=exc.cause))
        finally:
            io.stop()
        try:
            checks.append(self._isolated_network(tier, free))
        finally:
            free.stop()
        return checks

    def _isolated_network(self, tier: Tier, server_side: Instance) -> Check:
        link = getattr(server_side, "host_link", lambda: None)() or _host_link_of(server_side)
        if link is None:
            return Check(tier.name, f"tbf {TBF_MBIT} Mbit/s", 0, 0, "Mbit/s",
                         skipped="the instance's host-side link was not found")
        host = get_tier("host")
        host.prepare(TierContext(self.run_id, tier.ctx.image, self.work / "host-client",
                                 tier.ctx.raw_dir))
        client = host.start(InstanceSpec(role="st-client", limits=Limits()))
        server = server_side.spawn(["iperf3", "-s", "-B", server_side.address(), "-p", "5202"])
        try:
            with _tbf(link):
                run = _until_listening(lambda argv: client.exec(argv, 60).stdout)
                measured = _median([_iperf3(run, server_side.address(), 5202)
                                    for _ in range(2)])
            return _net_check(tier.name, measured, f"the host -> {tier.name} link {link}")
        finally:
            server.stop()
            client.stop()
            host.finish()


def _readback_checks(tier: str, instance: Instance, limits: Limits) -> list[Check]:
    """Every numeric limit set on `instance`, as the kernel or hypervisor holds it now."""
    back = instance.read_limits()
    return [Check(tier, f"readback {key}", float(value), float(back.get(key) or 0), "as set",
                  "read back from the instance's cgroup, tc qdisc or libvirt")
            for key, value in limits.set_fields().items() if isinstance(value, int | float)]


def _iops_check(tier: str, run: Callable[[list[str]], str], scratch: str) -> Check:
    def once() -> float:
        out = run(["fio", "--name=selftest-iops", f"--filename={scratch}/selftest-iops.dat",
                   "--rw=randread", "--bs=4k", "--direct=1", "--size=32m", "--runtime=4",
                   "--time_based", "--ioengine=libaio", "--iodepth=8", "--output-format=json"])
        return next(m.value for m in parse_fio_json(out, "randread") if m.metric == "iops")

    return Check(tier, f"io_read_iops {IOPS}", IOPS, _median([once() for _ in range(2)]),
                 "IO/s", "fio O_DIRECT 4k random reads")


def _net_limit_check(tier: str, limited: Instance, server_side: Instance) -> Check:
    """net_mbit: the limited instance's own egress, iperf3 from it to another instance."""
    server = server_side.spawn(["iperf3", "-s", "-B", server_side.address(), "-p", "5203"])
    try:
        run = _until_listening(lambda argv: limited.exec(argv, 60).stdout)
        measured = _median([_iperf3(run, server_side.address(), 5203) for _ in range(2)])
    finally:
        server.stop()
    return Check(tier, f"net_mbit {NET_MBIT}", NET_MBIT * FRAME_EFFICIENCY, measured, "Mbit/s",
                 f"iperf3 TCP goodput out of an instance with net_mbit {NET_MBIT} "
                 f"(expected {NET_MBIT} x 1448/1514)")


def as_json(checks: list[Check]) -> str:
    return json.dumps([{**c.__dict__, "error": c.error, "passed": c.passed} for c in checks],
                      indent=2, default=str)
