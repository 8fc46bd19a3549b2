"""Judging swept settings against the settings as found: one comparison per cell and headline
metric, p-values corrected together, a verdict per setting, and what to apply."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from bench.analysis import stats
from bench.core.errors import BenchError
from bench.core.rundir import RunDir
from bench.core.samples import Cell
from bench.tune import catalog as catalog_mod
from bench.tune.catalog import Catalog, Tunable
from bench.tune.tuner import key_text
from bench.workloads import HEADLINE

Verdict = Literal["adopt", "no evidence", "harmful"]
# bandwidth and IOPS of one fio job carry the same information: judge disk by MB/s and p99
METRICS = {**HEADLINE, "disk.fio": ("bandwidth_MBps", "clat_p99_us")}
BASE_CACHE = "none-slow"  # what cache setups are compared with: the plain slow device


class Comparison(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tier: str
    workload: str
    params: dict[str, Any]
    cache: str
    setting: dict[str, Any]
    metric: str
    unit: str
    direction: Literal["higher", "lower"]
    n_current: int
    n_setting: int
    current_median: float
    setting_median: float
    change: float  # fraction: +0.1 = the metric is 10% higher under the setting
    ci_low: float
    ci_high: float
    # the setting's cost factor against the settings as found: > 1 = slower (worse), for
    # either direction of the metric; what every reader of a recommendation is shown
    cost: float = float("nan")
    cost_low: float = float("nan")
    cost_high: float = float("nan")
    p: float
    p_adjusted: float = float("nan")
    better: bool
    verdict: Verdict = "no evidence"


class SettingResult(BaseModel):
    """One setting on one cell (tier, workload, params, cache), over its headline metrics."""

    model_config = ConfigDict(extra="forbid")

    tier: str
    workload: str
    params: dict[str, Any]
    cache: str
    setting: dict[str, Any]
    current: dict[str, str]
    verdict: Verdict
    primary: Comparison
    others: list[Comparison]
    scope: str
    risk: str


class Recommendation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str
    host: str
    alpha: float
    correction: stats.Correction
    comparisons: int
    results: list[SettingResult]
    apply: dict[str, Any] = Field(default_factory=dict)  # tunable key -> value to set
    conflicts: list[str] = Field(default_factory=list)
    shared_note: str = ""
    device: str | None = None
    as_found: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)


def _frozen(d: dict[str, Any]) -> str:
    return repr(sorted((k, repr(v)) for k, v in d.items()))


@dataclass
class _Group:
    """The samples of one metric of one cell."""

    cell: Cell
    unit: str
    direction: Literal["higher", "lower"]
    values: list[float]


def _groups(rundir: RunDir) -> dict[tuple[str, ...], _Group]:
    """Every cell's metrics, keyed (tier, workload, params, cache, tunables, metric), read as
    one frame (the columnar reader: a million samples in seconds, not one object each)."""
    from bench.analysis.frame import read_frame

    frame = read_frame(rundir.samples_path)
    groups: dict[tuple[str, ...], _Group] = {}
    if frame.empty:
        return groups
    for (_, metric), part in frame.groupby(["cell", "metric"], observed=True, sort=False):
        row = part.iloc[0]
        cell = Cell(tier=str(row["tier"]), workload=str(row["workload"]),
                    params=json.loads(str(row["params"])),
                    tunables=json.loads(str(row["tunables"])), cache=str(row["cache"]))
        groups[(cell.tier, cell.workload, _frozen(cell.params), cell.cache,
                _frozen(cell.tunables), str(metric))] = _Group(
            cell, str(row["unit"]), "higher" if row["direction"] == "higher" else "lower",
            part["value"].to_numpy(dtype=float).tolist())
    return groups


def analyse(rundir: RunDir, alpha: float = 0.05,
            correction: stats.Correction = "holm") -> Recommendation:
    manifest = rundir.manifest()
    tuning = manifest.get("tuning") or {}
    groups = _groups(rundir)
    if not any(g.cell.tunables or g.cell.cache != "none" for g in groups.values()):
        raise BenchError(f"Run {rundir.run_id} swept no tunable or cache setup, so there is "
                         "nothing to recommend.",
                         "run a scenario with a `sweep:` section, e.g. `bench run dirty-sweep`.")
    catalog = catalog_mod.load()
    comparisons: list[Comparison] = []
    for key, first in sorted(groups.items()):
        tier, workload, _, cache, _, metric = key
        if metric not in METRICS.get(workload, (metric,)):
            continue
        if first.cell.tunables:  # a setting vs the settings as found, same cache setup
            base = groups.get((tier, workload, key[2], cache, _frozen({}), metric))
            setting = first.cell.tunables
        elif cache not in ("none", BASE_CACHE):  # a cache setup vs the plain slow device
            base = groups.get((tier, workload, key[2], BASE_CACHE, _frozen({}), metric))
            setting = {"cache": cache}
        else:
            continue
        if not base:
            continue
        values = first.values
        current = base.values
        found = stats.log_ratio_test(current, values)
        change, low, high, p = found.change, found.low, found.high, found.p
        better = change > 0 if first.direction == "higher" else change < 0
        cost = stats.cost(stats.Estimate(1 + change, 1 + low, 1 + high, len(values)),
                          first.direction)
        comparisons.append(Comparison(
            tier=tier, workload=workload, params=first.cell.params, cache=cache,
            setting=setting, metric=metric, unit=first.unit,
            direction=first.direction, n_current=len(current), n_setting=len(values),
            current_median=float(np.median(current)), setting_median=float(np.median(values)),
            change=change, ci_low=low, ci_high=high, cost=cost.median, cost_low=cost.low,
            cost_high=cost.high, p=p, better=better))
    for c, padj in zip(comparisons, stats.adjust([c.p for c in comparisons], correction),
                       strict=True):
        c.p_adjusted = padj
        if not math.isnan(padj) and padj < alpha and not math.isnan(c.change) \
                and c.change != 0:
            c.verdict = "adopt" if c.better else "harmful"
    as_found: dict[str, str] = tuning.get("as_found", {})
    device = tuning.get("device")
    results = _per_setting(comparisons, catalog, as_found, device)
    apply, conflicts = _what_to_apply(results)
    notes = list(tuning.get("left_out", []))
    if any(c.n_current < 5 or c.n_setting < 5 for c in comparisons):
        notes.append("some cells have fewer than 5 samples: a real effect of a few percent "
                     "rarely reaches significance after correction; raise `repetitions`.")
    return Recommendation(
        run_id=rundir.run_id, host=str(manifest.get("host", {}).get("hostname") or "unknown"),
        alpha=alpha, correction=correction, comparisons=len(comparisons), results=results,
        apply=apply, conflicts=conflicts, shared_note=tuning.get("shared", ""), device=device,
        as_found=as_found, notes=notes)


def _per_setting(comparisons: list[Comparison], catalog: Catalog, as_found: dict[str, str],
                 device: str | None) -> list[SettingResult]:
    by_cell: dict[tuple[str, ...], list[Comparison]] = defaultdict(list)
    for c in comparisons:
        by_cell[(c.tier, c.workload, _frozen(c.params), c.cache, _frozen(c.setting))].append(c)
    results = []
    for chunk in by_cell.values():
        order = METRICS.get(chunk[0].workload, ())
        chunk.sort(key=lambda c: order.index(c.metric) if c.metric in order else len(order))
        primary, others = chunk[0], chunk[1:]
        if any(c.verdict == "harmful" for c in chunk):
            verdict: Verdict = "harmful"
        elif primary.verdict == "adopt":
            verdict = "adopt"
        else:
            verdict = "no evidence"
        tunables = [catalog.tunables[n] for n in primary.setting if n in catalog.tunables]
        current = {n: _found(catalog.tunables[n], as_found, device, primary.cache)
                   for n in primary.setting if n in catalog.tunables}
        if "cache" in primary.setting:
            current = {"cache": BASE_CACHE}
        results.append(SettingResult(
            tier=primary.tier, workload=primary.workload, params=primary.params,
            cache=primary.cache, setting=primary.setting, current=current, verdict=verdict,
            primary=primary, others=others,
            scope=", ".join(sorted({t.scope for t in tunables})) or "cache setup (devices "
            "made by the run)",
            risk="; ".join(f"{t.name}: {t.risk} ({t.risk_note})" for t in tunables) or
            _cache_risk(primary.cache)))
    rank = {"adopt": 0, "harmful": 1, "no evidence": 2}
    results.sort(key=lambda r: (r.workload, _frozen(r.params), r.tier, rank[r.verdict],
                                r.primary.p_adjusted if not math.isnan(r.primary.p_adjusted)
                                else 2.0))
    return results


def _cache_risk(setup: str) -> str:
    if setup.startswith("none-"):
        return "none: a plain device, no cache layer"
    if "writeback" in setup or "writecache" in setup:
        return ("high: the cache device holds dirty data the slow device does not have yet; "
                "losing it loses data")
    return "low: writes reach the slow device before they complete"


def _found(tunable: Tunable, as_found: dict[str, str], device: str | None, cache: str) -> str:
    if tunable.per_device:
        if cache != "none":
            return "(cache device made by the run)"
        return as_found.get(key_text(tunable.name, device), "unknown")
    return as_found.get(tunable.name, "unknown")


def _what_to_apply(results: list[SettingResult]) -> tuple[dict[str, Any], list[str]]:
    """Values adopted somewhere and harmful nowhere; conflicting values are reported."""
    adopted: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    harmful: set[tuple[str, str]] = set()
    for r in results:
        for name, value in r.setting.items():
            if r.verdict == "adopt" and r.cache == "none":
                adopted[name][repr(value)] += 1
            elif r.verdict == "harmful":
                harmful.add((name, repr(value)))
    apply: dict[str, Any] = {}
    conflicts = []
    for name, counts in adopted.items():
        clean = {v: n for v, n in counts.items() if (name, v) not in harmful}
        dropped = sorted(set(counts) - set(clean))
        if dropped:
            conflicts.append(f"{name}={', '.join(dropped)} helped one workload/tier but hurt "
                             "another: left out")
        if not clean:
            continue
        best = max(clean, key=lambda v: clean[v])
        if len(clean) > 1:
            conflicts.append(f"{name}: different values won for different workloads "
                             f"({', '.join(clean)}); the files use {best}, adopted most often")
        apply[name] = _unrepr(best, results, name)
    return apply, conflicts


def _unrepr(text: str, results: list[SettingResult], name: str) -> Any:
    for r in results:
        if name in r.setting and repr(r.setting[name]) == text:
            return r.setting[name]
    return text


