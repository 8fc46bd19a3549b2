"""How a recommendation reads: table rows, markdown, and the report's HTML section (a jinja2
template with autoescaping, bench/tune/templates/recommendation.html.j2).

Every effect is shown as the setting's cost factor against the settings as found: > 1 = slower
(worse), < 1 = faster, whichever way the metric points; the arrow says which way is better.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.analysis import stats
from bench.core.errors import BenchError
from bench.core.rundir import RunDir
from bench.tune.recommend.analysis import Comparison, Recommendation, analyse

VERDICT_COLOUR = {"adopt": "#1a7f37", "harmful": "#cf222e", "no evidence": "#57606a"}
COLUMNS = (("tier", "tier"), ("workload", "workload"), ("params", "params"),
           ("setting", "setting"), ("current", "current"), ("metric", "metric"),
           ("cost", "cost [95% CI]"), ("p", "p / p adj."), ("verdict", "verdict"),
           ("others", "other metrics"), ("scope", "scope"), ("risk", "risk"))


def _factor(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.3f}"


def _cost_text(c: Comparison) -> str:
    return f"{_factor(c.cost)} [{_factor(c.cost_low)}, {_factor(c.cost_high)}]"


def _arrow(c: Comparison) -> str:
    return "↑" if c.direction == "higher" else "↓"


def setting_text(setting: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting.items())


def _params_text(params: dict[str, Any], cache: str) -> str:
    text = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
    return text + (f", cache={cache}" if cache != "none" else "")


def method(rec: Recommendation) -> str:
    return (f"{rec.comparisons} comparisons of a setting against the host's settings as found; "
            f"p-values corrected together ({stats.CORRECTIONS[rec.correction]}, alpha "
            f"{rec.alpha:g}). Cost = how many times slower the metric is under the setting "
            "(ratio of geometric means, 95% CI of Welch's t on log values): > 1 = slower, "
            "< 1 = faster; ↑ higher is better, ↓ lower is better.")


def rows(rec: Recommendation) -> list[dict[str, str]]:
    """One row per setting and cell, ready for a table (text only)."""
    found = []
    for r in rec.results:
        c = r.primary
        found.append({
            "tier": r.tier, "workload": r.workload, "params": _params_text(r.params, r.cache),
            "setting": setting_text(r.setting),
            "current": ", ".join(f"{k}={v}" for k, v in r.current.items()),
            "metric": f"{c.metric} {_arrow(c)}",
            "cost": _cost_text(c),
            "p": f"{c.p:.3g} / {c.p_adjusted:.3g}",
            "verdict": r.verdict,
            "others": "; ".join(f"{o.metric} {_arrow(o)} cost {_factor(o.cost)} ({o.verdict})"
                                for o in r.others),
            "scope": r.scope, "risk": r.risk,
        })
    return found


def markdown(rec: Recommendation) -> str:
    lines = [f"# Tuning recommendation for run {rec.run_id} ({rec.host})", "", method(rec)]
    if rec.shared_note:
        lines += ["", f"Note: {rec.shared_note}"]
    lines += ["", "## Apply", ""]
    lines += [f"- {k} = {v}" for k, v in rec.apply.items()] or \
        ["- nothing: no setting beat the current ones with evidence"]
    for c in rec.conflicts:
        lines.append(f"- conflict: {c}")
    shown = [(k, t) for k, t in COLUMNS if k != "risk"]
    lines += ["", "## Evidence", "", "| " + " | ".join(t for _, t in shown) + " |",
              "|" + "---|" * len(shown)]
    for row in rows(rec):
        lines.append("| " + " | ".join(row[k].replace("|", "/") for k, _ in shown) + " |")
    lines += ["", "## Risk", ""]
    for risk in dict.fromkeys(r.risk for r in rec.results):
        lines.append(f"- {risk}")
    if rec.notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in rec.notes)]
    return "\n".join(lines) + "\n"


def _template(name: str) -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("bench.tune", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    return env.get_template(name)


def html_fragment(rec: Recommendation) -> str:
    """The report's tuning section: escaped HTML, no scripts, no outside resources."""
    return str(_template("recommendation.html.j2").render(
        rec=rec, method=method(rec), columns=COLUMNS, rows=rows(rec), colour=VERDICT_COLOUR))


def error_fragment(run_id: str, error: BenchError) -> str:
    """What the report shows when a swept run's recommendation fails: the cause and the fix."""
    return str(_template("recommendation-error.html.j2").render(run_id=run_id, error=error))


def recommendation_html(run: RunDir | str | Path) -> str:
    """For the HTML report: the tuning section of a swept run, or why there is none."""
    rundir = run if isinstance(run, RunDir) else RunDir.open(str(run))
    try:
        return html_fragment(analyse(rundir))
    except BenchError as exc:
        return error_fragment(rundir.run_id, exc)
    except (OSError, ValueError, KeyError) as exc:  # unreadable catalog, manifest, samples
        return error_fragment(rundir.run_id, BenchError(
            f"{type(exc).__name__}: {exc}",
            f"run `bench tune recommend {rundir.run_id}` to see the whole error."))
