"""`bench selftest`: does the measurement chain see a limit we inject ourselves?

On every available tier, known limits are injected with the scenario keys a run uses and
measured with the same tools; each must come out within 5% of what was injected:

- cpus: a CFS quota must cap the CPU share of a busy thread. Measured as CPU time over wall
  time, paired with an unlimited instance in the same moment: the expected share is
  min(quota, what the unlimited thread got), so a loaded machine does not fail the check;
- io_read_bps / io_write_bps: a block I/O throttle must cap fio's O_DIRECT sequential read or
  write (the disk.fio workload's own command line);
- network: a tbf qdisc of 200 Mbit/s on the host side of the instance's link must cap iperf3.
  tbf counts whole Ethernet frames, iperf3 counts TCP payload, so the expected goodput is the
  rate x MSS / frame size (1448 / 1514 at MTU 1500 with TCP timestamps).

Every ratio is taken in interleaved pairs (bench.analysis.paired) with a bounded number of
reported retries. The default set (CI) is each limit once plus one combined case (read and
write throttled together, a write run before the read run); `--full` injects every limit alone
and in pairs, on both scratch modes, with values other than the defaults (minutes per tier).
`LIMITS` is the list to extend with a new limit.

On the host tier the limits are injected around the host's own processes: a cgroup for CPU and
disk, and a veth pair between two network namespaces made for the test for the network (the
host's loopback is never shaped). Everything made here is removed on the way out.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.analysis.paired import PairedRatio, check_ratio, paired_ratio
from bench.core import hostlock, image, procs
from bench.core.errors import BenchError
from bench.core.limits import Limits, ScratchMode
from bench.kernel import cgroups
from bench.tiers.base import Instance, InstanceSpec, Tier, TierContext
from bench.tiers.registry import get as get_tier
from bench.workloads.disk_fio import FioParams, fio_argv, parse_fio_json
from bench.workloads.net_iperf3 import parse_iperf3_json

TOLERANCE = 0.05
RETRIES = 2  # attempts after the first when a check misses; every attempt is reported
MiB = 2**20
TBF_MBIT = 200
FRAME_EFFICIENCY = 1448 / 1514
IOPS = 300  # io_read_iops: fio 4k random reads (the bps limit does not bind at 1.2 MB/s)
NET_MBIT = 100  # net_mbit: the instance's own egress limit, iperf3 from it to another
Run = Callable[[list[str]], str]

# a busy thread's CPU time over wall time (the share the scheduler gave it)
_BUSY = ("import time\nw=time.monotonic();c=time.process_time()\n"
         "while time.monotonic()-w<3:pass\n"
         "print((time.process_time()-c)/(time.monotonic()-w))\n")


@dataclass
class Check:
    tier: str
    limit: str
    expected: float
    measured: float
    unit: str
    detail: str = ""
    skipped: str = ""
    set: str = ""  # every limit injected together, and the scratch mode
    ratios: list[float] = field(default_factory=list)  # every attempt's median ratio
    ok: bool | None = None  # the paired check's verdict (None: judged on `error` alone)

    @property
    def error(self) -> float:
        return abs(self.measured / self.expected - 1) if self.expected else float("inf")

    @property
    def passed(self) -> bool:
        if self.skipped:
            return False
        return self.error <= TOLERANCE if self.ok is None else self.ok


@dataclass
class Probe:
    """Where one set of limits is measured: commands in the limited instance and in an
    unlimited one of the same tier, the limited instance's scratch directory."""

    tier: str
    run: Run
    free: Run
    scratch: str
    set: str
    stop: Callable[[], None] = lambda: None


def _paired(tier: str, set_: str, limit: str, value: float, unit: str, scale: float,
            measure: Callable[[], PairedRatio], how: str) -> Check:
    """Expected ratio 1.0: measured / what the limit allows, with bounded retries."""
    verdict = check_ratio(measure, 1.0, TOLERANCE, RETRIES)
    median = verdict.attempts[-1].median
    return Check(tier, limit, value / scale, value * median / scale, unit,
                 f"{how}; {verdict.describe()}", set=set_,
                 ratios=[a.median for a in verdict.attempts], ok=verdict.ok)


def _share(run: Run) -> float:
    return float(run(["python3", "-c", _BUSY]).strip())


