"""The report's isolation-switches section: per run with `switches:`, each switch run's
1-second series with a marker at every switch (one figure per workload, a line per tier), and a
table of what each switch did: live or not (and why), the call's latency, the levels before
and after against what the limit allows, and the time to effect (bench/run/switches.py).
Everything shown from a result is escaped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.report.page import Page
from bench.report.templating import render

SERIES_FILE = "switches.jsonl"  # bench.run.switches.SERIES_FILE (no import: report stays light)


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


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _note(note: str) -> str:
    return f" ({note})" if note and note != "not reached" else ""


def _figure(page: Page, workload: str, metric: str, unit: str,
            records: list[dict[str, Any]]) -> str:
    import plotly.graph_objects as go

    from bench.report.figures import colour, t

    fig = go.Figure()
    for index, record in enumerate(records):
        points = record["points"].get(metric, [])
        fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points],
                                 mode="lines+markers", name=t(record["tier"]),
                                 line={"color": colour(index)}))
        for switch in record["switches"]:
            label = ", ".join(f"{k}={v}" for k, v in switch["set"].items())
            labelled = {"annotation_text": t(label), "annotation_position": "top left",
                        "annotation_font_size": 9} if index == 0 else {}
            fig.add_vline(x=switch["called_s"], line={"dash": "dot", "color": colour(index)},
                          **labelled)
    fig.update_layout(title={"text": t(f"{workload}: {metric} ({unit}) per second"), "x": 0.01},
                      xaxis_title="seconds after the workload started",
                      yaxis_title=t(unit), height=380,
                      margin={"l": 10, "r": 10, "t": 80, "b": 10})
    return page.figure(fig)


HEAD = ("tier", "workload", "switch", "limit", "old → new", "live (how)", "call s",
        "level before", "level after", "limit allows", "time to effect s")


def _cells(*texts: Any, span_last: int = 1) -> list[dict[str, Any]]:
    cells = [{"text": str(text), "span": 1} for text in texts]
    cells[-1]["span"] = span_last
    return cells


def _rows(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The table's cells as text; the template escapes every one."""
    rows = []
    for record in records:
        for switch in record["switches"]:
            changes = {c["limit"]: c for i in switch["instances"] for c in i["changes"]}
            shown = set()
            where = f"{switch['index']} @ {_num(switch['called_s'], 1)} s"
            for effect in switch.get("effects", []):
                shown.add(effect["limit"])
                change = changes.get(effect["limit"], {})
                effect_s = effect["time_to_effect_s"]
                rows.append(_cells(
                    record["tier"], record["workload"], where, effect["limit"],
                    f"{effect['old']} → {effect['new']}",
                    f"{'yes' if change.get('live') else 'NO'} ({change.get('how')})",
                    _num(switch["latency_s"], 4), _num(effect["level_before"]),
                    _num(effect["level_after"]), _num(effect["expected_after"]),
                    (_num(effect_s, 1) if effect_s is not None else "not reached")
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
                             _num(switch["latency_s"], 4), f"{memory['how']}: {seen}",
                             span_last=3)
                rows.append([*row, *_cells(_num(effect_s, 1) if effect_s is not None
                                           else "not reached")])
            for limit, change in changes.items():
                if limit not in shown and not change["live"]:
                    rows.append(_cells(record["tier"], record["workload"], switch["index"],
                                       limit, f"→ {change['value']}", f"NO ({change['how']})",
                                       "not live: nothing to measure", span_last=5))
    return rows


def section(page: Page, run_id: str, run_path: Path) -> None:
    """Add the section for one run, if it had switches."""
    records = load(run_path)
    if not records:
        return
    figures = []
    by_metric: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        for metric in record["points"]:
            by_metric.setdefault((record["workload"], metric), []).append(record)
    for (workload, metric), group in sorted(by_metric.items()):
        if any(e["metric"] == metric for r in group for s in r["switches"]
               for e in s.get("effects", [])):
            unit = group[0]["metrics"].get(metric, "")
            figures.append(_figure(page, workload, metric, unit, group))
    skipped = "; ".join(s for r in records for s in r.get("skipped", []))
    page.add(f"switches-{run_id}", f"Isolation switches ({run_id})",
             render("switches.html.j2", head=HEAD, rows=_rows(records), skipped=skipped,
                    figures=figures))
