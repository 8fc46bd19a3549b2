"""Plotly figures of a report. Every string placed in a figure goes through `t()`: plotly.js
renders text as a small HTML subset, so a label from a result or a host is escaped first."""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from bench.analysis import stats
from bench.report.tables import BASELINE, OverheadRow, PhaseBar, axis_sort_key, swept_axes

RAW_POINTS_MAX = 4000  # above this many samples in a figure, boxes are drawn from quantiles
PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b", "#b279a2",
           "#ff9da6", "#9d755d", "#bab0ac")


def t(value: Any) -> str:
    """A string safe to show in a plotly figure: no '<' or '>' is left to form a tag (quotes
    matter only inside tags, and plotly.js decodes only a few named entities, so they stay)."""
    return html.escape(str(value), quote=False)


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    """Title in the top margin, legend to the right of the plot: they never share space (a
    horizontal legend above the plot ran into the title as soon as it wrapped)."""
    fig.update_layout(title={"text": t(title), "x": 0.01, "xanchor": "left", "y": 0.98,
                             "yanchor": "top", "yref": "container"},
                      height=height, margin={"l": 10, "r": 10, "t": 50, "b": 10},
                      legend={"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1.0,
                              "yanchor": "top"})
    return fig


def _nan_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else value


def overhead(rows: list[OverheadRow], tiers: list[str], several_runs: bool) -> go.Figure | None:
    """A forest plot: each tier's cost factor vs host (log scale) with its 95% CI."""
    others = [tier for tier in tiers if tier != BASELINE]
    labels = [f"{r.label} · {r.metric}" + (f" · {r.run_id}" if several_runs else "")
              for r in rows]
    fig = go.Figure()
    for index, tier in enumerate(others):
        xs, lo, hi, ys, texts = [], [], [], [], []
        for row, label in zip(rows, labels, strict=True):
            cell = row.tiers.get(tier)
            if cell is None or cell.overhead is None or not cell.overhead.median > 0:
                continue
            est = cell.overhead
            xs.append(est.median)
            lo.append(max(est.median - est.low, 0) if est.low > 0 else 0)
            hi.append(max(est.high - est.median, 0) if est.high > 0 else 0)
            ys.append(t(label))
            texts.append(f"{est.median:.3f}x [{est.low:.3f}, {est.high:.3f}]")
        if xs:
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="markers", name=t(tier),
                marker={"color": colour(index + 1), "size": 12, "symbol": "square"},
                error_x={"type": "data", "array": hi, "arrayminus": lo, "visible": True,
                         "thickness": 2, "color": colour(index + 1)},
                customdata=texts,
                hovertemplate="%{y}<br>cost factor %{customdata}<extra>" + t(tier)
                              + "</extra>"))
    if not fig.data:
        return None
    count = len({y for trace in fig.data for y in trace.y})
    fig.update_layout(scattermode="group", scattergap=0.4,
                      xaxis={"type": "log", "title": "cost factor vs host, log scale (1 = as "
                             "fast as host, 2 = twice as slow, 0.5 = twice as fast), 95% CI"},
                      yaxis={"autorange": "reversed", "automargin": True})
    fig.add_vline(x=1, line_color="#333", line_width=1)
    return _layout(fig, "Overhead of each tier vs host (headline metrics)",
                   max(320, 110 + count * (14 + 10 * len(others))))


def startup(bars: list[PhaseBar], segments: list[str]) -> go.Figure | None:
    """Stacked phase segments, one panel per tier with its own scale: docker's hundreds of
    milliseconds would flatten host's and ns's few into slivers on a shared axis."""
    if not bars:
        return None
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(bars), subplot_titles=[t(bar.name) for bar in bars],
                        horizontal_spacing=min(0.08, 0.4 / len(bars)))
    for column, bar in enumerate(bars, 1):
        for index, segment in enumerate(segments):
            value = bar.segments.get(segment)
            if value is None:
                continue
            fig.add_trace(go.Bar(
                x=[t(bar.name)], y=[value], name=t(segment), legendgroup=segment,
                showlegend=column == 1 or all(segment not in b.segments for b in bars[:column - 1]),
                marker_color=colour(index),
                hovertemplate="%{x}<br>" + t(segment) + ": %{y:.3f} ms<extra></extra>"),
                row=1, col=column)
        fig.update_yaxes(title_text="ms since create (medians)" if column == 1 else None,
                         rangemode="tozero", row=1, col=column)
        fig.update_xaxes(showticklabels=False, row=1, col=column)
    fig.update_layout(barmode="stack")
    return _layout(fig, "Start-up phases per tier (each panel on its own scale)", 420)


