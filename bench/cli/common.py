"""What every command shares: the console and the one-paragraph error."""

from __future__ import annotations

import sys

from rich.console import Console

from bench.core.errors import BenchError

console = Console(width=None if sys.stdout.isatty() else 160)
EXIT_INTERRUPTED = 130


def fail(exc: BenchError) -> None:
    console.print(f"[bold red]error:[/bold red] {exc.cause}", markup=True, highlight=False)
    if exc.fix:
        console.print(f"[bold]fix:[/bold] {exc.fix}", highlight=False)
    sys.exit(2)
