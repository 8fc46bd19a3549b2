"""The `bench` command."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.analysis.summary import print_summary
from bench.cli import analysis as analysis_cli
from bench.cli import doctor as doctor_mod
from bench.cli import tune as tune_cli
from bench.core import hostlock, safefs
from bench.core import image as image_mod
from bench.core.errors import BenchError
from bench.core.rundir import RunDir, new_run_id
from bench.kernel import sysmount
from bench.run import plan as planning
from bench.run import scenario as scenario_mod
from bench.run.runner import Runner, select_tiers, work_root
from bench.run.runner import _sigterm_as_interrupt as sigterm_as_interrupt
from bench.tiers import TIERS
from bench.tune.sweep import notes as sweep_notes
from bench.workloads import WORKLOADS

console = Console(width=None if sys.stdout.isatty() else 160)
EXIT_INTERRUPTED = 130


def fail(exc: BenchError) -> None:
    console.print(f"[bold red]error:[/bold red] {exc.cause}", markup=True, highlight=False)
    if exc.fix:
        console.print(f"[bold]fix:[/bold] {exc.fix}", highlight=False)
    sys.exit(2)


class BenchGroup(click.Group):
    """Turns every BenchError into a one-paragraph message instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BenchError as exc:
            fail(exc)


@click.group(cls=BenchGroup)
@click.version_option(package_name="bench")
def main() -> None:
    """What isolation costs on this host: host, namespace containers, Docker and KVM."""


@main.command()
@click.argument("scenario", default=scenario_mod.DEFAULT_SCENARIO)
@click.option("--dry-run", is_flag=True, help="Print the plan and exit.")
@click.option("--resume", "resume_id", metavar="RUN_ID", help="Finish an interrupted run.")
@click.option("--all-metrics", is_flag=True, help="Show every metric in the summary.")
@click.option("--wait", is_flag=True, help="Queue behind another bench run instead of refusing.")
def run(scenario: str, dry_run: bool, resume_id: str | None, all_metrics: bool,
        wait: bool) -> None:
    """Run SCENARIO (a shipped name or a YAML path; default: quick)."""
    if dry_run and not resume_id:
        parsed, _ = scenario_mod.load(scenario)
        _print_plan(planning.expand(parsed, *select_tiers(parsed)))
        for note in sweep_notes(parsed.sweep, select_tiers(parsed)[0]):
            console.print(f"[yellow]left out: {note}[/yellow]", highlight=False, markup=True)
        return
    with hostlock.hold(resume_id or "(starting)", wait=wait), sigterm_as_interrupt():
        _run_locked(scenario, resume_id, all_metrics)


def _run_locked(scenario: str, resume_id: str | None, all_metrics: bool) -> None:
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
        tiers, skipped = select_tiers(parsed)
        img = image_mod.find() or image_mod.build(log=console.print)
        doctor_mod.preflight([w.workload for w in parsed.workloads], img)
        rundir = RunDir.create(new_run_id(parsed.name))
    runner = Runner(parsed, text, rundir, tiers, skipped, console)
    console.print(f"run [bold]{rundir.run_id}[/bold]: {len(runner.plan.runs)} runs of "
                  f"{len(runner.plan.cells)} cells on {', '.join(tiers)}; results in {rundir.path}")
    for tier, reason in skipped.items():
        console.print(f"[yellow]tier {tier} skipped: {reason}[/yellow]", highlight=False)
    outcome = runner.execute(img, resume=bool(resume_id))
    if outcome.interrupted:
        console.print(f"[yellow]interrupted after {outcome.done} of {outcome.total} runs; the "
                      f"samples taken are in {rundir.path}. Resume with: "
                      f"bench run --resume {rundir.run_id}[/yellow]")
        sys.exit(EXIT_INTERRUPTED)
    print_summary(rundir, console, all_metrics)
    console.print(f"results: {rundir.path}")


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
    warmups = sum(1 for r in plan.runs if r.warmup)
    console.print(f"{len(plan.cells)} cells, {len(plan.runs)} runs ({warmups} warm-up), "
                  f"estimated {plan.estimate_seconds() / 60:.1f} min of workload time")


@main.command("list")
def list_cmd() -> None:
    """Show the shipped scenarios, tiers and workloads (with their parameters)."""
    scen = Table(title="scenarios")
    scen.add_column("name")
    scen.add_column("description")
    for path in sorted(scenario_mod.scenario_dir().glob("*.yaml")):
        try:
            parsed = scenario_mod.parse(path.read_text(), str(path))
            scen.add_row(path.stem, parsed.description)
        except BenchError as exc:
            scen.add_row(path.stem, f"[red]invalid: {exc.cause}[/red]")
    console.print(scen)
    tiers = Table(title="tiers")
    tiers.add_column("name")
    tiers.add_column("description")
    for name, cls in TIERS.items():
        tiers.add_row(name, cls.description)
    console.print(tiers)
    loads = Table(title="workloads")
    for column in ("name", "family", "description", "parameters (default)"):
        loads.add_column(column)
    for name, w in WORKLOADS.items():
        fields = ", ".join(f"{k} ({f.default})" for k, f in w.params_model.model_fields.items())
        loads.add_row(name, w.family, w.description, fields or "-")
    console.print(loads)


@main.command()
def doctor() -> None:
    """Is every tier and workload ready here? If not, why, and the fix."""
    out = Table(title="bench doctor")
    for column in ("kind", "name", "ready", "why not / details", "fix"):
        out.add_column(column)
    checks = doctor_mod.checks()
    for c in checks:
        out.add_row(c.kind, c.name, "[green]yes[/green]" if c.ok else "[red]no[/red]",
                    c.reason, c.fix)
    console.print(out)


