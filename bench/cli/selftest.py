"""`bench selftest`: does the measurement chain see a limit we inject ourselves?

On every available tier, known limits are injected with the scenario keys a run uses and
measured with the same tools; each must come out within 5% of what was injected:

- cpus: a CFS quota must cap the CPU share of a busy thread. Measured as CPU time over wall
  time, paired with an unlimited instance in the same moment: the expected share is
  min(quota, what the unlimited thread got). On a loaded host (the unlimited thread got less
  than 0.8 CPU but more than the quota) the check is that the quota holds and does not starve
  the instance, and says so; it is skipped, with the shares measured, only when the unlimited
  thread got no more than the quota. In a guest, whose clock runs on while the host holds its
  vCPU back, the share is the host's CPU time for its vCPUs over wall time;
- io_read_bps / io_write_bps: a block I/O throttle must cap fio's O_DIRECT sequential read or
  write (the disk.fio workload's own command line), plus the burst the tier's throttle lets
  through at once (Tier.io_burst_s: QEMU's in a guest; none for cgroups);
- network: a tbf qdisc of 200 Mbit/s on the host side of the instance's link must cap iperf3
  (a quarter of what the link carries unshaped, where that is under 800 Mbit/s). tbf counts
  whole Ethernet frames, iperf3 counts TCP payload, so the expected goodput is the rate x MSS /
  frame size (1448 / 1514 at MTU 1500 with TCP timestamps).

Every ratio is taken in interleaved pairs (bench.analysis.paired) with a bounded number of
reported retries. The default set (CI) is each limit once plus one combined case (read and
write throttled together, a write run before the read run); `--full` injects every limit alone
and in pairs, on both scratch modes, with values other than the defaults (minutes per tier).
`LIMITS` is the list to extend with a new limit. Where instances start without a guest's boot,
checks that do not disturb each other overlap (selftest_checks.measure_all): the CPU quota next
to the throttled I/O cases, the network checks next to the I/O once the quota is measured.

On the host tier the limits are injected around the host's own processes: a cgroup for CPU and
disk, and a veth pair between two network namespaces made for the test for the network (the
host's loopback is never shaped). Everything made here is removed on the way out.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
from collections.abc import Callable
from typing import Any

from bench.cli.selftest_checks import (
    IOPS,
    TOLERANCE,
    Check,
    Limit,
    MiB,
    Probe,
    Run,
    as_limits,
    case_label,
    failed,
    iops_check,
    measure_all,
    readback_checks,
    together,
    vcpu_share,
)
from bench.cli.selftest_net import (
    NET_MBIT,
    host_link_of,
    net_check,
    net_limit_check,
    shaped_rate,
    tbf,
    until_listening,
)
from bench.core import hostlock, image, procs
from bench.core.errors import BenchError
from bench.core.limits import Limits, ScratchMode
from bench.kernel import cgroups
from bench.tiers.base import Instance, InstanceSpec, Tier, TierContext
from bench.tiers.host import HostTier
from bench.tiers.registry import get as get_tier

__all__ = ["TOLERANCE", "Check", "SelfTest", "as_json"]


class SelfTest:
    def __init__(self, tiers: list[str], log: Callable[[str], None] = print,
                 full: bool = False) -> None:
        self.tier_names = tiers
        self.log = log
        self.full = full
        self.run_id = f"selftest-{os.urandom(3).hex()}"

    def run(self) -> list[Check]:
        img = image.require()
        checks: list[Check] = []
        lock = hostlock.RunLock(self.run_id)  # others' cleanups spare a live selftest
        self.work = lock.path
        try:
            for name in self.tier_names:
                tier = get_tier(name)
                availability = tier.available()
                if not availability.ok:
                    checks.append(Check(name, "all", 0, 0, "", skipped=availability.reason))
                    continue
                tier_dir = self.work / name
                (tier_dir / "raw").mkdir(parents=True, exist_ok=True)
                tier.prepare(TierContext(self.run_id, img, tier_dir, tier_dir / "raw"))
                try:
                    self.log(f"selftest: {name} ...")
                    checks += (self._host(tier) if tier.is_baseline else self._isolated(tier))
                finally:
                    tier.finish()
        finally:
            for name in self.tier_names:
                with contextlib.suppress(Exception):
                    get_tier(name).cleanup(self.run_id)
            lock.release()
        return checks

    # -- the host tier: limits injected around the host's own processes ------------------
    def _host(self, tier: Tier) -> list[Check]:
        assert isinstance(tier, HostTier)
        holder = tier.holder  # its mount namespace holds the image's root and mounts
        device = cgroups.block_device(tier.ctx.workdir / "host-scratch")
        hierarchies = cgroups.detect()
        rel = f"{cgroups.ROOT_NAME}/{self.run_id}"
        groups: list[cgroups.Cgroup] = []
        serial = itertools.count(1)

        def chroot(group: cgroups.Cgroup | None) -> Run:
            def enter() -> None:
                if group is not None:
                    group.join(0)
                holder.enter()

            return lambda argv: procs.run(argv, timeout=120, preexec=enter).stdout

        # the unlimited side in a group of its own too: the scheduler weighs groups, so a
        # lone process in the root group would get less than the limited group at equal load
        free = cgroups.Cgroup(hierarchies, f"{rel}/free")
        groups.append(free)

        def probe(limits: tuple[Limit, ...], values: dict[str, float],
                  mode: ScratchMode) -> Probe:
            group = cgroups.Cgroup(hierarchies, f"{rel}/{next(serial)}")  # (two lanes)
            groups.append(group)
            group.create(as_limits(values), device)
            return Probe("host", chroot(group), chroot(free), "/scratch",
                         case_label(values, "host cgroup"))

        def network() -> list[Check]:
            try:
                return [self._host_network(chroot(None), holder.argv)]
            except BenchError as exc:
                return [failed("host", "tbf (network)", "", exc)]

        try:
            free.create(Limits())
            return measure_all(probe, "host", self.full, self.log, scratch_modes=False,
                               beside=network)
        finally:
            for group in groups:
                group.remove()
            cgroups.remove_tree(hierarchies, rel)

    def _host_network(self, run: Run, inside: Callable[[list[str]], list[str]]) -> Check:
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
            server = procs.spawn(["ip", "netns", "exec", ns_b, *inside(
                ["iperf3", "-s", "-B", "10.214.0.2", "-p", "5201"])])
            client = until_listening(lambda argv: procs.run(
                ["ip", "netns", "exec", ns_a, *inside(argv)], timeout=60).stdout)
            mbit, rate = shaped_rate(client, "10.214.0.2", 5201)
            with tbf(a, ["ip", "netns", "exec", ns_a], mbit):
                return net_check("host", rate, "a veth pair between two test namespaces", mbit)
        finally:
            if server is not None:
                procs.terminate(server)
            for ns in (ns_a, ns_b):
                procs.run(["ip", "netns", "del", ns], timeout=10, check=False)

    # -- isolating tiers: the same scenario keys every run uses ----------------------------
    def _isolated(self, tier: Tier) -> list[Check]:
        free = tier.start(InstanceSpec(role="st-free", limits=Limits()))
        try:
            def free_run(argv: list[str]) -> str:
                return free.exec(argv, 120).stdout

            starting = threading.Lock()  # a tier starts and stops one instance at a time

            def probe(limits: tuple[Limit, ...], values: dict[str, float],
                  mode: ScratchMode) -> Probe:
                with starting:
                    instance = tier.start(InstanceSpec(
                        role=f"st-{len(limits)}{mode[0]}", limits=as_limits(values),
                        scratch=mode))

                def stop() -> None:
                    with starting:
                        instance.stop()

                guest = not tier.cpu_share_inside  # a guest: its own clocks cannot tell
                return Probe(tier.name, lambda argv: instance.exec(argv, 120).stdout, free_run,
                             instance.scratch_dir(), case_label(values, mode), stop,
                             (lambda: vcpu_share(instance)) if guest else None,
                             (lambda: vcpu_share(free)) if guest else None, tier.io_burst_s)

            def network() -> list[Check]:
                try:
                    return [self._isolated_network(tier, free)]
                except BenchError as exc:
                    return [failed(tier.name, "tbf (network)", "", exc)]

            # checks overlap where instances start without a guest's boot (start_estimate_s),
            # which would load the CPUs a quota and a shaped path are measured on
            beside = tier.start_estimate_s < 10
            checks = measure_all(probe, tier.name, self.full, self.log,
                                 beside=network if beside else None)
            try:
                checks += self._new_limits(tier, free, beside)
            except BenchError as exc:
                checks.append(failed(tier.name, f"io_read_iops {IOPS}, net_mbit {NET_MBIT}",
                                     "", exc))
            return checks if beside else [*checks, *network()]
        finally:
            free.stop()

    def _new_limits(self, tier: Tier, free: Instance, beside: bool) -> list[Check]:
        """io_read_iops and net_mbit measured, and every limit read back as the kernel or the
        hypervisor holds it."""
        # every limit, so that each is read back; none of the others binds the two measured
        # (4k reads at 300 IO/s move 1.2 MB/s; 1.5 CPUs carry iperf3 at 100 Mbit/s)
        limits = Limits(cpus=1.5, memory_mb=1024, io_read_bps=20 * MiB, io_write_bps=10 * MiB,
                        io_read_iops=IOPS, io_write_iops=200, net_mbit=NET_MBIT)
        try:
            io = tier.start(InstanceSpec(role="st-io", limits=limits, scratch="bind"))
        except BenchError as exc:
            return [Check(tier.name, f"io_read_iops {IOPS}", IOPS, 0, "IO/s", skipped=exc.cause)]
        try:
            measures: list[Callable[[], Check]] = [
                lambda: iops_check(tier.name, lambda a: io.exec(a, 120).stdout, io.scratch_dir()),
                lambda: net_limit_check(tier.name, io, free)]
            # fio at 300 4k reads/s and iperf3 at 100 Mbit/s at the same time (beside): each
            # far below what the disk and the CPUs carry
            return [*readback_checks(tier.name, io, limits),
                    *(together(*measures) if beside else [m() for m in measures])]
        finally:
            io.stop()

    def _isolated_network(self, tier: Tier, server_side: Instance) -> Check:
        link = getattr(server_side, "host_link", lambda: None)() or host_link_of(server_side)
        if link is None:
            return Check(tier.name, "tbf (network)", 0, 0, "Mbit/s",
                         skipped="the instance's host-side link was not found")
        host = get_tier("host")
        host.prepare(TierContext(self.run_id, tier.ctx.image, self.work / "host-client",
                                 tier.ctx.raw_dir))
        client = host.start(InstanceSpec(role="st-client", limits=Limits()))
        server = server_side.spawn(["iperf3", "-s", "-B", server_side.address(), "-p", "5202"])
        try:
            run = until_listening(lambda argv: client.exec(argv, 60).stdout)
            mbit, rate = shaped_rate(run, server_side.address(), 5202)
            with tbf(link, mbit=mbit):
                return net_check(tier.name, rate, f"the host -> {tier.name} link {link}", mbit)
        finally:
            server.stop()
            client.stop()
            host.finish()


def as_json(checks: list[Check]) -> str:
    return json.dumps([{**c.__dict__, "error": c.error, "passed": c.passed} for c in checks],
                      indent=2, default=str)
