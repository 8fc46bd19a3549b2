"""The measurements behind `bench selftest` (bench/cli/selftest.py): each injected limit, measured
with the tools a run uses, in interleaved pairs with bounded, reported retries."""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from bench.analysis.paired import PairedRatio, check_ratio, paired_ratio
from bench.core.errors import BenchError
from bench.core.limits import Limits, ScratchMode
from bench.tiers.base import Instance
from bench.workloads.disk_fio import FioParams, fio_argv, parse_fio_json

TOLERANCE = 0.05
RETRIES = 2  # attempts after the first when a check misses; every attempt is reported
MiB = 2**20
IOPS = 300  # io_read_iops: fio 4k random reads (the bps limit does not bind at 1.2 MB/s)
Run = Callable[[list[str]], str]
T = TypeVar("T")

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


def failed(tier: str, limit: str, set_: str, exc: BenchError) -> Check:
    """A measurement that broke (a tool error, a timeout): a failure of its own; the other
    checks are kept and reported."""
    return Check(tier, limit, 1, 0, "", f"not measured: {exc.cause} (fix: {exc.fix})",
                 set=set_, ok=False)


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
    share: Callable[[], float] | None = None  # a busy thread's CPU share, where `run`'s own
    free_share: Callable[[], float] | None = None  # clocks cannot tell it (a guest)
    io_burst_s: float = 0.0  # the tier's (Tier.io_burst_s)


def paired_check(tier: str, set_: str, limit: str, value: float, unit: str, scale: float,
            measure: Callable[[], PairedRatio], how: str) -> Check:
    """Expected ratio 1.0: measured / what the limit allows, with bounded retries."""
    verdict = check_ratio(measure, 1.0, TOLERANCE, RETRIES)
    median = verdict.attempts[-1].median
    return Check(tier, limit, value / scale, value * median / scale, unit,
                 f"{how}; {verdict.describe()}", set=set_,
                 ratios=[a.median for a in verdict.attempts], ok=verdict.ok)


def _share(run: Run) -> float:
    return float(run(["python3", "-c", _BUSY]).strip())


def vcpu_share(instance: Instance, seconds: float = 3.0) -> float:
    """A busy loop's CPU share as the host gives it to the instance's vCPUs: their CPU time
    over wall time in a window inside the loop (the guest's own clocks cannot see the host
    holding its vCPU back)."""
    busy = instance.spawn(["timeout", str(int(seconds) + 10), "sh", "-c", "while :; do :; done"])
    try:
        time.sleep(1.0)  # the loop is running
        cpu, wall = instance.cpu_seconds() or 0.0, time.monotonic()
        time.sleep(seconds)
        return ((instance.cpu_seconds() or 0.0) - cpu) / (time.monotonic() - wall)
    finally:
        busy.stop()


FREE_MIN = 0.8  # an unlimited thread that gets this much CPU: a quiet host
# Under contention CFS bandwidth control gives a throttled group less than its quota (0.7-0.85
# of it was seen at load 15-20 on 2 CPUs while an unlimited thread got 0.35-0.6): on a loaded
# host a quota passes when it holds (at most 1 + TOLERANCE of it) and does not starve the
# instance below this share of it.
LOADED_FLOOR = 0.6
PAIRS, MAX_PAIRS = 3, 6


class _Loaded(Exception):
    def __init__(self, pairs: list[tuple[float, float]]) -> None:
        super().__init__()
        self.pairs = pairs


def together(*measures: Callable[[], T]) -> list[T]:
    """Measurements taken at the same time: so that they see the same load, or, where they use
    different resources far below what the host carries, to save the time."""
    with ThreadPoolExecutor(len(measures)) as pool:
        return [f.result() for f in [pool.submit(m) for m in measures]]


