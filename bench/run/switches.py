"""Switch runs: limits changed on running instances while one long workload runs.

The workload runs in a thread and reports a 1-second time series (Workload.run_series); at each
switch's `at_s` (seconds after the tool's start) every instance of the run is switched through
its tier's live interface (Instance.switch), and the call's latency is kept. A tool in a
throttled TCG guest starts seconds after the exec call (which left the first level without
points), so the switches' clock starts with the tool, seen from inside while it runs (see
`tool_start`): at its first point less that point's time where the tool prints its points as it
goes (the series' own timeline is then the switches'), else at its start stamp, else at the
exec call; the series is then put on that timeline by its end (see `aligned`).

Per switch and limit the series shows (the limit -> metric map is the workload's
`series_metric`):
- level before: the median of the last 3 points before the switch;
- level after: the median of the last 3 points before the next switch (or the end);
- expected level: what the limit allows where that is known in the series' unit (disk MB/s or
  IO/s; network goodput = Mbit/s x 1448/1514, tbf counting whole frames; CPU: the level before
  x new/old quota, or the quota itself where the CPU is judged by the host's count of it, see
  bench.run.cpushare);
- time to effect: from the switch call until the 1-second value stays within 5% of the level
  after for 3 consecutive seconds: the end of the first of those seconds (an upper bound, at
  1 s resolution); "not reached" if that does not happen within 30 s, or before the next
  switch of the same limit (a level of a limit spans switches of other limits).
Memory has no rate: on the container tiers an allocation halfway between the old and the new
limit is tried just before and just after the switch (it must change from fail to succeed, or
back); on a VM the guest's MemTotal is read until it has moved by the switched amount (30 s).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError, CommandError
from bench.core.limits import Limits
from bench.core.samples import Measurement
from bench.run import cpushare
from bench.run.scenario import Scenario, Switch
from bench.tiers.base import Instance
from bench.workloads.base import Params, RunContext, Series, Workload

BAND = 0.05
STEADY_S = 3
GIVE_UP_S = 30.0
STAMP_WAIT_S = 60.0
GOODPUT = 1448 / 1514  # TCP payload per Ethernet frame at MTU 1500 with timestamps
SERIES_FILE = "switches.jsonl"  # one line per switch run: its series and switch events


@dataclass
class LimitEffect:
    limit: str
    old: Any
    new: Any
    metric: str
    level_before: float | None
    level_after: float | None
    expected_after: float | None
    time_to_effect_s: float | None  # None: not reached
    note: str = ""

    @property
    def matches_limit(self) -> bool | None:
        if self.level_after is None or not self.expected_after:
            return None
        return abs(self.level_after / self.expected_after - 1) <= BAND


@dataclass
class SwitchEvent:
    index: int
    at_s: float  # planned
    called_s: float  # when the call was made, seconds after the workload's start
    set: dict[str, Any]
    latency_s: float
    instances: list[dict[str, Any]]  # role, live, changes
    effects: list[LimitEffect] = field(default_factory=list)
    memory: dict[str, Any] | None = None


def ceiling(initial: Limits, switches: list[Switch]) -> Limits:
    """The largest limits a run with these switches reaches."""
    steps, current = [initial], initial
    for switch in switches:
        current = current.merged(switch.set)
        steps.append(current)
    return Limits.ceiling(steps)


def level(points: list[tuple[float, float]], start: float, end: float) -> float | None:
    """Median of the last STEADY_S whole seconds in (start, end]: a point (the rate over the
    second that ends at t) counts only if its whole second lies inside; one that straddles
    the next switch is half the next level (it made the ns io_read_iops lift "not reached")."""
    inside = [v for t, v in points if start + 1 <= t <= end]
    return statistics.median(inside[-STEADY_S:]) if inside else None


def time_to_effect(points: list[tuple[float, float]], at: float, target: float,
                   until: float) -> float | None:
    """Seconds from `at` to the end of the first of STEADY_S consecutive seconds within BAND
    of `target` (by then the limit had taken effect: an upper bound at 1 s resolution),
    looking no further than GIVE_UP_S and `until`; None if never."""
    window = [(t, v) for t, v in points if t > at and t <= min(at + GIVE_UP_S, until)]
    streak = 0
    for index, (_, value) in enumerate(window):
        streak = streak + 1 if target and abs(value / target - 1) <= BAND else 0
        if streak == STEADY_S:
            first_end = window[index - STEADY_S + 1][0]
            return max(0.0, first_end - at)
    return None


def expected(limit: str, old: Any, new: Any, before: float | None) -> float | None:
    if limit in ("io_read_bps", "io_write_bps"):
        return float(new) / 1e6
    if limit in ("io_read_iops", "io_write_iops"):
        return float(new)
    if limit == "net_mbit":
        return float(new) * GOODPUT
    if limit == "cpus" and old and before:
        return before * float(new) / float(old)
    return None


def _allocates(instance: Instance, mb: int) -> bool:
    try:
        instance.exec(["python3", "-c", "import sys; b = b'x' * (int(sys.argv[1]) << 20)",
                       str(mb)], timeout=60)
    except CommandError:
        return False
    return True


class _MemoryLook:
    """A memory switch's effect: a look before the switch (taken before its clock starts, so
    that it delays no other limit's switch) and one after."""

    def __init__(self, instance: Instance, old: int | None, new: int) -> None:
        self.instance, self.old, self.new = instance, old, new
        self.seen = instance.memory_seen_mb()  # a VM: its MemTotal must move by the switch
        self.probe = ((old or new) + new) // 2
        self.before = _allocates(instance, self.probe) if self.seen is None else None

    def after(self, called: float) -> dict[str, Any]:
        if self.seen is not None:
            want = self.new - (self.old or self.new)
            while True:
                now = self.instance.memory_seen_mb() or self.seen
                moved = now - self.seen
                done = want == 0 or abs(moved / want - 1) <= BAND
                if done or time.monotonic() - called > GIVE_UP_S:
                    break
                time.sleep(0.5)
            return {"how": "guest MemTotal", "before_mb": round(self.seen, 1),
                    "after_mb": round(now, 1), "moved_mb": round(moved, 1),
                    "switched_mb": want, "reached": done,
                    "time_to_effect_s": time.monotonic() - called if done else None}
        after = _allocates(self.instance, self.probe)
        changed = self.before != after
        return {"how": f"allocating {self.probe} MB inside",
                "before": "succeeded" if self.before else "failed",
                "after": "succeeded" if after else "failed", "reached": changed,
                "time_to_effect_s": time.monotonic() - called if changed else None}


