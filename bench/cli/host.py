"""Preparing the host and tidying it: `bench setup`, `doctor`, `image`, `cleanup`."""

from __future__ import annotations

import sys

import click
from rich.markup import escape
from rich.table import Table

from bench.cli import doctor as doctor_mod
from bench.cli import tune as tune_cli
from bench.cli.common import console
from bench.core import hostlock, safefs
from bench.core import image as image_mod
from bench.core.errors import BenchError
from bench.core.hostlock import work_root
from bench.kernel import sysmount
from bench.tiers.registry import TIERS


@click.command()
@click.option("--require", default="", metavar="PART,...",
              help="exit 1 when one of these tiers, workloads or core parts is not ready "
                   "(e.g. host,ns,docker,kvm)")
def doctor(require: str) -> None:
    """Is every tier and workload ready here? If not, why, and the fix."""
    out = Table(title="bench doctor")
    for column in ("kind", "name", "ready", "why not / details", "fix"):
        out.add_column(column)
    checks = doctor_mod.checks()
    for c in checks:
        out.add_row(c.kind, c.name, "[green]yes[/green]" if c.ok else "[red]no[/red]",
                    c.reason, c.fix)
    console.print(out)
    names = [n.strip() for n in require.split(",") if n.strip()]
    missing = doctor_mod.missing_required(checks, names)
    for c in missing:
        console.print(f"[red]required but not ready:[/red] {c.kind} {c.name}: "
                      f"{escape(c.reason)} fix: {escape(c.fix)}")
    if missing:
        sys.exit(1)


@click.command()
def setup() -> None:
    """Install the prerequisites of every tier and workload, start daemons, build the image."""
    doctor_mod.setup(log=console.print)
    console.print("setup done; `bench doctor` shows what is ready.")


@click.group("image")
def image_group() -> None:
    """The bench image every tier runs."""


@image_group.command("build")
@click.option("--force", is_flag=True, help="Rebuild even when the image is cached.")
def image_build(force: bool) -> None:
    """Build the bench image with mmdebstrap (cached by the hash of its recipe)."""
    img = image_mod.build(force=force, log=console.print)
    console.print(f"image {img.hash}: {img.rootfs}")


@image_group.command("squash")
@click.argument("source")
@click.option("--tag", "target", help="Name of the merged image (default: SOURCE-squashed).")
def image_squash(source: str, target: str | None) -> None:
    """Merge an engine image's layers into one (the same files; docker tier's engine)."""
    from bench.tiers.docker import engine as engine_mod
    from bench.tiers.docker.squash import squash_image

    name = target or (f"{source}-squashed" if ":" in source.rsplit("/", 1)[-1]
                      else f"{source}:squashed")
    done = squash_image(engine_mod.client(), source, name)
    console.print(f"{done['target']}: {done['layers_before']} layers merged into one "
                  f"({done['entries']} entries, {done['diff_id'][:19]})", highlight=False)


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
    dead runs: remove what they left. Directories without the marker are never touched. Then
    the host settings (sysctls, firewall rules) every dead run left journaled."""
    from bench.tune import firewall, hostnet

    removed = []
    for work in hostlock.dead_run_dirs():
        removed += cleanup_leftovers(work.name)
        if not sysmount.mounts_under(work) and safefs.remove_marked(work):
            removed.append(f"work directory {work}")
    # host settings whose journal outlived its run's work directory (the next run's start)
    return removed + [f"host setting: {line}"
                      for line in firewall.recover(None, None) + hostnet.recover()]


@click.command()
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
