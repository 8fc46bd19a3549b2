"""`bench run` and `bench summary`."""

from __future__ import annotations

import sys

import click
from rich.table import Table

from bench.analysis.summary import print_summary
from bench.cli import doctor as doctor_mod
from bench.cli.common import EXIT_INTERRUPTED, console
from bench.cli.host import cleanup_dead_runs
from bench.core import hostlock
from bench.core import image as image_mod
from bench.core.errors import BenchError
from bench.core.rundir import RunDir, new_run_id
from bench.run import plan as planning
from bench.run import scenario as scenario_mod
from bench.run.runner import Runner, select_tiers
from bench.run.runner import _sigterm_as_interrupt as sigterm_as_interrupt
from bench.tune.sweep import notes as sweep_notes


@click.command()
@click.argument("scenario", default=scenario_mod.DEFAULT_SCENARIO)
@click.option("--dry-run", is_flag=True, help="Print the plan and exit.")
@click.option("--resume", "resume_id", metavar="RUN_ID", help="Finish an interrupted run.")
@click.option("--all-metrics", is_flag=True, help="Show every metric in the summary.")
@click.option("--wait", is_flag=True, help="Queue behind another bench run instead of refusing.")
@click.option("--tier", "only", multiple=True, metavar="NAME",
              help="Run only this tier of the scenario (repeatable).")
def run(scenario: str, dry_run: bool, resume_id: str | None, all_metrics: bool,
        wait: bool, only: tuple[str, ...]) -> None:
    """Run SCENARIO (a shipped name or a YAML path; default: quick)."""
    if resume_id and only:
        raise BenchError("--tier cannot narrow a resumed run: it finishes the plan it started.",
                         "drop --tier, or start a new run with it.")
    if dry_run and not resume_id:
        parsed, _ = scenario_mod.load(scenario)
        tiers, skipped = select_tiers(parsed, only)
        _print_plan(planning.expand(parsed, tiers, skipped))
        for note in sweep_notes(parsed.sweep, tiers):
            console.print(f"[yellow]left out: {note}[/yellow]", highlight=False, markup=True)
        return
    with hostlock.hold(resume_id or "(starting)", wait=wait), sigterm_as_interrupt():
        _run_locked(scenario, resume_id, all_metrics, only)


COPY_FROM_BYTES = 30 * 2**20  # about 100,000 samples (bench/analysis/parquet_copy.py)


def _run_locked(scenario: str, resume_id: str | None, all_metrics: bool,
                only: tuple[str, ...] = ()) -> None:
    from bench.run.phases import PhaseClock

    clock = PhaseClock()
    for line in cleanup_dead_runs():
        console.print(f"[yellow]removed a leftover of a dead run: {line}[/yellow]",
                      highlight=False)
    if resume_id:
        rundir = RunDir.open(resume_id)
        manifest = rundir.manifest()
        if manifest.get("status") == "complete":
            console.print(f"run {rundir.run_id} is already complete.")
            print_summary(rundir, console, all_metrics)
            return
        parsed = scenario_mod.parse(manifest["scenario"]["text"], f"{rundir.path}/manifest.json")
        text = manifest["scenario"]["text"]
        tiers, skipped = manifest["tiers"], manifest.get("skipped_tiers", {})
        img = image_mod.require()
        if img.hash != manifest["image"]["hash"]:
            raise BenchError(
                f"Run {rundir.run_id} used bench image {manifest['image']['hash']}, but this "
                f"bench builds {img.hash}; the rest would run different binaries.",
                "resume with the bench version that started the run, or start a new run.")
    else:
        parsed, text = scenario_mod.load(scenario)
        tiers, skipped = select_tiers(parsed, only)
        with clock.phase("image"):
            img = image_mod.find() or image_mod.build(log=console.print)
        doctor_mod.preflight([w.workload for w in parsed.workloads], img)
        rundir = RunDir.create(new_run_id(parsed.name))
    runner = Runner(parsed, text, rundir, tiers, skipped, console, clock)
    console.print(f"run [bold]{rundir.run_id}[/bold]: {len(runner.plan.runs)} runs of "
                  f"{len(runner.plan.cells)} cells on {', '.join(tiers)}; results in {rundir.path}")
    for tier, reason in skipped.items():
        console.print(f"[yellow]tier {tier} skipped: {reason}[/yellow]", highlight=False)
    outcome = runner.execute(img, resume=bool(resume_id))
    if outcome.interrupted:
        console.print(f"[yellow]interrupted after {outcome.done} of {outcome.total} runs; the "
                      f"samples taken are in {rundir.path}. Resume with:[/yellow]")
        # on a line of its own, never wrapped: a command to copy
        console.print(f"bench run --resume {rundir.run_id}", soft_wrap=True, highlight=False)
        console.print(clock.line(), highlight=False)
        sys.exit(EXIT_INTERRUPTED)
    samples = rundir.samples_path
    if samples.exists() and samples.stat().st_size > COPY_FROM_BYTES:
        # a big run: parsed once now, so reports, compare and history read the Parquet copy
        from bench.analysis.frame import read_frame

        with clock.phase("columnar copy"):
            read_frame(rundir.samples_path)
    print_summary(rundir, console, all_metrics)
    console.print(f"results: {rundir.path}")
    console.print(clock.line(), highlight=False)


def _print_plan(plan: planning.Plan) -> None:
    out = Table(title="plan")
    for column in ("tier", "workload", "params", "reps", "est. s/run", "timeout s"):
        out.add_column(column)
    for c in plan.cells:
        params = ", ".join(f"{k}={v}" for k, v in sorted({**c.params, **c.cell.tunables}.items()))
        params += f", cache={c.cell.cache}" if c.cell.cache != "none" else ""
        out.add_row(c.cell.tier, c.cell.workload, params, str(c.repetitions),
                    f"{c.estimate_s:.1f}", f"{c.timeout_s:.0f}")
    console.print(out)
    for tier, reason in plan.skipped_tiers.items():
        console.print(f"[yellow]tier {tier} skipped: {reason}[/yellow]", highlight=False)
    for cell, reason in plan.skipped_cells.items():
        console.print(f"[yellow]{cell} takes no part: {reason}[/yellow]", highlight=False)
    warmups = sum(1 for r in plan.runs if r.warmup)
    console.print(f"{len(plan.cells)} cells, {len(plan.runs)} runs ({warmups} warm-up), "
                  f"estimated {plan.estimate_seconds() / 60:.1f} min of workload time")


@click.command()
@click.argument("run_id")
@click.option("--all-metrics", is_flag=True)
def summary(run_id: str, all_metrics: bool) -> None:
    """Print the summary table of a run."""
    print_summary(RunDir.open(run_id), console, all_metrics)
