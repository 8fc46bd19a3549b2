"""The report's isolation-switches section: per run with `switches:`, each switch run's
1-second series with a marker at every switch (one figure per workload, a line per tier), and a
table of what each switch did: live or not (and why), the call's latency, the levels before
and after against what the limit allows, and the time to effect (bench/run/switches.py).
Everything shown from a result is escaped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from markupsafe import Markup

from bench.report.page import Page, esc

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
    return f" ({esc(note)})" if note and note != "not reached" else ""


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


def _table(records: list[dict[str, Any]]) -> str:
    head = ("<tr><th>tier</th><th>workload</th><th>switch</th><th>limit</th><th>old → new</th>"
            "<th>live (how)</th><th>call s</th><th>level before</th><th>level after</th>"
            "<th>limit allows</th><th>time to effect s</th></tr>")
    rows = []
    for record in records:
        for switch in record["switches"]:
            changes = {c["limit"]: c for i in switch["instances"] for c in i["changes"]}
            shown = set()
            for effect in switch.get("effects", []):
                shown.add(effect["limit"])
                change = changes.get(effect["limit"], {})
                effect_s = effect["time_to_effect_s"]
                rows.append(
                    f"<tr><td>{esc(record['tier'])}</td><td>{esc(record['workload'])}</td>"
                    f"<td>{esc(switch['index'])} @ {esc(_num(switch['called_s'], 1))} s</td>"
                    f"<td>{esc(effect['limit'])}</td>"
                    f"<td>{esc(effect['old'])} → {esc(effect['new'])}</td>"
                    f"<td>{'yes' if change.get('live') else 'NO'} ({esc(change.get('how'))})"
                    f"</td><td>{esc(_num(switch['latency_s'], 4))}</td>"
                    f"<td>{esc(_num(effect['level_before']))}</td>"
                    f"<td>{esc(_num(effect['level_after']))}</td>"
                    f"<td>{esc(_num(effect['expected_after']))}</td>"
                    f"<td>{esc(_num(effect_s, 1)) if effect_s is not None else 'not reached'}"
                    f"{_note(effect['note'])}</td></tr>")
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
                rows.append(
                    f"<tr><td>{esc(record['tier'])}</td><td>{esc(record['workload'])}</td>"
                    f"<td>{esc(switch['index'])} @ {esc(_num(switch['called_s'], 1))} s</td>"
                    f"<td>memory_mb</td><td>→ {esc(switch['set'].get('memory_mb'))}</td>"
                    f"<td>{'yes' if change.get('live') else 'NO'} ({esc(change.get('how'))})"
                    f"</td><td>{esc(_num(switch['latency_s'], 4))}</td>"
                    f"<td colspan=3>{esc(memory['how'])}: {esc(seen)}</td>"
                    f"<td>{esc(_num(effect_s, 1)) if effect_s is not None else 'not reached'}"
                    "</td></tr>")
            for limit, change in changes.items():
                if limit not in shown and not change["live"]:
                    rows.append(
                        f"<tr><td>{esc(record['tier'])}</td><td>{esc(record['workload'])}</td>"
                        f"<td>{esc(switch['index'])}</td><td>{esc(limit)}</td>"
                        f"<td>→ {esc(change['value'])}</td><td>NO ({esc(change['how'])})</td>"
                        "<td colspan=5>not live: nothing to measure</td></tr>")
    return f"<table class=data>{head}{''.join(rows)}</table>"


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
    skipped = [s for r in records for s in r.get("skipped", [])]
    note = ("<p class=muted>Time to effect: from the switch call until the 1-second value "
            "stays within 5% of its new level for 3 seconds (the end of the first of them, "
            "1 s resolution); memory by its effect. Series start at the workload's exec call "
            "(the tool's own start aligned by its run time).</p>")
    extra = (f"<p class=warning>{esc('; '.join(skipped))}</p>" if skipped else "")
    body = Markup(note + _table(records) + extra + "".join(figures))  # noqa: S704 (escaped)
    page.add(f"switches-{run_id}", f"Isolation switches ({run_id})", body)
