"""What a guest says: its serial console's last lines, and bench-stamp's clock reading."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

CONSOLE_TAIL_LINES = 15


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def console_tail(path: Path, lines: int = CONSOLE_TAIL_LINES) -> str:
    """The last distinct lines of a guest's serial console, without terminal escapes."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no console output)"
    tail: list[str] = []
    for raw in text.replace("\r", "\n").splitlines():
        line = " ".join(ANSI.sub("", raw).split())
        if line and line not in tail[-3:]:
            tail.append(line)
    return " | ".join(tail[-lines:]) or "(no console output)"


def stamp_seconds(text: str) -> float | None:
    """bench-stamp's reading of the guest's CLOCK_MONOTONIC, in seconds."""
    for line in text.splitlines():
        if '"bench-stamp"' in line:
            with contextlib.suppress(ValueError, KeyError):
                return int(json.loads(line)["monotonic_ns"]) / 1e9
    return None