FREE_MIN = 0.8  # an unlimited thread must get this much CPU for a quota to be checkable


class _TooLoaded(Exception):
    pass


def _together(*measures: Callable[[], float]) -> list[float]:
    """Measurements taken at the same time, so they see the same load."""
    with ThreadPoolExecutor(len(measures)) as pool:
        return [f.result() for f in [pool.submit(m) for m in measures]]


def measure_cpus(probe: Probe, value: float) -> Check:
    """A busy thread under the quota next to an unlimited one, at the same time. A quota is
    only checkable while the host has a CPU to spare: under contention CFS bandwidth control
    gives a throttled group less than its quota (0.7-0.85 of it was seen at load 15-20 on 2
    CPUs while the unlimited thread got 0.35-0.6), so pairs whose unlimited thread got less
    than FREE_MIN are left out, and a check with none left is skipped and says why."""
    seen: list[float] = []

    def pairs() -> PairedRatio:
        ratios: list[float] = []
        for _ in range(6):  # up to 3 checkable pairs in at most 6
            limited, free = _together(lambda: _share(probe.run), lambda: _share(probe.free))
            seen.append(free)
            if free >= FREE_MIN:
                ratios.append(limited / value)
            if len(ratios) == 3:
                break
        if not ratios:
            raise _TooLoaded
        return PairedRatio(tuple(ratios))

    try:
        return _paired(probe.tier, probe.set, "cpus", value, "CPU", 1, pairs,
                       "CPU time / wall time of a busy thread (an unlimited one at the same "
                       "time got >= 0.8 CPU)")
    except _TooLoaded:
        return Check(probe.tier, "cpus", value, 0, "CPU", set=probe.set, skipped=(
            f"the host is too loaded to check a CPU quota: an unlimited thread got at most "
            f"{max(seen):.2f} CPU (needs {FREE_MIN}); run selftest on a quieter host"))


def _io(rw: str) -> Callable[[Probe, float], Check]:
    params = FioParams(rw="read" if rw == "read" else "write", size_mb=64, runtime_s=2,
                       iodepth=4)

    def rate(run: Run, scratch: str) -> float:
        out = run(fio_argv(params, scratch))
        return next(m.value for m in parse_fio_json(out, params.rw)
                    if m.metric == "bandwidth_MBps") * 1e6

    def measure(probe: Probe, value: float) -> Check:
        def pairs() -> PairedRatio:
            return paired_ratio(lambda: rate(probe.run, probe.scratch), lambda: value, pairs=2)

        return _paired(probe.tier, probe.set, f"io_{rw}_bps", value, "MiB/s", MiB, pairs,
                       f"fio (disk.fio's command) O_DIRECT sequential {rw}, 1 MiB blocks")

    return measure


@dataclass(frozen=True)
class Limit:
    """A scenario limit selftest injects: its key, the default and --full values, and how it
    is measured. Within one instance the limits are measured in list order (writes first)."""

    key: str
    default: float
    other: float
    measure: Callable[[Probe, float], Check]


LIMITS = [
    Limit("io_write_bps", 10 * MiB, 8 * MiB, _io("write")),
    Limit("io_read_bps", 20 * MiB, 12 * MiB, _io("read")),
    Limit("cpus", 0.25, 0.15, measure_cpus),
]
BY_KEY = {limit.key: limit for limit in LIMITS}


def cases(full: bool) -> list[tuple[tuple[Limit, ...], ScratchMode]]:
    """(limits injected together, scratch mode) for the default set or for --full."""
    if not full:
        return [((BY_KEY["cpus"],), "overlay"), ((BY_KEY["io_read_bps"],), "bind"),
                ((BY_KEY["io_write_bps"], BY_KEY["io_read_bps"]), "bind")]
    sets = [(x,) for x in LIMITS] + list(itertools.combinations(LIMITS, 2))
    modes: tuple[ScratchMode, ...] = ("overlay", "bind")
    return [(s, mode) for s in sets for mode in modes]


def _values(limits: tuple[Limit, ...], full: bool) -> dict[str, float]:
    return {x.key: x.other if full else x.default for x in limits}


def _as_limits(values: dict[str, float]) -> Limits:
    return Limits(**{k: (v if k == "cpus" else int(v)) for k, v in values.items()})


