"""The report's isolation-switches section: per run with `switches:`, each switch run's
1-second series with a marker at every switch (one figure per workload, a line per tier), and a
table of what each switch did: live or not (and why), the call's latency, the levels before
and after against what the limit allows, and the time to effect (bench/run/switches.py).
Everything shown from a result is escaped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.analysis.switch_table import HEAD, load, rows
from bench.report.page import Page
from bench.report.templating import render


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
             render("switches.html.j2", head=HEAD, rows=rows(records), skipped=skipped,
                    figures=figures))
