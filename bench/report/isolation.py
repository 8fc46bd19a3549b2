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
from bench.report.page import Page
from bench.report.templating import render


def _table(matrix: isolation.Matrix, colour: bool, figure: Markup | None) -> dict[str, Any]:
    """The values of one table for the template (which escapes them)."""
    rows = []
    for row in matrix.rows:
        cells = []
        for column in matrix.columns:
            flag = matrix.flags.get((row, column))
            klass = ""
            if colour and flag is not None and not math.isnan(flag):
                klass = "slower" if flag >= 1 else "same"
            cells.append({"text": matrix.get(row, column), "klass": klass})
        rows.append({"name": row, "cells": cells})
    return {"title": matrix.title, "corner": matrix.corner, "columns": matrix.columns,
            "rows": rows, "figure": figure}


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
        parts.append({"run_id": run.run_id if len(runs) > 1 else "", "tables": [
            _table(matrix, colour="slowdown" in matrix.title,
                   figure=page.figure(_heatmap(matrix))
                   if matrix.title.startswith("Interference: victim") else None)
            for matrix in tables]})
    if parts:
        page.add("isolation", "Isolation", render("isolation.html.j2", parts=parts))