def _label(values: dict[str, float], mode: str) -> str:
    shown = [f"{k}={v / MiB:g}MiB/s" if k.startswith("io_") else f"{k}={v:g}"
             for k, v in values.items()]
    return " + ".join(shown) + f" ({mode})"


def _measure_all(probe_for: Callable[[tuple[Limit, ...], dict[str, float], ScratchMode], Probe],
                 tier: str, full: bool, log: Callable[[str], None],
                 scratch_modes: bool = True) -> list[Check]:
    """Each case of `cases` once (without scratch modes, as on the host: each set once)."""
    checks = []
    seen = set()
    for limits, mode in cases(full):
        if not scratch_modes and limits in seen:
            continue
        seen.add(limits)
        values = _values(limits, full)
        log(f"selftest: {tier}: {_label(values, mode)}")
        try:
            probe = probe_for(limits, values, mode)
        except BenchError as exc:
            checks += [Check(tier, x.key, 0, 0, "", skipped=exc.cause,
                             set=_label(values, mode)) for x in limits]
            continue
        try:
            for limit in limits:
                checks.append(limit.measure(probe, values[limit.key]))
        finally:
            probe.stop()
    return checks


# -- the network: tbf on the link ---------------------------------------------------------------
def _iperf3(client: Run, address: str, port: int) -> float:
    out = client(["iperf3", "-c", address, "-p", str(port), "-t", "3", "-J"])
    return next(m.value for m in parse_iperf3_json(out) if m.metric == "throughput_Gbps") * 1e9


def _net_check(tier: str, rate: Callable[[], float], where: str) -> Check:
    expected = TBF_MBIT * 1e6 * FRAME_EFFICIENCY
    return _paired(tier, f"tbf {TBF_MBIT} Mbit/s on the link", "tbf (network)", expected,
                   "Mbit/s", 1e6, lambda: paired_ratio(rate, lambda: expected, pairs=2),
                   f"iperf3 TCP goodput over {where}; tbf counts frames: expected "
                   f"{TBF_MBIT} x 1448/1514")


@contextlib.contextmanager
def _tbf(link: str, netns: list[str] | None = None) -> Iterator[None]:
    prefix = netns or []
    procs.run([*prefix, "tc", "qdisc", "replace", "dev", link, "root", "tbf", "rate",
               f"{TBF_MBIT}mbit", "burst", "64kb", "latency", "50ms"], timeout=10)
    try:
        yield
    finally:
        procs.run([*prefix, "tc", "qdisc", "del", "dev", link, "root"], timeout=10, check=False)


def _until_listening(run: Run) -> Run:
    """iperf3 exits 0 with "Connection refused" in its JSON while its server is still binding,
    and with "the server is busy" while it is still finishing the test before."""
    def retrying(argv: list[str]) -> str:
        out = ""
        for _ in range(50):
            out = run(argv)
            if "refused" not in out and "server is busy" not in out:
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


