"""`bench list` and `bench config`: what is shipped and how bench is set."""

from __future__ import annotations

import click
from rich.table import Table

from bench.cli.common import console
from bench.core.errors import BenchError
from bench.run import scenario as scenario_mod
from bench.tiers.registry import TIERS
from bench.workloads import WORKLOADS


@click.command("list")
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
        fields = ", ".join(f"{k} ({f.get_default(call_default_factory=True)})"
                           for k, f in w.params_model.model_fields.items())
        loads.add_row(name, w.family, w.description, fields or "-")
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