@main.command()
def setup() -> None:
    """Install the prerequisites of every tier and workload, start daemons, build the image."""
    doctor_mod.setup(log=console.print)
    console.print("setup done; `bench doctor` shows what is ready.")


@main.group("image")
def image_group() -> None:
    """The bench image every tier runs."""


@image_group.command("build")
@click.option("--force", is_flag=True, help="Rebuild even when the image is cached.")
def image_build(force: bool) -> None:
    """Build the bench image with mmdebstrap (cached by the hash of its recipe)."""
    img = image_mod.build(force=force, log=console.print)
    console.print(f"image {img.hash}: {img.rootfs}")


@image_group.command("show")
def image_show() -> None:
    """Show the bench image's hash, tools and size."""
    img = image_mod.require()
    manifest = img.manifest
    out = Table(title=f"bench image {img.hash}")
    out.add_column("field")
    out.add_column("value")
    out.add_row("path", str(img.path))
    out.add_row("suite", manifest["recipe"]["suite"])
    out.add_row("size", f"{manifest['size_bytes'] / 2**20:.0f} MiB")
    out.add_row("packages", str(len(manifest["packages"])))
    for tool, version in manifest["tools"].items():
        out.add_row(tool, version)
    console.print(out)


@main.command()
@click.argument("run_id")
@click.option("--all-metrics", is_flag=True)
def summary(run_id: str, all_metrics: bool) -> None:
    """Print the summary table of a run."""
    print_summary(RunDir.open(run_id), console, all_metrics)


@main.command()
@click.option("--tier", "tiers", multiple=True, help="Only these tiers (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--full", is_flag=True,
              help="Every limit alone and in pairs, on both scratch modes, with values other "
                   "than the defaults (a validation, minutes per tier).")
def selftest(tiers: tuple[str, ...], as_json: bool, full: bool) -> None:
    """Inject CPU, I/O and network limits and measure each on every tier (within 5%)."""
    from bench.cli import selftest as st

    names = list(tiers) or list(TIERS)
    unknown = [t for t in names if t not in TIERS]
    if unknown:
        raise BenchError(f"Unknown tier(s): {', '.join(unknown)}.",
                         f"choose from: {', '.join(TIERS)}.")
    with hostlock.hold("(selftest)"):
        checks = st.SelfTest(names, log=console.print, full=full).run()
    if as_json:
        click.echo(st.as_json(checks))
    else:
        out = Table(title=f"bench selftest (pass: within {st.TOLERANCE:.0%} of the injected value)")
        for column in ("tier", "limit", "set", "expected", "measured", "unit", "error",
                       "result", "how"):
            out.add_column(column)
        for c in checks:
            if c.skipped:
                out.add_row(c.tier, c.limit, c.set, "-", "-", c.unit, "-",
                            "[yellow]skipped[/yellow]", escape(c.skipped))
                continue
            out.add_row(c.tier, c.limit, c.set, f"{c.expected:.3g}", f"{c.measured:.3g}",
                        c.unit, f"{c.error:.1%}",
                        "[green]pass[/green]" if c.passed else "[red]FAIL[/red]", c.detail)
        console.print(out)
    if any(not c.passed and not c.skipped for c in checks):
        sys.exit(1)


def cleanup_leftovers(run_id: str | None) -> list[str]:
    removed = []
    cleaners = [(name, cls().cleanup) for name, cls in TIERS.items()]
    cleaners.append(("tune", tune_cli.cleanup))  # journals, cache devices
    cleaners.append(("image", lambda run_id: image_mod.remove_dead_builds()))  # killed builds
    for name, clean in cleaners:
        try:
            removed += [f"{name}: {what}" for what in clean(run_id)]
        except Exception as exc:  # one tier's failure must not stop the others' cleanup
            console.print(f"[red]cleanup of {name} failed: {exc}; run `bench cleanup` again "
                          "once its cause is fixed[/red]", highlight=False)
    return removed


def cleanup_dead_runs() -> list[str]:
    """Work directories bench made (its marker) whose run no process holds any more belong to
    dead runs: remove what they left. Directories without the marker are never touched."""
    removed = []
    for work in hostlock.dead_run_dirs():
        removed += cleanup_leftovers(work.name)
        if not sysmount.mounts_under(work) and safefs.remove_marked(work):
            removed.append(f"work directory {work}")
    return removed


@main.command()
@click.option("--run", "run_id", help="Only what this run left (default: every dead bench run).")
def cleanup(run_id: str | None) -> None:
    """Remove what a killed run left behind (mounts, containers, networks, ...); runs that
    are still going are left alone."""
    if run_id is not None and hostlock.run_is_live(run_id):
        raise BenchError(f"Run {run_id} is still going (its process holds its lock).",
                         "stop that run first (Ctrl-C), or wait for it to finish.")
    with hostlock.hold("(cleanup)"):
        if run_id is not None:
            removed = cleanup_leftovers(run_id)
            work = work_root() / run_id
            if not sysmount.mounts_under(work) and safefs.remove_marked(work):
                removed.append(f"work directory {work}")
        else:
            removed = cleanup_dead_runs()
            if not any(hostlock.run_is_live(p.name) for p in work_root().glob("*")):
                removed += cleanup_leftovers(None)  # what runs left without a work directory
    for line in removed:
        console.print(f"removed {line}", highlight=False)
    console.print(f"cleanup done: {len(removed)} leftover(s) removed.")


analysis_cli.register(main)  # report, compare, history, publish (bench/cli/analysis.py)
tune_cli.register(main)  # tune show|apply|restore|recommend (bench/cli/tune.py)


if __name__ == "__main__":
    main()