@dataclass
class SwitchRun:
    series: Series  # on the switches' timeline (seconds after the exec call)
    events: list[SwitchEvent]
    skipped: list[str]
    shift_s: float = 0.0  # the tool's own t=0, seconds after the exec call
    clock_from: str = "exec call"  # what the switches' clock started at (see tool_start)

    def measurements(self) -> list[Measurement]:
        found = list(self.series.measurements)
        for event in self.events:
            meta = {"switch": event.index, "at_s": event.at_s, "set": event.set,
                    "live": all(i["live"] for i in event.instances)}
            found.append(Measurement(metric=f"switch{event.index}_call_s",
                                     value=event.latency_s, unit="s", direction="lower",
                                     metadata=meta))
            for effect in event.effects:
                if effect.time_to_effect_s is not None:
                    found.append(Measurement(
                        metric=f"switch{event.index}_{effect.limit}_effect_s",
                        value=effect.time_to_effect_s, unit="s", direction="lower",
                        metadata={**meta, **asdict(effect)}))
            if event.memory and event.memory.get("time_to_effect_s") is not None:
                found.append(Measurement(
                    metric=f"switch{event.index}_memory_mb_effect_s",
                    value=event.memory["time_to_effect_s"], unit="s", direction="lower",
                    metadata={**meta, **event.memory}))
        return found

    def record(self) -> dict[str, Any]:
        return {"metrics": self.series.units, "points": self.series.points,
                "tool_start_s": round(self.shift_s, 3), "clock_from": self.clock_from,
                "switches": [asdict(e) | {"effects": [asdict(x) | {"matches_limit":
                                                                   x.matches_limit}
                                                      for x in e.effects]}
                             for e in self.events],
                "skipped": self.skipped}


