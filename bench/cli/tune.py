"""`bench tune show|apply|restore|recommend`."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.core import hostlock
from bench.core.rundir import RunDir
from bench.tune import catalog as catalog_mod
from bench.tune import journal as journal_mod
from bench.tune import recommend as recommend_mod
from bench.tune.catalog import TuneError
from bench.tune.sysfs import HostFs, block_device_of
from bench.tune.tuner import Tuner, recover

console = Console(width=None if sys.stdout.isatty() else 160)


def _default_device() -> str | None:
    from bench.tune.hook import _work_root

    for path in (_work_root(), Path("/var/tmp"), Path("/")):
        if path.exists():
            try:
                return block_device_of(path)
            except TuneError:
                continue
    return None


CATALOG_OPTION = click.option(
    "--catalog", "catalog_path", type=click.Path(path_type=Path, dir_okay=False),
    help="A tunables catalog other than the shipped one; it must be owned by root and writable "
         "by nobody else (it decides what bench writes as root).")


@click.group("tune")
def tune() -> None:
    """Kernel tunables: show the catalog, apply and restore values, recommend from a sweep."""


@tune.command("show")
@click.option("--device", "devices", multiple=True,
              help="Block device for per-device tunables (default: the one under the scratch "
                   "directory). Repeatable.")
@CATALOG_OPTION
def show(devices: tuple[str, ...], catalog_path: Path | None) -> None:
    """Every catalogued tunable: current value, safe range, sweep values, scope, risk."""
    catalog = catalog_mod.load(catalog_path)
    chosen = list(devices) or [d for d in [_default_device()] if d]
    snapshot = Tuner(catalog, HostFs()).snapshot(chosen)
    source = catalog_path or catalog_mod.tuning_dir() / "tunables.yaml"
    out = Table(title=f"tunables catalog ({escape(str(source))})")
    for column in ("tunable", "now", "safe", "sweep", "scope", "tiers", "risk"):
        out.add_column(column, overflow="fold")
    for key, value in snapshot.items():
        name = key.split("[", 1)[0]
        t = catalog.tunables[name]
        safe = ", ".join(t.safe_choices or t.choices) if t.type == "choice" else \
            f"{t.safe[0]}..{t.safe[1]}" if t.safe else ""
        sweep = " | ".join(t.render(v) for v in t.sweep)
        style = "dim" if value.startswith("unavailable") else ""
        out.add_row(escape(key), escape(value),
                    safe + (f" {t.unit}" if t.unit and t.type != "choice" else ""),
                    sweep, t.scope + (" (+guest)" if t.guest else ""), ",".join(t.tiers),
                    t.risk, style=style)
    console.print(out)
    sessions = journal_mod.sessions()
    for session in sessions:
        live = journal_mod.is_live(session)
        state = "held by a running bench" if live else (
            "applied by `bench tune apply`; `bench tune restore` undoes it"
            if session == journal_mod.MANUAL else "left by a killed run; restored at the next "
            "start or by `bench tune restore`")
        console.print(f"journal {session}: {state}", highlight=False)


@tune.command("apply")
@click.argument("settings", nargs=-1, required=True, metavar="NAME=VALUE...")
@click.option("--device", help="Block device for per-device tunables (default: the one under "
                               "the scratch directory).")
@click.option("--allow-unsafe", is_flag=True,
              help="Allow values outside the catalog's safe range (never outside the valid one).")
@CATALOG_OPTION
def apply(settings: tuple[str, ...], device: str | None, allow_unsafe: bool,
          catalog_path: Path | None) -> None:
    """Set catalogued tunables (NAME or a catalogued path), journaled until `bench tune restore`.

    Example: bench tune apply vm.dirty_background_ratio=5 block.read_ahead_kb=1024
    """
    catalog = catalog_mod.load(catalog_path)
    parsed = []
    for item in settings:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise TuneError(f"{item!r} is not NAME=VALUE.",
                            "write e.g. vm.dirty_background_ratio=5.")
        dev = device
        if name.startswith("/"):
            tunable, from_path = catalog.by_path(name)
            name, dev = tunable.name, from_path or dev
        tunable = catalog.get(name)
        if tunable.per_device and dev is None:
            dev = _default_device()
        parsed.append((name, value, dev if tunable.per_device else None))
    with hostlock.hold("(tune apply)"):
        journal = journal_mod.Journal(journal_mod.MANUAL)
        try:
            tuner = Tuner(catalog, HostFs(), journal, allow_unsafe)
            for name, value, dev in parsed:  # refuse everything before writing anything
                tuner.validate(name, value, dev)
            for name, value, dev in parsed:
                console.print(str(tuner.apply(name, value, dev)), highlight=False)
        finally:
            journal.close()
    console.print("`bench tune restore` puts the original values back.")


@tune.command("restore")
@CATALOG_OPTION
def restore(catalog_path: Path | None) -> None:
    """Restore every original value bench recorded: `bench tune apply`'s and killed runs'."""
    catalog = catalog_mod.load(catalog_path)
    with hostlock.hold("(tune restore)"):
        restored = recover(catalog, include_manual=True)
    for line in restored:
        console.print(f"restored {line}", highlight=False)
    console.print(f"{len(restored)} value(s) restored."
                  if restored else "nothing to restore: no journal is left.")


@tune.command("recommend")
@click.argument("run_id")
@click.option("--alpha", default=0.05, show_default=True, type=click.FloatRange(0.0001, 0.5))
@click.option("--correction", type=click.Choice(["holm", "bh"]), default="holm",
              show_default=True, help="Multiple-comparison correction.")
@click.option("--include", "include_profile", default=recommend_mod.STOCK_PROFILE,
              show_default=True, help="Stock TuneD profile the written profile includes.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path),
              help="Where the files go (default: RUN/tuning/).")
def recommend(run_id: str, alpha: float, correction: str, include_profile: str,
              out_dir: Path | None) -> None:
    """Settings of a sweep run that beat the current ones, with evidence, and files to apply
    them (TuneD profile, sysctl.d, udev rule) and to roll them back."""
    rundir = RunDir.open(run_id)
    rec = recommend_mod.analyse(rundir, alpha, "bh" if correction == "bh" else "holm")
    out = Table(title=f"run {rec.run_id}: settings vs the current ones ({rec.comparisons} "
                      f"comparisons, {recommend_mod.CORRECTIONS[rec.correction]} corrected, "
                      f"alpha {alpha:g})")
    for column in ("tier", "workload", "params", "setting", "current",
                   "cost [95% CI] (> 1 = slower)", "p / adj.", "verdict", "other metrics"):
        out.add_column(column, overflow="fold")
    colour = {"adopt": "green", "harmful": "red", "no evidence": "white"}
    for row in recommend_mod.rows(rec):
        out.add_row(*(escape(row[k]) for k in ("tier", "workload", "params", "setting",
                                                "current")),
                    escape(f"{row['metric']} {row['cost']}"), row["p"],
                    f"[{colour[row['verdict']]}]{row['verdict']}[/]", escape(row["others"]))
    console.print(out)
    if rec.shared_note:
        console.print(f"note: {rec.shared_note}", highlight=False)
    for line in rec.conflicts + rec.notes:
        console.print(f"note: {line}", highlight=False)
    if rec.apply:
        console.print("recommended: " + ", ".join(f"{k}={v}" for k, v in rec.apply.items()),
                      highlight=False)
    else:
        console.print("recommended: nothing; no setting beat the current ones with evidence.")
    paths = recommend_mod.write_files(rec, out_dir or rundir.path / "tuning", include_profile)
    for path in paths:
        console.print(f"wrote {path}", highlight=False)



def cleanup(run_id: str | None) -> list[str]:
    """For `bench cleanup`: restore leftover journals, remove leftover cache devices."""
    from bench.tune import cache

    removed = [f"tunable {line}" for line in recover(catalog_mod.load())]
    removed += [f"cache {line}" for line in cache.cleanup(run_id)]
    return removed + [f"lock {name}" for name in journal_mod.remove_dead_locks(run_id)]