def _box_stats(values: np.ndarray) -> dict[str, float]:
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    iqr = q3 - q1
    inside = values[(values >= q1 - 1.5 * iqr) & (values <= q3 + 1.5 * iqr)]
    return {"q1": q1, "median": med, "q3": q3, "lowerfence": float(inside.min()),
            "upperfence": float(inside.max())}


def distribution(workload: str, metric: str, unit: str,
                 series: list[tuple[str, pd.DataFrame]]) -> go.Figure:
    """One figure per workload and metric: a box per cell and tier (and run)."""
    fig = go.Figure()
    raw = sum(len(part) for _, part in series) <= RAW_POINTS_MAX
    lows, highs = [], []
    for index, (name, part) in enumerate(series):
        labels = part["short" if "short" in part else "label"]
        positive = part["value"][part["value"] > 0]
        if len(positive):
            lows.append(float(positive.min()))
            highs.append(float(positive.max()))
        if raw:
            fig.add_trace(go.Box(
                x=labels.map(t).tolist(), y=part["value"].tolist(), name=t(name),
                marker_color=colour(index), boxpoints="all", jitter=0.4, pointpos=0,
                marker={"size": 4}))
            continue
        xs, boxes = [], []
        for label, group in part.groupby(labels, sort=True):
            xs.append(t(label))
            boxes.append(_box_stats(group["value"].to_numpy(dtype=float)))
        fig.add_trace(go.Box(
            x=xs, name=t(name), marker_color=colour(index),
            q1=[b["q1"] for b in boxes], median=[b["median"] for b in boxes],
            q3=[b["q3"] for b in boxes], lowerfence=[b["lowerfence"] for b in boxes],
            upperfence=[b["upperfence"] for b in boxes]))
    wide = bool(lows) and min(lows) > 0 and max(highs) / min(lows) > 30
    fig.update_layout(boxmode="group", yaxis_title=t(unit) + (" (log scale)" if wide else ""),
                      yaxis_type="log" if wide else "linear", xaxis={"automargin": True})
    return _layout(fig, f"{workload}: {metric}", 400)


def heatmaps(frame: pd.DataFrame, workload: str, metric: str, unit: str,
             tiers: list[str]) -> list[go.Figure]:
    """Medians over the swept parameters/tunables: one axis -> tier x value; two -> value x
    value per tier (medians over any further axes)."""
    axes = swept_axes(frame)
    if not axes:
        return []
    figures = []
    if len(axes) == 1:
        axis = axes[0]
        values = sorted(frame[axis].dropna().unique(), key=axis_sort_key)
        medians = frame.groupby(["tier", axis], observed=True)["value"].median()
        present = [tier for tier in tiers if tier in set(map(str, frame["tier"].unique()))]
        z = [[_nan_none(float(medians.get((tier, v), float("nan")))) for v in values]
             for tier in present]
        figures.append(_heatmap(z, [t(v) for v in values], [t(x) for x in present],
                                t(axis.split(".", 1)[1]), "tier",
                                f"{workload}: {metric} ({unit}) by {axis}"))
        return figures
    ranked = sorted(axes, key=lambda a: -frame[a].nunique())
    x_axis, y_axis = ranked[0], ranked[1]
    note = f" (median over {', '.join(ranked[2:])})" if len(ranked) > 2 else ""
    for tier in tiers:
        part = frame[frame["tier"] == tier]
        if part.empty:
            continue
        xs = sorted(part[x_axis].dropna().unique(), key=axis_sort_key)
        ys = sorted(part[y_axis].dropna().unique(), key=axis_sort_key)
        medians = part.groupby([y_axis, x_axis], observed=True)["value"].median()
        z = [[_nan_none(float(medians.get((y, x), float("nan")))) for x in xs] for y in ys]
        figures.append(_heatmap(z, [t(x) for x in xs], [t(y) for y in ys],
                                t(x_axis.split(".", 1)[1]), t(y_axis.split(".", 1)[1]),
                                f"{tier}: {workload} {metric} ({unit}){note}"))
    return figures


