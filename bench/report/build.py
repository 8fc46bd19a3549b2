"""`bench report RUN...`: one self-contained HTML file for one run or several compared.

The page is a list of sections, each made by one builder in `SECTIONS` from a shared
`Report` (the runs, their tiers, each run's headline rows, the page). A feature with its own
section (bench/report/<feature>.py) adds its builder to that list; a builder that has
nothing to show adds nothing. Every piece of HTML comes from an autoescaped template
(bench/report/templates/).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd
from markupsafe import Markup

from bench.analysis import methodology
from bench.analysis.frame import Run
from bench.analysis.summary import emulation_banner
from bench.report import figures, switches
from bench.report import isolation as isolation_section
from bench.report import layers as layers_section
from bench.report import tables as analysis
from bench.report.page import Page
from bench.report.templating import render as template
from bench.report.templating import when
from bench.tune.recommend import recommendation_html

MAX_HEATMAPS = 40


@dataclass
class Report:
    """What every section builder reads (computed once, shared)."""

    runs: list[Run]
    page: Page
    tiers: list[str] = field(default_factory=list)

    @property
    def several(self) -> bool:
        return len(self.runs) > 1

    @cached_property
    def mains(self) -> list[tuple[Run, pd.DataFrame]]:
        """Each run with its headline-metric rows, only the columns the figures read (every
        filter below copies what it keeps: on a million rows the metadata columns cost)."""
        found = []
        for run in self.runs:
            columns = [c for c in run.frame.columns if not c.startswith("meta.")
                       and c not in ("timestamp", "repetition", "params", "tunables")]
            found.append((run, methodology.headline(run.frame[columns])))
        return found

    @cached_property
    def checked(self) -> list[list[methodology.Finding]]:
        return [methodology.check(run.manifest, run.frame) for run in self.runs]


Section = Callable[[Report], None]


def emulated(report: Report) -> None:
    tiers = sorted({str(t) for run in report.runs if "meta.accelerator" in run.frame
                    for t in run.frame.loc[run.frame["meta.accelerator"] == "tcg", "tier"]})
    if tiers:
        report.page.add("emulated", "Emulated results", template(
            "note.html.j2", text=emulation_banner(tiers), warning=True))


def overview(report: Report) -> None:
    report.page.add("runs", "Runs", template("overview.html.j2", runs=report.runs))


def overhead(report: Report) -> None:
    rows = [row for run in report.runs for row in analysis.overhead_rows(run, report.tiers)]
    chart = figures.overhead(rows, report.tiers, report.several)
    shown = [report.page.figure(chart)] if chart else []
    report.page.add("overhead", "Overhead vs host", template(
        "figures.html.j2", intro="", figures=shown,
        empty="Only the host tier has samples: there is no overhead to show. Medians and CIs "
              "are in the table below.", note="")
        + template("overhead_table.html.j2", rows=rows, tiers=report.tiers,
                   several=report.several, baseline=analysis.BASELINE))


def methodology_section(report: Report) -> None:
    report.page.add("methodology", "Methodology warnings", template(
        "methodology.html.j2", checked=list(zip(report.runs, report.checked, strict=True)),
        several=report.several))


def startup(report: Report) -> None:
    bars, segments = analysis.startup_phases(report.runs, report.tiers)
    fig = figures.startup(bars, segments)
    if fig is not None:
        counts = ", ".join(f"{b.name}: n={b.n}" for b in bars)
        report.page.add("startup", "Start-up phases", template(
            "figures.html.j2", intro="", figures=[report.page.figure(fig)], empty="",
            note=f"Medians of the time between consecutive phase stamps of each start, one "
                 f"panel per tier on its own scale ({counts})."))


def samples(report: Report) -> None:
    """Distributions, sweep heat maps and density curves of every headline metric."""
    page, tiers, mains = report.page, report.tiers, report.mains
    metrics: dict[tuple[str, str], str] = {}
    for _, main in mains:
        for workload, metric, unit in main[["workload", "metric", "unit"]].drop_duplicates() \
                .itertuples(index=False, name=None):
            metrics.setdefault((str(workload), str(metric)), str(unit))
    dists: list[Markup] = []
    heats: list[Markup] = []
    dens: list[Markup] = []
    for (workload, metric), unit in sorted(metrics.items()):
        series = []
        parts = [main[(main["workload"] == workload) & (main["metric"] == metric)]
                 for _, main in mains]
        labels = analysis.short_labels(pd.concat(parts)).to_numpy()  # the same in every run
        start = 0
        for (run, _), part in zip(mains, parts, strict=True):
            part = part.assign(short=labels[start:start + len(part)])
            start += len(part)
            for tier in tiers:
                chunk = part[part["tier"] == tier]
                if not chunk.empty:
                    series.append((f"{tier} · {run.run_id}" if report.several else tier, chunk))
        dists.append(page.figure(figures.distribution(workload, metric, unit, series)))
        for (run, _), part in zip(mains, parts, strict=True):
            if part.empty:
                continue
            suffix = template("note.html.j2", text=f"run {run.run_id}", warning=False) \
                if report.several else Markup()
            if methodology.family(workload) == "density":
                fig = figures.density(part, workload, metric, unit, tiers)
                dens += [page.figure(fig) + suffix] if fig is not None else []
                continue
            for fig in figures.heatmaps(part, workload, metric, unit, tiers):
                if len(heats) < MAX_HEATMAPS:
                    heats.append(page.figure(fig) + suffix)
    page.add("distributions", "Distributions per cell", template(
        "figures.html.j2", figures=dists, empty="No samples.", note="",
        intro="Every sample of each headline metric, per cell and tier (boxes from quantiles "
              "when there are too many points to draw)." if dists else ""))
    page.add("sweeps", "Sweep axes", template(
        "figures.html.j2", intro="", figures=heats, note="",
        empty="No cell differs from another in a swept parameter or tunable."))
    page.add("density", "Density", template(
        "figures.html.j2", intro="", figures=dens, note="",
        empty="No density samples in these runs."))


def isolation(report: Report) -> None:
    """Visibility, interference, containment and accounting (bench/report/isolation.py)."""
    isolation_section.add(report.page, report.runs)  # only when a run has isolation samples


def failures(report: Report) -> None:
    failed = [(run.run_id, r) for run in report.runs for r in run.failures if r.status != "ok"]
    if failed:
        report.page.add("failures", "Failed runs",
                        template("failures.html.j2", failures=failed[:200]))


def tuning(report: Report) -> None:
    """Runs with a `sweep:` (bench/tune/recommend.py, which escapes its own HTML)."""
    for run in report.runs:
        swept = not run.frame.empty and (
            (run.frame["tunables"] != "{}").any() or (run.frame["cache"] != "none").any())
        html = recommendation_html(run.path) if swept and run.path.exists() else ""
        if html:
            report.page.add(f"tuning-{run.run_id}", f"Tuning recommendations ({run.run_id})",
                            Markup(html))  # noqa: S704 (escaped by recommend's template)


def switch_runs(report: Report) -> None:
    """Runs with `switches:` (bench/report/switches.py, which escapes its own HTML)."""
    for run in report.runs:
        switches.section(report.page, run.run_id, run.path)


def environment(report: Report) -> None:
    envs = [analysis.environment(run.manifest) for run in report.runs]
    differ, same = analysis.environment_diff(envs)
    volatile = ("run_id", "started_at", "finished_at")
    report.page.add("environment", "Environment", template(
        "environment.html.j2", runs=report.runs, envs=envs, same=same,
        changed=[k for k in differ if k not in volatile]))


# the page's sections in order; a feature's section goes in with one line here
SECTIONS: list[Section] = [emulated, overview, overhead, methodology_section, startup,
                           layers_section.section, samples, isolation, switch_runs, failures,
                           tuning, environment]


def render(runs: list[Run], plotlyjs: str = "inline") -> str:
    """The report page for `runs` (one, or several to compare)."""
    tiers = analysis.tier_order(runs)
    hosts = sorted({run.host for run in runs})
    title = ("bench report: " + runs[0].run_id) if len(runs) == 1 else \
        f"bench report: {len(runs)} runs"
    page = Page(title, f"host(s) {', '.join(hosts)} · tiers {', '.join(tiers) or 'none'} · "
                       f"generated {when(time.time())}")
    report = Report(runs, page, tiers)
    for section in SECTIONS:
        section(report)
    return page.render(plotlyjs)


def write(runs: list[Run], out: Path, plotlyjs: str = "inline") -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render(runs, plotlyjs), encoding="utf-8")
    tmp.replace(out)
    return out