def measure_cpus(probe: Probe, value: float) -> Check:
    """A busy thread under the quota next to an unlimited one, at the same time, in pairs; a
    pair expects min(quota, what the unlimited thread got).

    - Pairs whose unlimited thread got >= FREE_MIN (a quiet host): within TOLERANCE of the
      quota, with the bounded retries of every limit.
    - No such pair, but the unlimited thread got more than the quota (the quota binds): the
      quota holds and does not starve (LOADED_FLOOR), and the check says it ran loaded.
    - The unlimited thread never got more than the quota: nothing to tell the quota from the
      load, so the check is skipped with the shares measured."""
    def pairs() -> PairedRatio:
        seen: list[tuple[float, float]] = []
        while len(seen) < MAX_PAIRS and sum(f >= FREE_MIN for _, f in seen) < PAIRS:
            limited, free = together(probe.share or (lambda: _share(probe.run)),
                                     probe.free_share or (lambda: _share(probe.free)))
            seen.append((limited, free))
        quiet = [limited / value for limited, free in seen if free >= FREE_MIN]
        if not quiet:
            raise _Loaded(seen)
        return PairedRatio(tuple(quiet))

    try:
        return paired_check(probe.tier, probe.set, "cpus", value, "CPU", 1, pairs,
                       f"{_how(probe)} (an unlimited one at the same time got >= {FREE_MIN} "
                       "CPU)")
    except _Loaded as loaded:
        return _loaded_cpus(probe, value, loaded.pairs)


def _how(probe: Probe) -> str:
    return ("the host's CPU time for the vCPUs of a guest running a busy loop / wall time"
            if probe.share else "CPU time / wall time of a busy thread")


def _loaded_cpus(probe: Probe, value: float, seen: list[tuple[float, float]]) -> Check:
    frees = [free for _, free in seen]
    shares = f"{min(frees):.2f}-{max(frees):.2f}"
    binding = [limited / value for limited, free in seen if free > value * (1 + TOLERANCE)]
    if not binding:
        limited = statistics.median(limited for limited, _ in seen)
        return Check(probe.tier, "cpus", value, 0, "CPU", set=probe.set, skipped=(
            f"the host is too loaded to check a CPU quota of {value:g}: an unlimited thread "
            f"got {shares} CPU in {len(seen)} pairs, no more than the quota, so the quota "
            f"cannot bind (the limited thread got {limited:.2f}); run selftest on a quieter "
            "host"))
    median = statistics.median(binding)
    return Check(probe.tier, "cpus", value, value * median, "CPU", (
        f"{_how(probe)}, on a loaded host: an unlimited one at the same "
        f"time got {shares} CPU (< {FREE_MIN}); checked that the quota holds and does not "
        f"starve: {median:.2f} of the quota in {len(binding)} pairs (passes at "
        f"{LOADED_FLOOR}-{1 + TOLERANCE:g})"), set=probe.set, ratios=[median],
        ok=LOADED_FLOOR <= median <= 1 + TOLERANCE)


def _io(rw: str) -> Callable[[Probe, float], Check]:
    # the read file is laid out under the instance's write limit where one is set (10 MiB/s:
    # 1.6 s for 16 MiB); O_DIRECT reads wrap around it within the runtime, each one from disk
    params = FioParams(rw="read" if rw == "read" else "write", size_mb=16 if rw == "read" else 64,
                       runtime_s=2, iodepth=4)

    def rate(run: Run, scratch: str) -> float:
        out = run(fio_argv(params, scratch))
        return next(m.value for m in parse_fio_json(out, params.rw)
                    if m.metric == "bandwidth_MBps") * 1e6

    def measure(probe: Probe, value: float) -> Check:
        expected = value * (1 + probe.io_burst_s / params.runtime_s)

        def pairs() -> PairedRatio:
            return paired_ratio(lambda: rate(probe.run, probe.scratch), lambda: expected,
                                pairs=2)

        burst = (f"; expected {value / MiB:g} MiB/s x (1 + the tier's {probe.io_burst_s:g} s "
                 f"burst / {params.runtime_s:g} s)" if probe.io_burst_s else "")
        return paired_check(probe.tier, probe.set, f"io_{rw}_bps", expected, "MiB/s", MiB, pairs,
                       f"fio (disk.fio's command) O_DIRECT sequential {rw}, 1 MiB blocks{burst}")

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


def as_limits(values: dict[str, float]) -> Limits:
    return Limits(**{k: (v if k == "cpus" else int(v)) for k, v in values.items()})


