"""`bench selftest`: the command around bench/cli/selftest.py."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.cli.common import console
from bench.core import hostlock
from bench.core.errors import BenchError
from bench.tiers.registry import TIERS


@click.command()
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
    # with --json, stdout carries the JSON only; progress goes to stderr
    log = Console(stderr=True).print if as_json else console.print
    with hostlock.hold("(selftest)"):
        checks = st.SelfTest(names, log=log, full=full).run()
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
