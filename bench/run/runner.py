"""The runner: takes a plan to samples on disk.

Tiers are prepared once; each tier keeps a long-lived `main` instance (and a `peer` for network
workloads) across runs, restarted after a failure. Every sample is appended and fsynced as it is
taken; every finished run goes to the journal, so `--resume` knows what is left after a crash.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from bench.core import faults, hostinfo, hostlock, image
from bench.core.errors import BenchError, CommandError, CommandTimeout, TierUnavailable
from bench.core.rundir import RunDir, RunRecord
from bench.core.samples import Sample
from bench.run import adaptive, kills
from bench.run import plan as planning
from bench.run import switches as switching
from bench.run.phases import PhaseClock
from bench.run.scenario import Scenario
from bench.tiers.base import Instance, InstanceSpec, Tier, TierContext
from bench.tiers.registry import get as get_tier
from bench.tune.hook import TuningHook
from bench.workloads import WORKLOADS
from bench.workloads.base import RunContext

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


work_root = hostlock.work_root


@dataclass
class Outcome:
    rundir: RunDir
    total: int
    done: int = 0
    failed: int = 0
    interrupted: bool = False
    skipped_tiers: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops a run the way Ctrl-C does: cleanly, with everything removed."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def select_tiers(scenario: Scenario, only: Sequence[str] = ()) -> tuple[list[str], dict[str, str]]:
    """The scenario's tiers that can run here (`only`: a subset the user asked for)."""
    unknown = [name for name in only if name not in scenario.tiers]
    if unknown:
        raise BenchError(f"Tier(s) {', '.join(unknown)} are not in scenario {scenario.name!r} "
                         f"(its tiers: {', '.join(scenario.tiers)}).",
                         "pick --tier from the scenario's tiers, or add the tier to its `tiers:`.")
    usable, skipped = [], {}
    for name in [t for t in scenario.tiers if not only or t in only]:
        availability = get_tier(name).available()
        if availability.ok:
            usable.append(name)
        elif scenario.require_all_tiers:
            raise TierUnavailable(f"Tier {name!r} is unavailable: {availability.reason}",
                                  availability.fix)
        else:
            skipped[name] = f"{availability.reason} Fix: {availability.fix}".strip()
    if not usable:
        raise TierUnavailable("No tier of this scenario can run here: "
                              + "; ".join(f"{k}: {v}" for k, v in skipped.items()),
                              "run `bench doctor` and `bench setup`.")
    return usable, skipped


