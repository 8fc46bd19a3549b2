"""`bench compare BASE NEW`: per cell and metric, NEW's cost factor against BASE (> 1 = slower,
whichever way the metric points) with its CI, and a verdict.

The verdict comes from `stats.compare_many` (Mann-Whitney U, its p-values corrected for the
number of metrics compared, Holm by default or Benjamini-Hochberg, at alpha *and* a minimum
effect size); a "slower" verdict whose slowdown exceeds the threshold is a regression, and any
regression makes the command exit 1, so a CI job fails on a real slowdown and not on noise.
Every output format states the correction.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from rich.table import Table
from rich.text import Text

from bench.analysis import methodology, stats
from bench.analysis.defaults import COMPARE_FORMATS
from bench.analysis.frame import Run
from bench.core.numbers import human as _fmt

FORMATS = COMPARE_FORMATS


@dataclass
class Change:
    tier: str
    label: str
    metric: str
    unit: str
    comparison: stats.Comparison
    regression: bool

    @property
    def verdict(self) -> str:
        return self.comparison.verdict

    def as_dict(self) -> dict[str, Any]:
        c = self.comparison

        def num(value: float) -> float | None:
            return None if math.isnan(value) else value

        return {
            "tier": self.tier, "cell": self.label, "metric": self.metric, "unit": self.unit,
            "direction": c.direction, "base_median": num(c.base.median),
            "base_ci": [num(c.base.low), num(c.base.high)], "base_n": c.base.n,
            "new_median": num(c.new.median), "new_ci": [num(c.new.low), num(c.new.high)],
            "new_n": c.new.n, "change": num(c.change),
            "ratio_ci": [num(c.ratio.low), num(c.ratio.high)],
            "cost_factor": num(c.cost.median), "cost_ci": [num(c.cost.low), num(c.cost.high)],
            "p_value": c.p_value, "p_adjusted": num(c.p_adjusted),
            "slowdown": num(c.slowdown), "verdict": c.verdict, "regression": self.regression,
            "note": c.note,
        }


@dataclass
class Report:
    base: str
    new: str
    threshold: float
    changes: list[Change]
    only_base: list[str]
    only_new: list[str]
    correction: stats.Correction = "holm"
    alpha: float = stats.ALPHA

    @property
    def method(self) -> str:
        """How the verdicts were reached, for every output format."""
        return (f"Mann-Whitney U over {len(self.changes)} metrics, p-values corrected for "
                f"testing them together ({stats.CORRECTIONS[self.correction]}), alpha "
                f"{self.alpha:g}. Cost factor = how many times slower NEW is than BASE "
                "(> 1 = slower; ↑ higher is better, ↓ lower is better).")

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.regression]


def compare(base: Run, new: Run, threshold: float = 0.05, all_metrics: bool = False,
            alpha: float = stats.ALPHA, min_effect: float = stats.MIN_EFFECT,
            correction: stats.Correction = "holm") -> Report:
    a, b = base.frame, new.frame
    if not all_metrics:
        a, b = methodology.headline(a), methodology.headline(b)
    keys = ["cell", "metric"]
    groups_a = {k: g for k, g in a.groupby(keys, observed=True)} if not a.empty else {}
    groups_b = {k: g for k, g in b.groupby(keys, observed=True)} if not b.empty else {}
    common = sorted(set(groups_a) & set(groups_b), key=lambda k: _order(groups_a[k]))
    results = stats.compare_many(
        [(groups_a[k]["value"].to_numpy(float), groups_b[k]["value"].to_numpy(float),
          groups_a[k].iloc[0]["direction"]) for k in common],
        alpha=alpha, min_effect=min_effect, correction=correction)
    changes = []
    for key, result in zip(common, results, strict=True):
        first = groups_a[key].iloc[0]
        regression = result.verdict == "slower" and result.slowdown > threshold
        changes.append(Change(str(first["tier"]), str(first["label"]), str(key[1]),
                              str(first["unit"]), result, regression))

    def names(groups: dict[Any, Any], keys_: set[Any]) -> list[str]:
        return sorted(f"{g.iloc[0]['tier']}: {g.iloc[0]['label']} {k[1]}"
                      for k, g in groups.items() if k in keys_)

    return Report(base.run_id, new.run_id, threshold, changes,
                  names(groups_a, set(groups_a) - set(groups_b)),
                  names(groups_b, set(groups_b) - set(groups_a)), correction, alpha)


def _order(group: Any) -> tuple[str, str, str]:
    row = group.iloc[0]
    return (str(row["tier"]), str(row["label"]), str(row["metric"]))


def _cost_text(c: stats.Comparison) -> str:
    """NEW's cost factor with its CI: 1.100 [1.050, 1.150] = about 10% slower."""
    cost = c.cost
    if math.isnan(cost.median):
        return "-"
    low = "-" if math.isnan(cost.low) else f"{cost.low:.3f}"
    high = "-" if math.isnan(cost.high) else f"{cost.high:.3f}"
    return f"{cost.median:.3f} [{low}, {high}]"


