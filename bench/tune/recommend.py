"""`bench tune recommend RUN`: which swept settings beat the host's current ones, with evidence.

For every cell measured under a setting (tunables differing from the host as found) and its
baseline (the same tier, workload, parameters and cache setup at the settings as found), each
headline metric is compared:

- change = ratio of geometric means - 1, with the 95% CI of Welch's t on log values (the same
  test gives the p-value: a multiplicative effect, robust to the scale of the metric);
- p-values of every comparison in the run are corrected together (Holm by default, or
  Benjamini-Hochberg);
- verdict per comparison: `adopt` (significantly better), `harmful` (significantly worse) or
  `no evidence`; per setting: harmful if any headline metric is harmful, adopt if its primary
  metric is adopt, else no evidence.

A setting goes into the ops files (TuneD profile, sysctl.d, udev rule) only if some workload and
tier adopt it and none finds it harmful; the rollback script writes back what the run's
manifest recorded as found.
"""

from __future__ import annotations

import html
import math
import shlex
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats as sps

from bench.core.errors import BenchError
from bench.core.rundir import RunDir
from bench.core.samples import Sample
from bench.tune import catalog as catalog_mod
from bench.tune.catalog import Catalog, Tunable
from bench.tune.tuner import key_text
from bench.workloads import HEADLINE

Verdict = Literal["adopt", "no evidence", "harmful"]
# bandwidth and IOPS of one fio job carry the same information: judge disk by MB/s and p99
METRICS = {**HEADLINE, "disk.fio": ("bandwidth_MBps", "clat_p99_us")}
STOCK_PROFILE = "throughput-performance"
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
    correction: Literal["holm", "bh"]
    comparisons: int
    results: list[SettingResult]
    apply: dict[str, Any] = Field(default_factory=dict)  # tunable key -> value to set
    conflicts: list[str] = Field(default_factory=list)
    shared_note: str = ""
    device: str | None = None
    as_found: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)