def case_label(values: dict[str, float], mode: str) -> str:
    shown = [f"{k}={v / MiB:g}MiB/s" if k.startswith("io_") else f"{k}={v:g}"
             for k, v in values.items()]
    return " + ".join(shown) + f" ({mode})"


def measure_all(probe_for: Callable[[tuple[Limit, ...], dict[str, float], ScratchMode], Probe],
                 tier: str, full: bool, log: Callable[[str], None], scratch_modes: bool = True,
                 beside: Callable[[], list[Check]] | None = None) -> list[Check]:
    """Each case of `cases` once (without scratch modes, as on the host: each set once).

    Without `beside`, one case at a time. With it (instances that start without a guest's
    boot), the checks that do not disturb each other overlap: a CPU quota alone takes a busy
    thread and an unlimited one (measure_cpus), I/O throttled far below what a disk carries
    takes next to no CPU, so the I/O cases run one after another (one disk stream) next to the
    quota, and `beside` (the network checks: links of their own) next to them once the quota is
    measured. Cases that mix a quota with I/O limits (--full) run first, alone."""
    todo: list[tuple[tuple[Limit, ...], ScratchMode]] = []
    for limits, mode in cases(full):
        if scratch_modes or limits not in [done for done, _ in todo]:
            todo.append((limits, mode))
    quota = (BY_KEY["cpus"],)
    io = [case for case in todo if BY_KEY["cpus"] not in case[0]]
    cpu = [case for case in todo if case[0] == quota]
    mixed = [case for case in todo if case not in io and case not in cpu]

    def measure(selected: list[tuple[tuple[Limit, ...], ScratchMode]]) -> list[Check]:
        return [check for limits, mode in selected
                for check in _measure_case(probe_for, tier, limits, mode, full, log)]

    if beside is None:
        return measure(mixed + cpu + io)
    checks = measure(mixed)
    quotas: list[Check] = []

    def quotas_then_network() -> list[Check]:
        quotas.extend(measure(cpu))
        return beside()

    network, disk = together(quotas_then_network, lambda: measure(io))
    return [*checks, *quotas, *disk, *network]


def _measure_case(probe_for: Callable[[tuple[Limit, ...], dict[str, float], ScratchMode], Probe],
                  tier: str, limits: tuple[Limit, ...], mode: ScratchMode, full: bool,
                  log: Callable[[str], None]) -> list[Check]:
    values = _values(limits, full)
    log(f"selftest: {tier}: {case_label(values, mode)}")
    try:
        probe = probe_for(limits, values, mode)
    except BenchError as exc:
        return [Check(tier, x.key, 0, 0, "", skipped=exc.cause, set=case_label(values, mode))
                for x in limits]
    checks = []
    try:
        for limit in limits:
            try:
                checks.append(limit.measure(probe, values[limit.key]))
            except BenchError as exc:
                checks.append(failed(tier, limit.key, case_label(values, mode), exc))
    finally:
        probe.stop()
    return checks


# -- running it on the tiers --------------------------------------------------------------------


def readback_checks(tier: str, instance: Instance, limits: Limits) -> list[Check]:
    """Every numeric limit set on `instance`, as the kernel or hypervisor holds it now."""
    back = instance.read_limits()
    return [Check(tier, f"readback {key}", float(value), float(back.get(key) or 0), "as set",
                  "read back from the instance's cgroup, tc qdisc or libvirt")
            for key, value in limits.set_fields().items() if isinstance(value, int | float)]


def iops_check(tier: str, run: Run, scratch: str) -> Check:
    def once() -> float:
        out = run(["fio", "--name=selftest-iops", f"--filename={scratch}/selftest-iops.dat",
                   "--rw=randread", "--bs=4k", "--direct=1", "--size=8m", "--runtime=2",
                   "--time_based", "--ioengine=libaio", "--iodepth=8", "--output-format=json"])
        return next(m.value for m in parse_fio_json(out, "randread") if m.metric == "iops")

    return Check(tier, f"io_read_iops {IOPS}", IOPS, statistics.median([once(), once()]),
                 "IO/s", "fio O_DIRECT 4k random reads")