def _metric_text(ch: Change) -> str:
    return f"{ch.metric} {'↑' if ch.comparison.direction == 'higher' else '↓'}"


def _summary_line(report: Report) -> str:
    counts = {v: sum(1 for c in report.changes if c.verdict == v)
              for v in ("slower", "faster", "same")}
    verdict = (f"{len(report.regressions)} regression(s) beyond {report.threshold:.0%}"
               if report.regressions else f"no regression beyond {report.threshold:.0%}")
    return (f"{len(report.changes)} metrics compared: {counts['slower']} slower, "
            f"{counts['faster']} faster, {counts['same']} same; {verdict}. {report.method}")


def as_table(report: Report) -> Table:
    table = Table(title=f"{report.base} -> {report.new}")
    for name in ("tier", "cell", "metric", "base median", "new median", "cost [95% CI]",
                 "p / p adj.", "verdict"):
        table.add_column(name, justify="right" if "median" in name or name[0] == "p" else "left")
    colours = {"slower": "red", "faster": "green", "same": ""}
    for ch in report.changes:
        c = ch.comparison
        verdict = Text(c.verdict + (" REGRESSION" if ch.regression else ""),
                       style=colours[c.verdict])
        if c.note:
            verdict.append(f" ({c.note})", style="dim")
        table.add_row(Text(ch.tier), Text(ch.label), Text(_metric_text(ch)),
                      Text(f"{_fmt(c.base.median)} {ch.unit}"),
                      Text(f"{_fmt(c.new.median)} {ch.unit}"), _cost_text(c),
                      f"{c.p_value:.3g} / {c.p_adjusted:.3g}", verdict)
    table.caption = _summary_line(report)
    return table


def as_json(report: Report) -> str:
    return json.dumps({
        "base": report.base, "new": report.new, "threshold": report.threshold,
        "alpha": report.alpha, "correction": report.correction, "method": report.method,
        "regressions": len(report.regressions), "summary": _summary_line(report),
        "changes": [c.as_dict() for c in report.changes],
        "only_in_base": report.only_base, "only_in_new": report.only_new,
    }, indent=2)


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def as_markdown(report: Report) -> str:
    lines = [f"### bench compare: `{_md(report.base)}` → `{_md(report.new)}`", "",
             _summary_line(report), "",
             "| tier | cell | metric | base | new | cost [95% CI] | p / p adj. | verdict |",
             "|---|---|---|---:|---:|---|---:|---|"]
    for ch in report.changes:
        c = ch.comparison
        verdict = f"**{c.verdict}**" if c.verdict != "same" else "same"
        if ch.regression:
            verdict += " ❌ regression"
        lines.append(f"| {_md(ch.tier)} | {_md(ch.label)} | {_md(_metric_text(ch))} | "
                     f"{_fmt(c.base.median)} {_md(ch.unit)} | {_fmt(c.new.median)} {_md(ch.unit)} "
                     f"| {_cost_text(c)} | {c.p_value:.3g} / {c.p_adjusted:.3g} | {verdict} |")
    for title, items in (("only in base", report.only_base), ("only in new", report.only_new)):
        if items:
            lines += ["", f"{title}: " + ", ".join(_md(i) for i in items)]
    return "\n".join(lines) + "\n"


def as_junit(report: Report) -> str:
    """JUnit XML: one test case per metric, a failure per regression."""
    suite = ET.Element("testsuite", name=f"bench compare {report.base} -> {report.new}",
                       tests=str(len(report.changes)), failures=str(len(report.regressions)),
                       errors="0", skipped="0")
    properties = ET.SubElement(suite, "properties")
    for name, value in (("correction", report.correction), ("alpha", f"{report.alpha:g}"),
                        ("method", report.method)):
        ET.SubElement(properties, "property", name=name, value=value)
    for ch in report.changes:
        case = ET.SubElement(suite, "testcase", classname=f"bench.{ch.tier}.{ch.label}",
                             name=ch.metric)
        c = ch.comparison
        detail = (f"{ch.tier} {ch.label} {_metric_text(ch)}: {_fmt(c.base.median)} -> "
                  f"{_fmt(c.new.median)} {ch.unit}, cost {_cost_text(c)}, p={c.p_value:.3g} "
                  f"({report.correction}-adjusted {c.p_adjusted:.3g}), verdict {c.verdict}")
        if ch.regression:
            failure = ET.SubElement(case, "failure", type="regression",
                                    message=f"slower by {c.slowdown:.1%} (threshold "
                                            f"{report.threshold:.0%})")
            failure.text = detail
        else:
            ET.SubElement(case, "system-out").text = detail
    suites = ET.Element("testsuites")
    suites.append(suite)
    ET.indent(suites)
    text = ET.tostring(suites, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{text}\n'


def render(report: Report, fmt: str) -> str | Table:
    if fmt == "table":
        return as_table(report)
    return {"json": as_json, "markdown": as_markdown, "junit": as_junit}[fmt](report)
