"""What each switch of a run did, as table rows (bench/run/switches.py writes the records): live
or not (and why), the call's latency, the levels before and after against what the limit allows,
and the time to effect. The report (bench/report/switches.py) and `bench summary` show the same
rows; both escape or print them as plain text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SERIES_FILE = "switches.jsonl"  # bench.run.switches.SERIES_FILE (no import: stays light)


def load(run_path: Path) -> list[dict[str, Any]]:
    """The switch runs of a run directory (none if it had no switches)."""
    path = run_path / SERIES_FILE
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:  # a line cut short by a crash: the rest still shows
            continue
    return found


def num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _note(note: str) -> str:
    return f" ({note})" if note and note != "not reached" else ""


HEAD = ("tier", "workload", "switch", "limit", "old → new", "live (how)", "call s",
        "level before", "level after", "limit allows", "time to effect s")


def _cells(*texts: Any, span_last: int = 1) -> list[dict[str, Any]]:
    cells = [{"text": str(text), "span": 1} for text in texts]
    cells[-1]["span"] = span_last
    return cells


def rows(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The table's cells as text; the template escapes every one."""
    found = []
    for record in records:
        for switch in record["switches"]:
            changes = {c["limit"]: c for i in switch["instances"] for c in i["changes"]}
            shown = set()
            where = f"{switch['index']} @ {num(switch['called_s'], 1)} s"
            for effect in switch.get("effects", []):
                shown.add(effect["limit"])
                change = changes.get(effect["limit"], {})
                effect_s = effect["time_to_effect_s"]
                found.append(_cells(
                    record["tier"], record["workload"], where, effect["limit"],
                    f"{effect['old']} → {effect['new']}",
                    f"{'yes' if change.get('live') else 'NO'} ({change.get('how')})",
                    num(switch["latency_s"], 4), num(effect["level_before"]),
                    num(effect["level_after"]), num(effect["expected_after"]),
                    (num(effect_s, 1) if effect_s is not None else "not reached")
                    + _note(effect["note"])))
            memory = switch.get("memory")
            if memory:
                shown.add("memory_mb")
                change = changes.get("memory_mb", {})
                if "before" in memory:
                    seen = f"allocation {memory['before']} → {memory['after']}"
                else:
                    seen = (f"MemTotal {memory['before_mb']} → {memory['after_mb']} MB "
                            f"(moved {memory['moved_mb']} of {memory['switched_mb']})")
                effect_s = memory.get("time_to_effect_s")
                row = _cells(record["tier"], record["workload"], where, "memory_mb",
                             f"→ {switch['set'].get('memory_mb')}",
                             f"{'yes' if change.get('live') else 'NO'} ({change.get('how')})",
                             num(switch["latency_s"], 4), f"{memory['how']}: {seen}",
                             span_last=3)
                found.append([*row, *_cells(num(effect_s, 1) if effect_s is not None
                                           else "not reached")])
            for limit, change in changes.items():
                if limit not in shown and not change["live"]:
                    found.append(_cells(record["tier"], record["workload"], switch["index"],
                                       limit, f"→ {change['value']}", f"NO ({change['how']})",
                                       "not live: nothing to measure", span_last=5))
    return found


def plain(records: list[dict[str, Any]]) -> list[list[str]]:
    """The rows as one string per column (a spanning cell's text, then empty columns)."""
    lines = []
    for row in rows(records):
        line: list[str] = []
        for cell in row:
            line += [cell["text"], *[""] * (cell["span"] - 1)]
        lines.append(line)
    return lines


def print_table(run_path: Path, console: Any) -> None:
    """The time-to-effect table under the end-of-run summary (rich), if the run had switches."""
    from rich.table import Table
    from rich.text import Text

    records = load(run_path)
    if not records:
        return
    out = Table(title="Isolation switches: what each did, and its time to effect")
    for column in HEAD:
        out.add_column(column)
    for line in plain(records):
        out.add_row(*(Text(text) for text in line))
    console.print(out)
