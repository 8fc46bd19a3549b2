"""`bench list` and `bench config`: what is shipped and how bench is set."""

from __future__ import annotations

from pathlib import Path

import click
import yaml
from rich.markup import escape
from rich.table import Table

from bench.cli.common import console
from bench.core import shipped, yamlio
from bench.core.errors import BenchError


def _description(path: Path, check: bool) -> str:
    """A scenario's description as console markup (the file's text escaped); read as YAML only,
    unless `check` (full validation needs every tier and workload class: most of a second)."""
    if check:
        from bench.run import scenario as scenario_mod

        try:
            return escape(scenario_mod.parse(path.read_text(), str(path)).description)
        except BenchError as exc:
            return f"[red]invalid: {escape(exc.cause)}[/red]"
    try:
        data = yamlio.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        return f"[red]invalid: {escape(str(exc))}[/red]"
    description = data.get("description", "") if isinstance(data, dict) else None
    if not isinstance(description, str):
        return "[red]invalid: not a scenario mapping with a text description[/red]"
    return escape(description)


@click.command("list")
@click.option("--check", is_flag=True,
              help="Validate each scenario fully (slower) and mark the invalid ones.")
def list_cmd(check: bool) -> None:
    """Show the shipped scenarios, tiers and workloads (with their parameters)."""
    from bench.cli.listing_data import TIERS, WORKLOADS

    scen = Table(title="scenarios")
    scen.add_column("name")
    scen.add_column("description")
    for path in sorted(shipped.scenario_dir().glob("*.yaml")):
        scen.add_row(escape(path.stem), _description(path, check))
    console.print(scen)
    tiers = Table(title="tiers")
    tiers.add_column("name")
    tiers.add_column("description")
    for row in TIERS:
        tiers.add_row(*row)
    console.print(tiers)
    loads = Table(title="workloads")
    for column in ("name", "family", "description", "parameters (default)"):
        loads.add_column(column)
    for wrow in WORKLOADS:
        loads.add_row(*wrow)
    console.print(loads)


@click.command()
@click.option("--markdown", is_flag=True, help="Print the documentation table (README) instead.")
def config(markdown: bool) -> None:
    """Show every BENCH_* setting: its value and where it came from."""
    from bench.core.settings import settings, sources
    from bench.core.settings_model import PREFIX, Settings

    if markdown:
        click.echo(settings_table())
        return
    current, origin = settings(), sources()
    out = Table(title="bench config")
    for column in ("variable", "value", "from", "meaning"):
        out.add_column(column)
    for name, field in Settings.model_fields.items():
        value = getattr(current, name)
        out.add_row(PREFIX + name.upper(), "-" if value is None else str(value), origin[name],
                    field.description or "")
    console.print(out)


def settings_table() -> str:
    """The README's table of settings, generated from bench.core.settings.Settings."""
    from bench.core.settings_model import PREFIX, Settings

    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = "-" if field.default is None else f"`{field.default}`"
        rows.append(f"| `{PREFIX}{name.upper()}` | {default} | {field.description} |")
    return "\n".join(rows)