# -- running it on the tiers --------------------------------------------------------------------
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
        root = tier.ctx.workdir / "host-root"
        device = cgroups.block_device(tier.ctx.workdir / "host-scratch")
        hierarchies = cgroups.detect()
        rel = f"{cgroups.ROOT_NAME}/{self.run_id}"
        groups: list[cgroups.Cgroup] = []

        def chroot(group: cgroups.Cgroup | None) -> Run:
            def enter() -> None:
                if group is not None:
                    group.join(0)
                os.chroot(root)
                os.chdir("/")

            return lambda argv: procs.run(argv, timeout=120, preexec=enter).stdout

        # the unlimited side in a group of its own too: the scheduler weighs groups, so a
        # lone process in the root group would get less than the limited group at equal load
        free = cgroups.Cgroup(hierarchies, f"{rel}/free")
        groups.append(free)

        def probe(limits: tuple[Limit, ...], values: dict[str, float],
                  mode: ScratchMode) -> Probe:
            group = cgroups.Cgroup(hierarchies, f"{rel}/{len(groups)}")
            groups.append(group)
            group.create(_as_limits(values), device)
            return Probe("host", chroot(group), chroot(free), "/scratch",
                         _label(values, "host cgroup"))

        try:
            free.create(Limits())
            checks = _measure_all(probe, "host", self.full, self.log, scratch_modes=False)
        finally:
            for group in groups:
                group.remove()
            cgroups.remove_tree(hierarchies, rel)
        return [*checks, self._host_network(chroot(None))]

    def _host_network(self, run: Run) -> Check:
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
            client = _until_listening(lambda argv: procs.run(
                ["ip", "netns", "exec", ns_a, "chroot", root, *argv], timeout=60).stdout)
            with _tbf(a, ["ip", "netns", "exec", ns_a]):
                return _net_check("host", lambda: _iperf3(client, "10.214.0.2", 5201),
                                  "a veth pair between two test namespaces")
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

            def probe(limits: tuple[Limit, ...], values: dict[str, float],
                  mode: ScratchMode) -> Probe:
                instance = tier.start(InstanceSpec(
                    role=f"st-{len(limits)}{mode[0]}", limits=_as_limits(values), scratch=mode))
                return Probe(tier.name, lambda argv: instance.exec(argv, 120).stdout, free_run,
                             instance.scratch_dir(), _label(values, mode), instance.stop)

            checks = _measure_all(probe, tier.name, self.full, self.log)
            return [*checks, *self._new_limits(tier, free), self._isolated_network(tier, free)]
        finally:
            free.stop()

    def _new_limits(self, tier: Tier, free: Instance) -> list[Check]:
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
            return [*_readback_checks(tier.name, io, limits),
                    _iops_check(tier.name, lambda a: io.exec(a, 120).stdout, io.scratch_dir()),
                    _net_limit_check(tier.name, io, free)]
        finally:
            io.stop()

    def _isolated_network(self, tier: Tier, server_side: Instance) -> Check:
        link = getattr(server_side, "host_link", lambda: None)() or _host_link_of(server_side)
        if link is None:
            return Check(tier.name, "tbf (network)", 0, 0, "Mbit/s",
                         skipped="the instance's host-side link was not found")
        host = get_tier("host")
        host.prepare(TierContext(self.run_id, tier.ctx.image, self.work / "host-client",
                                 tier.ctx.raw_dir))
        client = host.start(InstanceSpec(role="st-client", limits=Limits()))
        server = server_side.spawn(["iperf3", "-s", "-B", server_side.address(), "-p", "5202"])
        try:
            run = _until_listening(lambda argv: client.exec(argv, 60).stdout)
            with _tbf(link):
                return _net_check(tier.name, lambda: _iperf3(run, server_side.address(), 5202),
                                  f"the host -> {tier.name} link {link}")
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


def _iops_check(tier: str, run: Run, scratch: str) -> Check:
    def once() -> float:
        out = run(["fio", "--name=selftest-iops", f"--filename={scratch}/selftest-iops.dat",
                   "--rw=randread", "--bs=4k", "--direct=1", "--size=32m", "--runtime=4",
                   "--time_based", "--ioengine=libaio", "--iodepth=8", "--output-format=json"])
        return next(m.value for m in parse_fio_json(out, "randread") if m.metric == "iops")

    return Check(tier, f"io_read_iops {IOPS}", IOPS, statistics.median([once(), once()]),
                 "IO/s", "fio O_DIRECT 4k random reads")


def _net_limit_check(tier: str, limited: Instance, server_side: Instance) -> Check:
    """net_mbit: the limited instance's own egress, iperf3 from it to another instance."""
    server = server_side.spawn(["iperf3", "-s", "-B", server_side.address(), "-p", "5203"])
    try:
        run = _until_listening(lambda argv: limited.exec(argv, 60).stdout)
        measured = statistics.median([_iperf3(run, server_side.address(), 5203) / 1e6
                                      for _ in range(2)])  # _iperf3 gives bit/s
    finally:
        server.stop()
    return Check(tier, f"net_mbit {NET_MBIT}", NET_MBIT * FRAME_EFFICIENCY, measured, "Mbit/s",
                 f"iperf3 TCP goodput out of an instance with net_mbit {NET_MBIT} "
                 f"(expected {NET_MBIT} x 1448/1514)")


def as_json(checks: list[Check]) -> str:
    return json.dumps([{**c.__dict__, "error": c.error, "passed": c.passed} for c in checks],
                      indent=2, default=str)
