"""The report's image-layers section: pull and start time against layer count, the merged
(one-layer) image beside each point, and whether merging paid off on this host."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go

from bench.analysis import stats
from bench.analysis.frame import Run
from bench.report.figures import colour, t
from bench.report.page import Page, esc

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
PAYOFF = ("pull_s", "pull_limited_s", "first_start_ms", "first_exit_ms")


def _num(value: float) -> str:
    if math.isnan(value):
        return "&ndash;"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def layer_frame(runs: list[Run]) -> pd.DataFrame:
    parts = [r.frame[r.frame["workload"].astype(str) == WORKLOAD] for r in runs
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


def _table(frame: pd.DataFrame, tier: str, metrics: list[tuple[str, str]],
           counts: list[int]) -> str:
    head = "".join(f"<th>{esc(m)}<br><span class=muted>{esc(what)}</span></th>"
                   for m, what in metrics)
    rows = []
    for n in counts:
        for merged in (False, True):
            cells = []
            for metric, _ in metrics:
                est = stats.median_ci(_values(frame, tier, metric, n, merged))
                cells.append(f"<td class=num title=\"n={est.n}\">{_num(est.median)} "
                             f"[{_num(est.low)}, {_num(est.high)}]</td>" if est.n else
                             "<td class=num>&ndash;</td>")
            label = f"{n} merged into 1" if merged else str(n)
            rows.append(f"<tr><td>{esc(label)}</td>{''.join(cells)}</tr>")
    return (f"<table><tr><th>layers</th>{head}</tr>{''.join(rows)}</table>")


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
        faster = [n for n, c in verdicts.items() if c.verdict == "faster"]
        top = max(verdicts)
        last = verdicts[top]
        ratio = last.new.median / last.base.median if last.base.median else float("nan")
        if faster:
            found.append(f"{metric}: merging paid off from {min(faster)} layers on "
                         f"(at {top} layers: {_num(last.base.median)} -> "
                         f"{_num(last.new.median)}, {ratio:.2f}x); faster at "
                         f"{', '.join(map(str, sorted(faster)))}.")
        else:
            notes = sorted({c.note for c in verdicts.values() if c.note})
            found.append(f"{metric}: merging did not pay off at any layer count measured "
                         f"(at {top} layers: {_num(last.base.median)} -> "
                         f"{_num(last.new.median)}, {ratio:.2f}x)"
                         + (f"; {'; '.join(notes)}" if notes else "") + ".")
    return found


def section(runs: list[Run], page: Page) -> str:
    """HTML of the section, or "" when the runs have no image-layer samples."""
    frame = layer_frame(runs)
    if frame.empty:
        return ""
    out = ["<p class=muted>The same files (from the bench image) split into N layers of about "
           "equal size; \"merged\" is that N-layer image squashed into one layer. Medians "
           "[95% CI]. A merged image shares no layer with other images: what that costs in "
           "registry and disk space across images is not measured here.</p>"]
    for tier in sorted(frame["tier"].astype(str).unique()):
        part = frame[frame["tier"].astype(str) == tier]
        counts = sorted(int(n) for n in part["n"].unique())
        present = set(part["metric"].astype(str))
        metrics = [(m, what) for m, what in METRICS if m in present]
        if not metrics:
            continue
        verdicts = payoff(part, tier, counts)
        out.append(f"<h3>{esc(tier)}</h3>")
        if verdicts:
            out.append("<ul>" + "".join(f"<li>{esc(v)}</li>" for v in verdicts) + "</ul>")
        out.append(page.figure(_figure(part, tier, metrics[:4], counts)))
        out.append(_table(part, tier, metrics, counts))
    skipped = {k: v for run in runs for k, v in
               (run.manifest.get("skipped_cells") or {}).items() if k.endswith(WORKLOAD)}
    if skipped:
        out.append("<p class=muted>" + "; ".join(f"{esc(k.split('/')[0])} takes no part: "
                                                  f"{esc(v)}" for k, v in skipped.items())
                   + ".</p>")
    return "".join(out)