# -- statistics ------------------------------------------------------------------------------
def compare(current: list[float], setting: list[float]) -> tuple[float, float, float, float]:
    """(change, ci_low, ci_high, p) of `setting` vs `current` (fractions, two-sided p)."""
    a = np.asarray(setting, dtype=float)
    b = np.asarray(current, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan"), float("nan"), float("nan")
    if np.all(a > 0) and np.all(b > 0):
        la, lb = np.log(a), np.log(b)
        if np.ptp(la) == 0 and np.ptp(lb) == 0:
            diff = float(la[0] - lb[0])
            return math.expm1(diff), math.expm1(diff), math.expm1(diff), \
                (1.0 if diff == 0 else 0.0)
        res = sps.ttest_ind(la, lb, equal_var=False)
        ci = res.confidence_interval(0.95)
        diff = float(np.mean(la) - np.mean(lb))
        return math.expm1(diff), math.expm1(float(ci.low)), math.expm1(float(ci.high)), \
            float(res.pvalue)
    # a metric that can be 0: medians and Mann-Whitney, no CI
    med_b = float(np.median(b))
    change = float(np.median(a)) / med_b - 1 if med_b else float("nan")
    p = float(sps.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    return change, float("nan"), float("nan"), p


def adjust(pvalues: list[float], method: Literal["holm", "bh"]) -> list[float]:
    """Multiple-comparison correction over every comparison of the run (NaN stays NaN)."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    ps = np.asarray([pvalues[i] for i in idx], dtype=float)
    out = [float("nan")] * len(pvalues)
    if not len(ps):
        return out
    if method == "bh":
        adjusted = sps.false_discovery_control(ps, method="bh")
    else:
        order = np.argsort(ps)
        m = len(ps)
        running = 0.0
        adjusted = np.empty(m)
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (m - rank) * ps[i]))
            adjusted[i] = running
    for i, value in zip(idx, adjusted, strict=True):
        out[i] = float(value)
    return out


# -- analysis --------------------------------------------------------------------------------
def _frozen(d: dict[str, Any]) -> str:
    return repr(sorted((k, repr(v)) for k, v in d.items()))


def analyse(rundir: RunDir, alpha: float = 0.05,
            correction: Literal["holm", "bh"] = "holm") -> Recommendation:
    manifest = rundir.manifest()
    tuning = manifest.get("tuning") or {}
    samples = rundir.samples()
    if not any(s.cell.tunables or s.cell.cache != "none" for s in samples):
        raise BenchError(f"Run {rundir.run_id} swept no tunable or cache setup, so there is "
                         "nothing to recommend.",
                         "run a scenario with a `sweep:` section, e.g. `bench run dirty-sweep`.")
    catalog = catalog_mod.load()
    groups: dict[tuple[str, ...], list[Sample]] = defaultdict(list)
    for s in samples:
        groups[(s.cell.tier, s.cell.workload, _frozen(s.cell.params), s.cell.cache,
                _frozen(s.cell.tunables), s.metric)].append(s)
    comparisons: list[Comparison] = []
    for key, chunk in sorted(groups.items()):
        tier, workload, _, cache, _, metric = key
        first = chunk[0]
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
        values = [s.value for s in chunk]
        current = [s.value for s in base]
        change, low, high, p = compare(current, values)
        better = change > 0 if first.direction == "higher" else change < 0
        comparisons.append(Comparison(
            tier=tier, workload=workload, params=first.cell.params, cache=cache,
            setting=setting, metric=metric, unit=first.unit,
            direction=first.direction, n_current=len(current), n_setting=len(values),
            current_median=float(np.median(current)), setting_median=float(np.median(values)),
            change=change, ci_low=low, ci_high=high, p=p, better=better))
    for c, padj in zip(comparisons, adjust([c.p for c in comparisons], correction),
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
        run_id=rundir.run_id, host=str(manifest.get("host", {}).get("hostname", "?")),
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
        return as_found.get(key_text(tunable.name, device), "?")
    return as_found.get(tunable.name, "?")


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


# -- ops files -------------------------------------------------------------------------------
def _sysctl_name(tunable: Tunable) -> str:
    return tunable.path.removeprefix("/proc/sys/").replace("/", ".")


def write_files(rec: Recommendation, out: Path, include: str = STOCK_PROFILE) -> list[Path]:
    """The TuneD profile, a sysctl.d file, a udev rule (per-device values) and the rollback
    script; plus recommendation.json and recommendation.md. Returns the paths written."""
    catalog = catalog_mod.load()
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    head = (f"# Written by `bench tune recommend {rec.run_id}` ({stamp} UTC) for host "
            f"{rec.host}.\n# Only settings that beat the current ones on some workload and tier "
            "and hurt none\n# (corrected p < {alpha}); see recommendation.md for the evidence.\n"
            ).replace("{alpha}", f"{rec.alpha:g}")
    sysctl, vm, disk, sysfs = [], [], [], []
    udev = []
    for name, value in rec.apply.items():
        t = catalog.get(name)
        text = t.render(value)
        if t.tuned == "sysctl":
            sysctl.append(f"{_sysctl_name(t)} = {text}")
        elif t.tuned.startswith("vm."):
            vm.append(f"{t.tuned[3:]}={text}")
        elif t.per_device and rec.device:
            attr = t.path.split("{device}/", 1)[1]
            udev.append(f'ACTION=="add|change", KERNEL=="{rec.device}", ATTR{{{attr}}}="{text}"')
            if t.tuned.startswith("disk."):
                disk.append(f"{t.tuned[5:]}={text}")
            else:
                sysfs.append(f"{t.path.replace('{device}', rec.device)}={text}")
    nothing = "" if rec.apply else "# No setting beat the current ones: nothing to apply.\n"
    profile_dir = out / f"bench-{rec.run_id}"
    profile_dir.mkdir(exist_ok=True)
    tuned = [head + nothing, "[main]", f"summary=bench: settings that beat the current ones "
             f"(run {rec.run_id})", f"include={include}", ""]
    if sysctl:
        tuned += ["[sysctl]", *(line.replace(" = ", "=") for line in sysctl), ""]
    if vm:
        tuned += ["[vm]", *vm, ""]
    if disk:
        tuned += ["[disk]", f"devices={rec.device}", *disk, ""]
    if sysfs:
        tuned += ["[sysfs]", *sysfs, ""]
    paths = {
        "tuned": profile_dir / "tuned.conf",
        "sysctl": out / f"90-bench-{rec.run_id}.conf",
        "udev": out / f"60-bench-{rec.run_id}.rules",
        "rollback": out / "rollback.sh",
        "json": out / "recommendation.json",
        "md": out / "recommendation.md",
    }
    paths["tuned"].write_text("\n".join(tuned))
    paths["sysctl"].write_text(head + nothing + "# Install: cp this file /etc/sysctl.d/ && "
                               "sysctl --system\n" + "".join(f"{line}\n" for line in sysctl))
    paths["udev"].write_text(head + "# Install: cp this file /etc/udev/rules.d/ && udevadm "
                             "trigger --subsystem-match=block\n"
                             + "".join(f"{line}\n" for line in udev))
    paths["rollback"].write_text(_rollback(rec, catalog, paths))
    paths["rollback"].chmod(0o755)
    paths["json"].write_text(rec.model_dump_json(indent=2))
    paths["md"].write_text(markdown(rec))
    return list(paths.values())


def _rollback(rec: Recommendation, catalog: Catalog, paths: dict[str, Path]) -> str:
    lines = [
        "#!/bin/sh",
        f"# Roll back what `bench tune recommend {rec.run_id}` recommends: write back the values",
        f"# the run's manifest recorded on {rec.host} before the run, and remove the installed",
        "# sysctl.d file and udev rule. (If you switched TuneD profiles, switch back with",
        "# `tuned-adm profile <your previous profile>`.)",
        "# ROOT (default empty) prefixes every path: ROOT=/some/tree ./rollback.sh rehearses it.",
        "set -eu",
        'root="${ROOT:-}"',
        'put() { printf %s "$2" > "$root$1" && echo "restored $1 = $2"; }',
        f'rm -f "$root"/etc/sysctl.d/{shlex.quote(paths["sysctl"].name)} '
        f'"$root"/etc/udev/rules.d/{shlex.quote(paths["udev"].name)}',
    ]
    done: set[str] = set()
    for name in rec.apply:
        t = catalog.get(name)
        members = [t]
        if t.counterpart:
            members.append(catalog.get(t.counterpart))
        if t.counterpart and name in done:
            continue
        if t.counterpart:
            # write back the member that was active (non-zero); the kernel zeroes the other
            bytes_t = next(m for m in members if m.zero_means_unset)
            ratio_t = next(m for m in members if not m.zero_means_unset)
            found_bytes = rec.as_found.get(bytes_t.name, "0")
            members = [bytes_t if found_bytes not in ("0", "") and
                       not found_bytes.startswith("un") else ratio_t]
            done.update({bytes_t.name, ratio_t.name})
        for m in members:
            key = key_text(m.name, rec.device if m.per_device else None)
            value = rec.as_found.get(key, "")
            if not value or value.startswith(("unavailable", "unreadable")):
                lines.append(f"# {key}: no value recorded as found; left alone")
                continue
            path = m.path.replace("{device}", rec.device or "")
            lines.append(f"put {shlex.quote(path)} {shlex.quote(value)}")
    if not rec.apply:
        lines.append("echo 'nothing was recommended; nothing to roll back'")
    return "\n".join(lines) + "\n"


# -- presentation ----------------------------------------------------------------------------
def _pct(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return f"x{1 + x:.3g}" if x >= 1 else f"{x * 100:+.1f}%"


def _setting_text(setting: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting.items())


def _params_text(params: dict[str, Any], cache: str) -> str:
    text = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
    return text + (f", cache={cache}" if cache != "none" else "")


def rows(rec: Recommendation) -> list[dict[str, str]]:
    """One row per setting and cell, ready for a table (text only)."""
    found = []
    for r in rec.results:
        c = r.primary
        found.append({
            "tier": r.tier, "workload": r.workload, "params": _params_text(r.params, r.cache),
            "setting": _setting_text(r.setting),
            "current": ", ".join(f"{k}={v}" for k, v in r.current.items()),
            "metric": f"{c.metric} ({'higher' if c.direction == 'higher' else 'lower'} is "
                      "better)",
            "change": f"{_pct(c.change)} [{_pct(c.ci_low)}, {_pct(c.ci_high)}]",
            "p": f"{c.p:.3g} / {c.p_adjusted:.3g}",
            "verdict": r.verdict,
            "others": "; ".join(f"{o.metric} {_pct(o.change)} ({o.verdict})" for o in r.others),
            "scope": r.scope, "risk": r.risk,
        })
    return found


def markdown(rec: Recommendation) -> str:
    lines = [f"# Tuning recommendation for run {rec.run_id} ({rec.host})", ""]
    method = "Holm" if rec.correction == "holm" else "Benjamini-Hochberg"
    lines.append(f"{rec.comparisons} comparisons of a setting against the settings as found; "
                 f"p-values corrected together ({method}), "
                 f"alpha {rec.alpha:g}. Change = ratio of geometric means - 1, 95% CI from "
                 "Welch's t on log values.")
    if rec.shared_note:
        lines += ["", f"Note: {rec.shared_note}"]
    lines += ["", "## Apply", ""]
    lines += [f"- {k} = {v}" for k, v in rec.apply.items()] or \
        ["- nothing: no setting beat the current ones with evidence"]
    for c in rec.conflicts:
        lines.append(f"- conflict: {c}")
    lines += ["", "## Evidence", "",
              "| tier | workload | params | setting | current | metric | change [95% CI] | "
              "p / p adj. | verdict | other metrics | scope |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows(rec):
        cells = [row[k].replace("|", "/") for k in ("tier", "workload", "params", "setting",
                                                     "current", "metric", "change", "p",
                                                     "verdict", "others", "scope")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Risk", ""]
    for risk in dict.fromkeys(r.risk for r in rec.results):
        lines.append(f"- {risk}")
    if rec.notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in rec.notes)]
    return "\n".join(lines) + "\n"


def html_fragment(rec: Recommendation) -> str:
    """The report's tuning section: escaped HTML, no scripts, no outside resources."""
    e = html.escape
    colour = {"adopt": "#1a7f37", "harmful": "#cf222e", "no evidence": "#57606a"}
    head = ("<p>" + e(f"{rec.comparisons} comparisons of a setting against the host's "
                      "settings as found; p-values corrected together "
                      f"({'Holm' if rec.correction == 'holm' else 'Benjamini-Hochberg'}, "
                      f"alpha {rec.alpha:g}). Change = ratio of geometric means - 1 with the "
                      "95% CI of Welch's t on log values.") + "</p>")
    if rec.shared_note:
        head += f"<p><b>Shared by every tier:</b> {e(rec.shared_note)}</p>"
    apply = "".join(f"<li><code>{e(k)} = {e(str(v))}</code></li>" for k, v in rec.apply.items())
    head += ("<p><b>Apply:</b></p><ul>" + apply + "</ul>") if apply else \
        "<p><b>Apply:</b> nothing; no setting beat the current ones with evidence.</p>"
    head += "".join(f"<p class=muted>conflict: {e(c)}</p>" for c in rec.conflicts)
    columns = ("tier", "workload", "params", "setting", "current", "metric", "change", "p",
               "verdict", "others", "scope", "risk")
    titles = ("tier", "workload", "params", "setting", "current", "metric",
              "change [95% CI]", "p / p adj.", "verdict", "other metrics", "scope", "risk")
    body = "".join(
        "<tr>" + "".join(
            f'<td style="color:{colour[row["verdict"]]};font-weight:bold">{e(row[k])}</td>'
            if k == "verdict" else f"<td>{e(row[k])}</td>" for k in columns) + "</tr>"
        for row in rows(rec))
    table = ("<table><tr>" + "".join(f"<th>{e(t)}</th>" for t in titles) + "</tr>" + body
             + "</table>")
    notes = "".join(f"<p class=muted>{e(n)}</p>" for n in rec.notes)
    return head + table + notes


def recommendation_html(run: RunDir | str | Path) -> str:
    """For the HTML report: the tuning section of a run ('' if it swept nothing)."""
    rundir = run if isinstance(run, RunDir) else RunDir.open(str(run))
    try:
        return html_fragment(analyse(rundir))
    except BenchError:
        return ""