def _heatmap(z: list[list[float | None]], xs: list[str], ys: list[str], x_title: str,
             y_title: str, title: str) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=z, x=xs, y=ys, colorscale="Viridis", texttemplate="%{z:.4g}",
                               hovertemplate="%{x} / %{y}: %{z:.4g}<extra></extra>"))
    fig.update_xaxes(type="category", title=x_title)
    fig.update_yaxes(type="category", title=y_title, automargin=True)
    return _layout(fig, title, max(260, 120 + 40 * len(ys)))


def density(frame: pd.DataFrame, workload: str, metric: str, unit: str,
            tiers: list[str]) -> go.Figure | None:
    """Median (with its 95% CI) against the numeric parameter with the most values, per tier."""
    numeric = [c for c in swept_axes(frame)
               if pd.to_numeric(frame[c], errors="coerce").notna().all()]
    if not numeric:
        return None
    axis = max(numeric, key=lambda c: frame[c].nunique())
    fig = go.Figure()
    for index, tier in enumerate(tiers):
        part = frame[frame["tier"] == tier]
        if part.empty:
            continue
        xs, ys, lo, hi = [], [], [], []
        for x, group in sorted(part.groupby(axis, observed=True), key=lambda g: float(g[0])):
            est = stats.median_ci(group["value"].to_numpy(dtype=float))
            xs.append(float(x))
            ys.append(est.median)
            lo.append(_nan_none(est.median - est.low) or 0)
            hi.append(_nan_none(est.high - est.median) or 0)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=t(tier),
                                 line_color=colour(index),
                                 error_y={"type": "data", "array": hi, "arrayminus": lo}))
    fig.update_layout(xaxis_title=t(axis.split(".", 1)[1]), yaxis_title=t(unit))
    return _layout(fig, f"{workload}: {metric} against {axis.split('.', 1)[1]}", 380)


def trend(points: pd.DataFrame, title: str, unit: str,
          changes: dict[str, list[tuple[float, float]]]) -> go.Figure:
    """History: per-run medians of each series over time, change points marked."""
    traces, shapes, notes = [], [], []
    for index, (name, part) in enumerate(points.groupby("series", sort=True, observed=True)):
        part = part.sort_values("started")
        traces.append(go.Scatter(
            x=pd.to_datetime(part["started"], unit="s").tolist(), y=part["median"].tolist(),
            mode="lines+markers", name=t(name), line_color=colour(index),
            customdata=part["run_id"].map(t).tolist(),
            hovertemplate="%{customdata}<br>%{y:.4g}<extra>" + t(name) + "</extra>"))
        for when, change in changes.get(str(name), []):
            at = pd.to_datetime(when, unit="s").isoformat()
            shapes.append({"type": "line", "x0": at, "x1": at, "yref": "paper", "y0": 0,
                           "y1": 1, "line": {"dash": "dash", "color": colour(index)}})
            notes.append({"x": at, "y": 1, "yref": "paper", "text": f"{change:+.1%}",
                          "showarrow": False, "font": {"color": colour(index)}})
    # shapes and annotations set once: add_vline per change point is quadratic in plotly
    fig = go.Figure(traces)
    starts = sorted(set(points["started"].astype(float)))
    xaxis: dict[str, Any] = {"title": "run start (UTC)", "type": "date"}
    if len(starts) <= TREND_TICKS:  # few runs: a tick at each run, never fractions of a second
        xaxis |= {"tickmode": "array", "tickvals": [pd.to_datetime(x, unit="s") for x in starts],
                  "ticktext": [_stamp(x) for x in starts]}
    else:
        xaxis |= {"tickformat": "%Y-%m-%d\n%H:%M"}
    fig.update_layout(yaxis_title=t(unit), xaxis=xaxis, shapes=shapes, annotations=notes)
    return _layout(fig, title, 360)


TREND_TICKS = 12


def _stamp(seconds: float) -> str:
    import time

    return time.strftime("%Y-%m-%d<br>%H:%M:%S", time.gmtime(seconds))
