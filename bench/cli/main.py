"""The `bench` command: a group whose subcommands are imported only when they run.

`bench --help` must answer at once, so this module imports click and nothing heavy; each
command's module (and pandas, scipy, plotly, SQLAlchemy, the Docker SDK, libvirt behind it) is
imported when that command is called. The help line of each command is kept here, and a test
checks it against the command's own docstring.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from bench.core.errors import BenchError

# name -> (module:attribute, the command's one-line help), in the order `--help` lists them
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("bench.cli.run:run", "Run SCENARIO (a shipped name or a YAML path; default:..."),
    "summary": ("bench.cli.run:summary", "Print the summary table of a run."),
    "list": ("bench.cli.info:list_cmd", "Show the shipped scenarios, tiers and workloads (with..."),
    "config": ("bench.cli.info:config",
               "Show every BENCH_* setting: its value and where it came..."),
    "setup": ("bench.cli.host:setup", "Install the prerequisites of every tier and workload,..."),
    "doctor": ("bench.cli.host:doctor",
               "Is every tier and workload ready here? If not, why, and..."),
    "image": ("bench.cli.host:image_group", "The bench image every tier runs."),
    "cleanup": ("bench.cli.host:cleanup",
                "Remove what a killed run left behind (mounts, containers,..."),
    "selftest": ("bench.cli.selftest_cmd:selftest",
                 "Inject CPU, I/O and network limits and measure each on..."),
    "report": ("bench.cli.analysis:report_cmd",
               "Write one self-contained HTML report of RUN (ids or..."),
    "compare": ("bench.cli.analysis:compare_cmd",
                "Compare run NEW with run BASE: cost factor per metric (>..."),
    "history": ("bench.cli.analysis:history_group",
                "Runs over time in a database: ingest, list, trend, check..."),
    "publish": ("bench.cli.analysis:publish_cmd",
                "Write a static site to DIRECTORY: runs index, trends with..."),
    "tune": ("bench.cli.tune:tune", "Kernel tunables: show the catalog, apply and restore..."),
}


def load(name: str) -> click.Command:
    module, _, attr = COMMANDS[name][0].partition(":")
    command = getattr(importlib.import_module(module), attr)
    if not isinstance(command, click.Command):
        raise TypeError(f"{COMMANDS[name][0]} is not a click command")
    return command


class LazyGroup(click.Group):
    """Imports a subcommand when it is invoked; turns every BenchError into a one-paragraph
    message instead of a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return load(cmd_name) if cmd_name in COMMANDS else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, short) in COMMANDS.items()])

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BenchError as exc:
            from bench.cli.common import fail

            fail(exc)


@click.group(cls=LazyGroup)
@click.version_option(package_name="bench")
def main() -> None:
    """What isolation costs on this host: host, namespace containers, Docker and KVM."""


if __name__ == "__main__":
    main()