def run_recorded(ctx: RunContext, workload: Workload[Any], params: Params, scenario: Scenario,
                 rundir: Path | None, cell: dict[str, Any]) -> tuple[list[Measurement], bool]:
    """A switch run of the runner: its series and switch events appended to SERIES_FILE in
    `rundir` (None: a warm-up, not kept), the instances given the scenario's limits back after
    it. Returns the measurements and whether that switch back was live."""
    instances = {role: i for role, i in (("main", ctx.instance), ("peer", ctx.peer))
                 if i is not None}
    try:
        done = run(ctx, workload, params, scenario.switches, instances, scenario.limits)
    finally:
        back = [i.switch(scenario.limits) for i in instances.values()]
    if rundir is not None:
        with open(rundir / SERIES_FILE, "a") as fh:
            fh.write(json.dumps({"run_key": ctx.run_key, **cell, **done.record()},
                                default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    return done.measurements(), all(r.live for r in back)


def run(ctx: RunContext, workload: Workload[Any], params: Params, switches: list[Switch],
        instances: dict[str, Instance], initial: Limits) -> SwitchRun:
    """One switch run: the workload in a thread, the switches on time, then the metrics."""
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["series"] = workload.run_series(ctx, params)
            outcome["done_at"] = time.monotonic()
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    workload.before_series(ctx, params)
    ctx = dataclasses.replace(ctx, start_stamp=f"/tmp/bench-series-{secrets.token_hex(4)}",
                              live_output=workload.series_live)
    thread = threading.Thread(target=work, name="switch-run-workload", daemon=True)
    called0 = time.monotonic()
    thread.start()
    started, seen = tool_start(ctx, workload, thread)
    t0 = called0 if started is None else started
    sampler = None
    if cpushare.wanted(ctx.main(), any(s.set.cpus is not None for s in switches),
                       ctx.tier.cpu_share_inside):
        sampler = cpushare.CpuShare(ctx.main(), t0, thread)
        sampler.start()
    events: list[SwitchEvent] = []
    skipped: list[str] = []
    current = initial
    for index, switch in enumerate(switches, 1):
        old = current
        current = current.merged(switch.set)
        # the memory look before (an allocation takes seconds) is taken while waiting, so the
        # switch is still made on time; nothing changes the memory limit in between
        look = _MemoryLook(instances["main"], old.memory_mb, switch.set.memory_mb) \
            if switch.set.memory_mb is not None and "main" in instances else None
        thread.join(max(0.0, t0 + switch.at_s - time.monotonic()))
        if not thread.is_alive():
            skipped.append(f"switch {index} at {switch.at_s:g} s: the workload had ended")
            continue
        called = time.monotonic()
        results = {role: instance.switch(switch.set) for role, instance in instances.items()}
        memory = look.after(called) if look is not None else None
        events.append(SwitchEvent(
            index=index, at_s=switch.at_s, called_s=called - t0,
            set=switch.set.set_fields(),
            latency_s=max(r.latency_s for r in results.values()),
            instances=[{"role": role, "live": r.live, "latency_s": r.latency_s,
                        "changes": [asdict(c) for c in r.changes]}
                       for role, r in results.items()],
            memory=memory))
    thread.join(max(1.0, ctx.deadline - time.monotonic()))
    if thread.is_alive():
        raise BenchError("The switch run's workload did not end before its deadline.",
                         "give the workload a shorter duration or a longer timeout_s.")
    if "error" in outcome:
        raise outcome["error"]
    if seen == "first point":  # the tool's own timeline is the switches'
        series, shift = outcome["series"], 0.0
    else:
        series, shift = aligned(outcome["series"], outcome["done_at"] - t0)
    shift += t0 - called0
    metrics = dict(workload.series_metric or {})
    if sampler is not None:
        sampler.join(5)
        series.points[cpushare.METRIC] = sampler.points
        series.units[cpushare.METRIC] = cpushare.UNIT
        metrics["cpus"] = cpushare.METRIC
    _effects(events, series, metrics, initial)
    return SwitchRun(series, events, skipped, shift, seen)


def tool_start(ctx: RunContext, workload: Workload[Any],
               thread: threading.Thread) -> tuple[float | None, str]:
    """When the tool's own t=0 was, on the host's clock, read from inside while it runs, and
    how it was seen:
    - "first point": a tool that prints its points as it goes (Workload.series_live): the
      moment its first point was seen less that point's own time (late by at most a poll);
    - "stamp": else its start stamp (bench-stamp, just before the tool is exec'd; the tool's
      own start-up comes after it: milliseconds, seconds in a throttled TCG guest);
    None if neither comes within STAMP_WAIT_S (or the workload ended first), or the
    instance's clock cannot be put on the host's."""
    instance, stamp = ctx.main(), str(ctx.start_stamp)
    give_up = time.monotonic() + STAMP_WAIT_S
    started: float | None = None
    while thread.is_alive() and time.monotonic() < give_up:
        with contextlib.suppress(BenchError, OSError):
            if started is None:
                text = instance.read_file(stamp).decode(errors="replace")
                line = next((x for x in text.splitlines() if '"bench-stamp"' in x), "")
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    started = instance.host_clock(int(json.loads(line)["monotonic_ns"]) / 1e9)
                if started is None:
                    time.sleep(0.1)
                    continue
                if not workload.series_live:
                    return started, "stamp"
            output = instance.read_file(f"{stamp}.out").decode(errors="replace")
            first = workload.first_point(output)
            if first is not None:
                return max(started, time.monotonic() - first), "first point"
        time.sleep(0.1)
    return started, "stamp" if started is not None else "exec call"


def aligned(series: Series, done_s: float) -> tuple[Series, float]:
    """The series on the switches' timeline: a tool's own t=0 comes after the exec call by
    its set-up (fio lays out its file, a VM's agent starts the process), so its end (its own
    run time, else its last point) is put at the moment its exec returned (what follows, a
    summary and an exit, takes milliseconds)."""
    last = series.duration_s or max((t for pts in series.points.values() for t, _ in pts),
                                    default=done_s)
    shift = max(0.0, done_s - last)
    points = {m: [(round(t + shift, 3), v) for t, v in pts] for m, pts in series.points.items()}
    return Series(points, series.units, series.measurements), shift


def _effects(events: list[SwitchEvent], series: Series, limits_metric: dict[str, str],
             initial: Limits) -> None:
    end = max((t for pts in series.points.values() for t, _ in pts), default=0.0)
    current = initial
    for position, event in enumerate(events):
        for limit, new in event.set.items():
            # the segment this limit held its old / new value: from the switch of it before
            # to the next switch of it (switches of other limits in between do not count)
            prev = max((e.called_s for e in events[:position] if limit in e.set), default=0.0)
            nxt = min((e.called_s for e in events[position + 1:] if limit in e.set),
                      default=end)
            old = getattr(current, limit)
            metric = limits_metric.get(limit)
            if metric is None or metric not in series.points:
                continue
            points = series.points[metric]
            before = level(points, prev, event.called_s)
            after = level(points, event.called_s, nxt)
            note = ""
            effect: float | None = None
            if not event.instances or not all(
                    c["live"] for i in event.instances for c in i["changes"]
                    if c["limit"] == limit):
                note = "not live: no effect looked for"
            elif before and after and abs(after / before - 1) <= 2 * BAND:
                note = "no change of level seen"
            elif after:
                effect = time_to_effect(points, event.called_s, after, nxt)
                note = "" if effect is not None else "not reached"
            wanted = float(new) if metric == cpushare.METRIC else \
                expected(limit, old, new, before)
            event.effects.append(LimitEffect(limit, old, new, metric, before, after, wanted,
                                             effect, note))
        current = current.merged(Limits.model_validate(event.set))
