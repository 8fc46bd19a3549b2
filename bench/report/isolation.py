"""The report's isolation section: the interference heat map (tier x antagonist, the IBS
table's shape), the visibility matrix, the containment table and the accounting errors, from
bench/analysis/isolation.py. Every text is escaped here."""

from __future__ import annotations

import math
from typing import Any

from markupsafe import Markup

from bench.analysis import isolation
from bench.analysis.frame import Run
from bench.core.rundir import RunDir
from bench.report.page import Page, esc


def _table(matrix: isolation.Matrix, colour: bool) -> str:
    head = f"<th>{esc(matrix.corner)}</th>" + "".join(f"<th>{esc(c)}</th>"
                                                      for c in matrix.columns)
    rows = []
    for row in matrix.rows:
        cells = []
        for column in matrix.columns:
            flag = matrix.flags.get((row, column))
            klass = ""
            if colour and flag is not None and not math.isnan(flag):
                klass = ' class="slower"' if flag >= 1 else ' class="same"'
            cells.append(f"<td{klass}>{esc(matrix.get(row, column))}</td>")
        rows.append(f"<tr><th>{esc(row)}</th>{''.join(cells)}</tr>")
    return (f"<h3>{esc(matrix.title)}</h3><table><tr>{head}</tr>{''.join(rows)}</table>")


def _heatmap(matrix: isolation.Matrix) -> Any:
    import plotly.graph_objects as go

    z = [[matrix.flags.get((row, c)) for c in matrix.columns] for row in matrix.rows]
    text = [[matrix.get(row, c) for c in matrix.columns] for row in matrix.rows]
    fig = go.Figure(go.Heatmap(z=z, x=matrix.columns, y=matrix.rows, text=text,
                               texttemplate="%{z:.2f}", hovertemplate="%{y} / %{x}: %{text}"
                               "<extra></extra>", colorscale="RdYlGn", reversescale=True,
                               zmid=1.0, colorbar={"title": "slowdown"}))
    fig.update_layout(title="Victim slowdown beside each antagonist (> 1 = slower)",
                      height=160 + 50 * len(matrix.rows))
    return fig


def add(page: Page, runs: list[Run]) -> None:
    """Add the section when a run has isolation samples; nothing otherwise."""
    parts = []
    for run in runs:
        if not (run.path / "samples.jsonl").exists() or not any(
                str(w).startswith("isolation.") for w in run.frame["workload"].unique()):
            continue  # (every Sample of a million-sample run would take a minute to read)
        tables = isolation.tables(RunDir(run.path).samples())
        if not tables:
            continue
        if len(runs) > 1:
            parts.append(f"<p class=muted>run {esc(run.run_id)}</p>")
        for matrix in tables:
            if matrix.title.startswith("Interference: victim"):
                parts.append(page.figure(_heatmap(matrix)))
            parts.append(_table(matrix, colour="slowdown" in matrix.title))
    if parts:
        intro = ("<p class=muted>How well each tier isolates: visibility (1 = the instance sees "
                 "or may touch the host's own), interference (victim alone vs beside an "
                 "antagonist, paired), fork-storm containment and memory accounting "
                 "(bench/workloads/isolation/).</p>")
        body = Markup(intro + "".join(parts))  # noqa: S704 (every value in parts is escaped)
        page.add("isolation", "Isolation", body)