class Runner:
    def __init__(self, scenario: Scenario, scenario_text: str, rundir: RunDir,
                 tiers: list[str], skipped: dict[str, str], console: Console,
                 clock: PhaseClock | None = None) -> None:
        self.clock = clock or PhaseClock()
        self.scenario = scenario
        self.scenario_text = scenario_text
        self.rundir = rundir
        self.console = console
        self.plan = planning.expand(scenario, tiers, skipped)
        self.tier_names = tiers
        self.tiers: dict[str, Tier] = {}
        self.pool: dict[tuple[str, str], Instance] = {}
        self.workdir = work_root() / rundir.run_id
        self.tuning = TuningHook(scenario, rundir, tiers,  # sweeps of tunables / cache setups
                                 lambda m: console.print(m, markup=False, highlight=False))

    # -- instances -------------------------------------------------------------------------
    def _spec(self, role: str, command: list[str] | None) -> InstanceSpec:
        top = switching.ceiling(self.scenario.limits, self.scenario.switches) \
            if self.scenario.switches else None
        return InstanceSpec(role=role, limits=self.scenario.limits, command=command,
                            network=self.scenario.network, scratch=self.scenario.scratch,
                            ceiling=top)

    def _instance(self, tier: str, role: str) -> Instance:
        """The tier's long-lived `role` instance. The first one asked for brings up every role
        the plan will need of the tier (`main`, and `peer` for network workloads) in one
        `start_many`, which a tier of slow starters (VMs) does in parallel."""
        key = (tier, role)
        if key not in self.pool:
            roles = [r for r in self._roles(tier) if (tier, r) not in self.pool and r != role]
            roles.insert(0, role)
            started = self.tiers[tier].start_many([self._spec(r, None) for r in roles])
            self.pool.update({(tier, r): i for r, i in zip(roles, started, strict=True)})
            faults.point("instance.started")
        return self.pool[key]

    def _roles(self, tier: str) -> list[str]:
        workloads = [WORKLOADS[c.cell.workload] for c in self.plan.cells if c.cell.tier == tier]
        return [r for r, needed in (("main", any(w.needs_instance for w in workloads)),
                                    ("peer", any(w.needs_peer for w in workloads))) if needed]

    def _drop_instances(self, tier: str) -> None:
        for key in [k for k in self.pool if k[0] == tier]:
            with contextlib.suppress(Exception):
                self.pool.pop(key).stop()

    # -- the run ---------------------------------------------------------------------------
    def manifest(self, img: image.Image) -> dict[str, Any]:
        return {
            "format": 1,
            "run_id": self.rundir.run_id,
            "status": "running",
            "started_at": time.time(),
            "host": hostinfo.collect(),
            "image": {k: v for k, v in img.manifest.items() if k != "packages"}
            | {"packages": img.manifest.get("packages", {})},
            "scenario": {"name": self.scenario.name, "text": self.scenario_text,
                         "seed": self.scenario.seed},
            "tiers": self.tier_names,
            "skipped_tiers": self.plan.skipped_tiers,
            "skipped_cells": self.plan.skipped_cells,
            "plan": {"cells": len(self.plan.cells), "runs": len(self.plan.runs),
                     "estimate_s": round(self.plan.estimate_seconds(), 1)},
        }

    def execute(self, img: image.Image, resume: bool = False) -> Outcome:
        done_keys = self.rundir.done_keys() if resume else set()
        if resume:
            self._drop_orphan_samples(done_keys)
        else:
            self.rundir.write_manifest(self.manifest(img))
        todo = [r for r in self.plan.runs if r.key not in done_keys]
        outcome = Outcome(self.rundir, total=len(self.plan.runs), done=len(done_keys),
                          skipped_tiers=self.plan.skipped_tiers)
        self.run_lock = hostlock.RunLock(self.rundir.run_id)  # spared by others' cleanups
        stopped: BenchError | None = None  # the results disk filled up
        failing = False  # another error is on its way out: nothing below may mask it
        with _sigterm_as_interrupt():
            try:
                self.tuning.start(self.workdir)
                self._prepare_tiers(img)
                faults.point("tier.prepared")
                self._loop(todo, outcome)
                self._adapt(outcome)
            except KeyboardInterrupt:
                outcome.interrupted = True
            except OSError as exc:
                if exc.errno not in _NO_SPACE:
                    failing = True
                    raise
                stopped = self._results_full(exc)
            except BaseException:
                failing = True
                raise
            finally:
                try:
                    with self.clock.phase("teardown"):
                        self._teardown()
                    self._finish_tuning(failing or stopped is not None)
                except KeyboardInterrupt:
                    outcome.interrupted = True
                    self._teardown()
                    self._finish_tuning(failing or stopped is not None)
                status = "interrupted" if outcome.interrupted or stopped else "complete"
                try:
                    self.rundir.update_manifest(status=status, finished_at=time.time(),
                                                tier_metadata={n: t.metadata()
                                                               for n, t in self.tiers.items()},
                                                phases_s=self.clock.as_dict())
                except OSError as exc:
                    if failing or stopped is not None:
                        self._say(f"could not mark the run {status} in "
                                  f"{self.rundir.manifest_path}: {exc}")
                    elif exc.errno in _NO_SPACE:
                        stopped = self._results_full(exc)
                    else:
                        raise
        if stopped is not None:
            raise stopped
        return outcome

    def _say(self, text: str) -> None:
        self.console.print(f"[red]{text}[/red]", highlight=False)

    def _finish_tuning(self, quiet: bool) -> None:
        """Restore tunables and remove cache devices; when the run is already failing, a
        failure to note that in the manifest (a full disk) must not hide the first error.
        Then the work directory goes, and the run's liveness lock with it."""
        try:
            self.tuning.finish()
        except OSError as exc:
            if not quiet:
                raise
            self._say(f"tuning state could not be written to the manifest: {exc}")
        finally:
            run_lock = getattr(self, "run_lock", None)
            if run_lock is not None:
                run_lock.release()

    def _results_full(self, exc: OSError) -> BenchError:
        return BenchError(
            f"The results directory {self.rundir.path} ran out of space ({exc.strerror}"
            + (f": {exc.filename}" if exc.filename else "") + ") "
            f"after {len(self.rundir.records())} run(s); the run was stopped and torn down, "
            "and the samples written before are kept.",
            f"free space on the file system of {self.rundir.path.parent}, then finish the run "
            f"with `bench run --resume {self.rundir.run_id}`.")

    def _prepare_tiers(self, img: image.Image) -> None:
        planned = {c.cell.tier for c in self.plan.cells}  # no cell: every workload is not_on it
        for name in [n for n in self.tier_names if n in planned]:
            tier = get_tier(name)
            tier_dir = self.workdir / name
            tier_dir.mkdir(parents=True, exist_ok=True)
            self.tiers[name] = tier
            with self.clock.phase(f"prepare {name}"):
                tier.prepare(TierContext(self.rundir.run_id, img, tier_dir, self.rundir.raw))

    def _adapt(self, outcome: Outcome) -> None:
        """Adaptive repetitions: more rounds for cells whose CI is wider than `target_ci`."""
        while due := adaptive.due(self.scenario, self.plan.cells, self.rundir):
            runs = planning.add_round(self.plan, due, self.scenario.seed)
            outcome.total += len(runs)
            self._loop(runs, outcome)

    def _teardown(self) -> None:
        for key in list(self.pool):
            with contextlib.suppress(Exception):
                self.pool.pop(key).stop()
        for tier in self.tiers.values():
            try:
                tier.finish()
            except Exception as exc:  # report, and keep tearing the others down
                self.console.print(f"[red]cleanup of tier {tier.name} failed: {exc}; "
                                   "run `bench cleanup`[/red]")

    def _loop(self, todo: list[planning.PlannedRun], outcome: Outcome) -> None:
        total_estimate = sum(r.cell.estimate_s for r in self.plan.runs)
        done_estimate = total_estimate - sum(r.cell.estimate_s for r in todo)
        columns = (TextColumn("{task.description}"), BarColumn(),
                   TextColumn(f"{{task.fields[runs]}}/{len(self.plan.runs)} runs"),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        with Progress(*columns, console=self.console, transient=False) as progress:
            task = progress.add_task("starting", total=total_estimate, completed=int(done_estimate),
                                     runs=outcome.done)
            for planned in todo:
                label = planned.cell.cell
                progress.update(task, description=f"{label.tier:6} {label.label[:48]:48}"
                                + (" (warm-up)" if planned.warmup else ""))
                with self.clock.phase(f"runs {label.tier}"):
                    record = self._run_one(planned)
                self.rundir.add_record(record)
                outcome.done += 1
                if record.status != "ok":
                    outcome.failed += 1
                    progress.console.print(f"[yellow]{label.tier} {label.label}: "
                                           f"{record.status}: {record.error}[/yellow]")
                progress.update(task, advance=planned.cell.estimate_s, runs=outcome.done)

    def _run_one(self, planned: planning.PlannedRun) -> RunRecord:
        cell = planned.cell.cell
        workload = WORKLOADS[cell.workload]
        params = workload.parse_params(planned.cell.params)
        started = time.monotonic()
        ctx: RunContext | None = None
        try:
            instance = self._instance(cell.tier, "main") if workload.needs_instance else None
            peer = self._instance(cell.tier, "peer") if workload.needs_peer else None
            self.tuning.before_run(cell, self.tiers[cell.tier], instance, peer)
            ready = time.monotonic()  # the timeout is the workload's: instance starts are not
            timeout = planned.cell.timeout_s * self.tiers[cell.tier].timeout_factor()
            ctx = RunContext(tier=self.tiers[cell.tier], instance=instance, peer=peer,
                             new_spec=self._spec, deadline=ready + timeout,
                             raw_dir=self.rundir.raw,
                             run_key=f"{cell.tier}.{cell.workload}.{cell.key}.r{planned.repetition}")
            faults.point("workload.running")
            before = kills.snapshot(instance)
            try:
                if self.scenario.switches:
                    measurements = self._switch_run(ctx, workload, params, planned)
                else:
                    measurements = workload.run(ctx, params)
            except (CommandError, CommandTimeout) as exc:  # say what killed it, when known
                explained = kills.explain(exc, before, kills.snapshot(instance),
                                          self.scenario.limits, cell.workload, cell.label,
                                          timeout)
                if explained is exc:
                    raise
                raise explained from exc
        except (BenchError, OSError, ValueError) as exc:
            self._drop_instances(cell.tier)  # a failed instance is not reused
            if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
                raise  # our disk is full, not the workload failing: the run stops
            cause = exc.__cause__ if isinstance(exc.__cause__, CommandTimeout) else exc
            status = "timeout" if isinstance(cause, CommandTimeout) else "failed"
            stderr = getattr(exc, "stderr", "") or getattr(exc.__cause__, "stderr", "") or ""
            return RunRecord(key=planned.key, cell=cell.key, repetition=planned.repetition,
                             status=status, seconds=time.monotonic() - started,
                             error=str(exc), stderr=stderr[-4000:],
                             raw=ctx.raw_files if ctx else [])
        except Exception as exc:
            self._drop_instances(cell.tier)
            return RunRecord(key=planned.key, cell=cell.key, repetition=planned.repetition,
                             status="failed", seconds=time.monotonic() - started,
                             error=f"internal error: {exc!r}",
                             stderr=traceback.format_exc()[-4000:],
                             raw=ctx.raw_files if ctx else [])
        meta = {**(instance.metadata() if instance else {}),
                "tier": self.tiers[cell.tier].metadata(), **self.tuning.after_run(cell)}
        if not planned.warmup:
            now = time.time()
            for m in measurements:
                self.rundir.add_sample(Sample(
                    run_id=self.rundir.run_id, cell=cell, repetition=planned.repetition,
                    metric=m.metric, value=m.value, unit=m.unit, direction=m.direction,
                    timestamp=now, metadata={**meta, **m.metadata}))
        return RunRecord(key=planned.key, cell=cell.key, repetition=planned.repetition,
                         status="ok", seconds=time.monotonic() - started, raw=ctx.raw_files)

    def _switch_run(self, ctx: RunContext, workload: Any, params: Any,
                    planned: planning.PlannedRun) -> list[Any]:
        """A run with the scenario's switches (bench/run/switches.py); restarts the tier's
        instances when it cannot switch them back to the scenario's limits live."""
        cell = planned.cell.cell
        found, back_live = switching.run_recorded(
            ctx, workload, params, self.scenario, None if planned.warmup else self.rundir.path,
            {"tier": cell.tier, "workload": cell.workload, "cell": cell.key,
             "repetition": planned.repetition})
        if not back_live:
            self._drop_instances(ctx.tier.name)
        return found

    def _drop_orphan_samples(self, done_keys: set[str]) -> None:
        """Samples of a run that never reached the journal are set aside, then the run is redone."""
        path = self.rundir.samples_path
        if not path.exists():
            return
        keep: list[str] = []
        orphans: list[str] = []
        for line in path.read_text().splitlines():
            try:
                data = json.loads(line)
                key = f"{Sample.model_validate(data).cell.key}#{data['repetition']}"
            except ValueError:
                orphans.append(line)
                continue
            (keep if key in done_keys else orphans).append(line)
        if orphans:
            with open(self.rundir.raw / "orphaned-samples.jsonl", "a") as fh:
                fh.write("\n".join(orphans) + "\n")
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in keep))
            os.replace(tmp, path)
