"""The report's image-layers section: pull and start time against layer count, the merged
(one-layer) image beside each point, and whether merging paid off on this host."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go

from bench.analysis import stats
from bench.analysis.frame import Run
from bench.report.figures import colour, t
from bench.report.templating import num
from bench.report.templating import render as template

if TYPE_CHECKING:
    from bench.report.build import Report

WORKLOAD = "image.layers"
# (metric, what it is) in the order shown; a tier shows the ones it measured
METRICS = (("pull_s", "cold pull, loopback registry"),
           ("pull_limited_s", "pull over the rate-limited link"),
           ("pull_download_s", "of the pull: download"),
           ("pull_extract_s", "of the pull: extraction"),
           ("first_start_ms", "first container start after the pull"),
           ("disk_MB", "disk used by the pulled image"),
           ("first_exit_ms", "ns: container over the N layers, start to exit"),
           ("first_mount_ms", "ns: its overlayfs mount"),
           ("lookup_deepest_us", "ns: first lookup of a file in the deepest layer"),
           ("lookup_missing_us", "ns: lookup of an absent name"))
PAYOFF = ("pull_s", "pull_limited_s", "first_start_ms", "first_exit_ms", "lookup_deepest_us",
          "lookup_missing_us")


def layer_frame(runs: list[Run]) -> pd.DataFrame:
    parts = [r.frame[r.frame["workload"] == WORKLOAD] for r in runs
             if not r.frame.empty and "param.layers" in r.frame]
    if not parts:
        return pd.DataFrame()
    frame = pd.concat(parts)
    if frame.empty:
        return frame
    merged = frame.get("param.merged", False)
    return frame.assign(n=frame["param.layers"].astype(int),
                        merged=pd.Series(merged, index=frame.index).fillna(False).astype(bool))


def _values(frame: pd.DataFrame, tier: str, metric: str, n: int, merged: bool) -> list[float]:
    part = frame[(frame["tier"].astype(str) == tier) & (frame["metric"].astype(str) == metric)
                 & (frame["n"] == n) & (frame["merged"] == merged)]
    return [float(v) for v in part["value"]]


def _figure(frame: pd.DataFrame, tier: str, metrics: list[tuple[str, str]],
            counts: list[int]) -> go.Figure:
    fig = go.Figure()
    for index, (metric, what) in enumerate(metrics):
        unit = str(frame.loc[frame["metric"].astype(str) == metric, "unit"].iloc[0])
        for merged in (False, True):
            ys = [stats.median_ci(_values(frame, tier, metric, n, merged)).median
                  for n in counts]
            fig.add_trace(go.Scatter(
                x=counts, y=[None if math.isnan(y) else y for y in ys], mode="lines+markers",
                name=t(f"{metric} ({unit})" + (", merged" if merged else "")),
                line={"color": colour(index), "dash": "dot" if merged else "solid"},
                hovertemplate=t(what) + ": %{y:.3g} at %{x} layers<extra></extra>"))
    fig.update_xaxes(type="log", title="layers (log scale)", tickvals=counts)
    fig.update_yaxes(type="log", title="median (log scale)")
    fig.update_layout(title={"text": t(f"{tier}: against layer count (dotted: the same image "
                                       "merged into one layer)"), "x": 0.01}, height=460,
                      margin={"l": 10, "r": 10, "t": 80, "b": 10})
    return fig


def _list(counts: list[int]) -> str:
    return ", ".join(map(str, sorted(counts)))


def payoff(frame: pd.DataFrame, tier: str, counts: list[int]) -> list[str]:
    """Per metric: from which layer count the merged image was faster (Mann-Whitney and the
    2% minimum effect, as everywhere in bench), and by how much at the most layers."""
    found = []
    for metric in PAYOFF:
        verdicts = {}
        for n in counts:
            layered, merged = (_values(frame, tier, metric, n, m) for m in (False, True))
            if layered and merged:
                verdicts[n] = stats.compare(layered, merged, "lower")
        if not verdicts:
            continue
        faster = sorted(n for n, c in verdicts.items() if c.verdict == "faster")
        slower = sorted(n for n, c in verdicts.items() if c.verdict == "slower")
        top = max(verdicts)
        last = verdicts[top]
        ratio = last.new.median / last.base.median if last.base.median else float("nan")
        at_top = (f"at {top} layers: {num(last.base.median)} -> {num(last.new.median)}, "
                  f"{ratio:.2f}x")
        onward = [n for n in sorted(verdicts) if all(m in faster for m in verdicts if m >= n)]
        if onward:
            text = f"{metric}: merging pays off from {onward[0]} layers on ({at_top})"
        elif faster:
            text = (f"{metric}: the merged image was faster at {_list(faster)} layers but not "
                    f"at {_list([n for n in verdicts if n not in faster])} ({at_top})")
        else:
            notes = sorted({c.note for c in verdicts.values() if c.note})
            text = (f"{metric}: merging did not pay off at any layer count measured ({at_top})"
                    + (f"; {'; '.join(notes)}" if notes else ""))
        if slower:
            text += f"; the merged image was slower at {_list(slower)} layers"
        found.append(text + ".")
    return found


def section(report: Report) -> None:
    """The "Image layers" section, when the runs have image-layer samples."""
    frame = layer_frame(report.runs)
    if frame.empty:
        return
    tiers = []
    for tier in sorted(frame["tier"].astype(str).unique()):
        part = frame[frame["tier"].astype(str) == tier]
        counts = sorted(int(n) for n in part["n"].unique())
        present = set(part["metric"].astype(str))
        metrics = [(m, what) for m, what in METRICS if m in present]
        if not metrics:
            continue
        rows = [{"label": f"{n} merged into 1" if merged else str(n),
                 "cells": [stats.median_ci(_values(part, tier, m, n, merged)) for m, _ in metrics]}
                for n in counts for merged in (False, True)]
        tiers.append({"name": tier, "verdicts": payoff(part, tier, counts), "metrics": metrics,
                      "figure": report.page.figure(_figure(part, tier, metrics[:4], counts)),
                      "rows": rows})
    skipped = sorted({(k.split("/")[0], v) for run in report.runs
                      for k, v in (run.manifest.get("skipped_cells") or {}).items()
                      if k.endswith(f"/{WORKLOAD}")})
    report.page.add("layers", "Image layers", template("layers.html.j2", tiers=tiers,
                                                       skipped=skipped))
