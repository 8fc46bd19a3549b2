"""The numbers a report shows, computed from loaded runs (no HTML here)."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd

from bench.analysis import stats
from bench.analysis.frame import Run
from bench.analysis.methodology import family, headline
from bench.core.samples import BASELINE_TIER

BASELINE = BASELINE_TIER


@dataclass
class TierCell:
    estimate: stats.Estimate
    overhead: stats.Estimate | None  # cost factor vs the host tier (> 1 = slower)
    cv: float


@dataclass
class OverheadRow:
    run_id: str
    label: str
    workload: str
    metric: str
    unit: str
    direction: stats.Direction
    tiers: dict[str, TierCell] = field(default_factory=dict)


def tier_order(runs: list[Run]) -> list[str]:
    seen: dict[str, None] = {BASELINE: None}
    for run in runs:
        for tier in run.manifest.get("tiers", []):
            seen[str(tier)] = None
        for tier in run.frame["tier"].unique() if not run.frame.empty else []:
            seen[str(tier)] = None
    present = {str(t) for run in runs if not run.frame.empty for t in run.frame["tier"].unique()}
    return [t for t in seen if t in present]


def overhead_rows(run: Run, tiers: list[str]) -> list[OverheadRow]:
    """Per headline metric of each cell: every tier's median [CI] and its cost vs host [CI]."""
    main = headline(run.frame)
    rows: list[OverheadRow] = []
    if main.empty:
        return rows
    grouped = {key: g["value"].to_numpy(dtype=float) for key, g in
               main.groupby(["label", "metric", "tier"], observed=True, sort=False)}
    info = main.drop_duplicates(["label", "metric"])[["label", "metric", "workload", "unit",
                                                      "direction"]]
    for label, metric, workload, unit, direction in sorted(
            info.itertuples(index=False, name=None), key=lambda r: (str(r[0]), str(r[1]))):
        row = OverheadRow(run.run_id, str(label), str(workload), str(metric), str(unit),
                          direction)
        base = grouped.get((label, metric, BASELINE))
        for tier in tiers:
            values = grouped.get((label, metric, tier))
            if values is None:
                continue
            overhead = None
            if base is not None and tier != BASELINE:
                overhead = stats.overhead_ci(values, base, direction)
            row.tiers[tier] = TierCell(stats.median_ci(values), overhead, stats.cv(values))
        rows.append(row)
    return rows


@dataclass
class PhaseBar:
    name: str  # tier, or "tier · run" with several runs
    segments: dict[str, float]  # "a → b" -> median ms spent between two consecutive phases
    n: int


def startup_phases(runs: list[Run], tiers: list[str]) -> tuple[list[PhaseBar], list[str]]:
    """Start-up phases per tier as stacked segments (medians of per-start differences)."""
    bars: list[PhaseBar] = []
    order_votes: dict[str, list[float]] = defaultdict(list)
    per_bar: list[tuple[str, list[dict[str, float]]]] = []
    for run in runs:
        frame = run.frame
        if frame.empty:
            continue
        starts = frame[(frame["workload"].map(lambda w: family(str(w))) == "startup")
                       & frame["meta.phases_ms"].notna()]
        starts = starts.drop_duplicates(["tier", "label", "repetition"])
        warm = starts["meta.start_mode"] == "warm"  # a start mode of its own: its own bar
        for tier, mode in ((t, m) for t in tiers for m in ("new", "warm")):
            pick = (starts["tier"] == tier) & (warm if mode == "warm" else ~warm)
            rows = [p for p in starts.loc[pick, "meta.phases_ms"] if isinstance(p, dict) and p]
            if not rows:
                continue
            name = tier + (" warm" if mode == "warm" else "")
            name = name if len(runs) == 1 else f"{name} · {run.run_id}"
            per_bar.append((name, rows))
            for phases in rows:
                for phase, at in phases.items():
                    order_votes[phase].append(float(at))
    order = sorted(order_votes, key=lambda p: float(np.median(order_votes[p])))
    segment_names: dict[str, None] = {}
    for name, rows in per_bar:
        own = [p for p in order if any(p in r for r in rows)]
        segments: dict[str, float] = {}
        for before, after in pairwise(own):
            gaps = [r[after] - r[before] for r in rows if before in r and after in r]
            if gaps:
                key = f"{before} → {after}"
                segments[key] = max(float(np.median(gaps)), 0.0)
                segment_names[key] = None
        bars.append(PhaseBar(name, segments, len(rows)))
    return bars, list(segment_names)


def swept_axes(frame: pd.DataFrame) -> list[str]:
    """Parameter and tunable columns that take more than one value in `frame`."""
    cells = frame.drop_duplicates("cell")  # parameters are per cell: look at each cell once
    axes = []
    for column in cells.columns:
        if column.startswith(("param.", "tunable.")) \
                and cells[column].dropna().astype(str).nunique() > 1:
            axes.append(column)
    return axes


def short_labels(frame: pd.DataFrame) -> pd.Series:
    """Per row, only what tells its cell apart from the others in `frame` (e.g. "rw=read,
    direct=True"), or the workload's name when nothing does (computed once per cell)."""
    axes = swept_axes(frame)
    cells = frame.drop_duplicates("cell")
    if not axes:
        short = cells["workload"].astype(str)
    else:
        short = None
        for axis in axes:
            part = axis.split(".", 1)[1] + "=" + cells[axis].astype(str)
            short = part if short is None else short + ", " + part
    lookup = dict(zip(cells["cell"], short, strict=True))
    return frame["cell"].map(lookup)


def axis_sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, bool):
        return (0, int(value))
    if isinstance(value, int | float):
        return (1, value)
    return (2, str(value))


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """A nested manifest as dotted keys -> display strings."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for key in sorted(data, key=str):
            out.update(flatten(data[key], f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(data, list) and data and any(isinstance(v, dict | list) for v in data):
        for index, value in enumerate(data):
            out.update(flatten(value, f"{prefix}[{index}]"))
    else:
        out[prefix] = data if isinstance(data, str) else json.dumps(data, default=str)
    return out


SKIP_KEYS = ("scenario.text",)


def environment(manifest: dict[str, Any]) -> dict[str, str]:
    """The manifest as rows for the environment table (package list summarised)."""
    data = json.loads(json.dumps(manifest, default=str))
    packages = (data.get("image") or {}).pop("packages", None)
    flat = {k: v for k, v in flatten(data).items() if k not in SKIP_KEYS}
    if isinstance(packages, dict):
        flat["image.packages"] = f"{len(packages)} packages"
        flat.update({f"image.packages.{name}": str(version)
                     for name, version in sorted(packages.items())})
    return flat


def environment_diff(envs: list[dict[str, str]]) -> tuple[list[str], list[str]]:
    """(keys whose values differ between runs, keys that are the same everywhere)."""
    keys = sorted({k for env in envs for k in env})
    differ = [k for k in keys if len({env.get(k, "—") for env in envs}) > 1]
    same = [k for k in keys if k not in set(differ)]
    return differ, same
