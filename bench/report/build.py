"""`bench report RUN...`: one self-contained HTML file for one run or several compared."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd

from bench.analysis import methodology
from bench.analysis.frame import Run
from bench.analysis.summary import emulation_banner
from bench.report import figures, switches
from bench.report import tables as analysis
from bench.report.page import Page, esc
from bench.tune.recommend import recommendation_html

MAX_HEATMAPS = 40


def _num(value: float) -> str:
    if value is None or math.isnan(value):
        return "&ndash;"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp)) if stamp else "?"


def _overview(runs: list[Run]) -> str:
    rows = []
    for run in runs:
        m = run.manifest
        failed = len(run.failures)
        skipped = "; ".join(f"{k}: {v}" for k, v in (m.get("skipped_tiers") or {}).items())
        rows.append(
            f"<tr><td>{esc(run.run_id)}</td><td>{esc(run.host)}</td>"
            f"<td>{esc((m.get('scenario') or {}).get('name'))}</td>"
            f"<td>{esc(_when(run.started))}</td><td>{esc(m.get('status'))}</td>"
            f"<td>{esc(', '.join(map(str, m.get('tiers', []))))}</td>"
            f"<td class=num>{len(run.frame):,}</td><td class=num>{failed}</td>"
            f"<td>{esc(skipped) or '&ndash;'}</td></tr>")
    return ("<table><tr><th>run</th><th>host</th><th>scenario</th><th>started</th><th>status"
            "</th><th>tiers</th><th>samples</th><th>failed runs</th><th>skipped tiers</th></tr>"
            + "".join(rows) + "</table>")


def _overhead_table(rows: list[analysis.OverheadRow], tiers: list[str], several: bool) -> str:
    head = "".join(f"<th>{esc(t)} median [95% CI]</th>"
                   + ("" if t == analysis.BASELINE else f"<th>{esc(t)} vs host [95% CI]</th>")
                   for t in tiers)
    lines = []
    for row in rows:
        cells = []
        for tier in tiers:
            cell = row.tiers.get(tier)
            if cell is None:
                cells.append("<td class=num>&ndash;</td>" + ("" if tier == analysis.BASELINE
                                                        else "<td class=num>&ndash;</td>"))
                continue
            e = cell.estimate
            cells.append(f"<td class=num title=\"n={e.n}, CV {_num(cell.cv * 100)}%\">"
                         f"{_num(e.median)} [{_num(e.low)}, {_num(e.high)}]</td>")
            if tier != analysis.BASELINE:
                o = cell.overhead
                if o is None or math.isnan(o.median):
                    cells.append("<td class=num>&ndash;</td>")
                else:
                    slower = o.low > 1
                    faster = o.high < 1
                    klass = "slower" if slower else "faster" if faster else "same"
                    cells.append(f"<td class=\"num {klass}\">{o.median:.3f}x "
                                 f"[{o.low:.3f}, {o.high:.3f}]</td>")
        run = f"<td>{esc(row.run_id)}</td>" if several else ""
        arrow = "↑" if row.direction == "higher" else "↓"
        lines.append(f"<tr>{run}<td>{esc(row.label)}</td><td>{esc(row.metric)}</td>"
                     f"<td>{esc(row.unit)} {arrow}</td>{''.join(cells)}</tr>")
    run_head = "<th>run</th>" if several else ""
    return ("<p class=muted>Cost factor = how many times worse than host (for throughput "
            "host/tier, for latency and time tier/host): 1.10x = 10% overhead. Red: the whole "
            "95% CI is above 1; green: below 1. ↑ higher is better, ↓ lower is better.</p>"
            f"<table><tr>{run_head}<th>cell</th><th>metric</th><th>unit</th>{head}</tr>"
            + "".join(lines) + "</table>")


def _methodology(runs: list[Run], checked: list[list[methodology.Finding]]) -> str:
    parts = []
    for run, findings in zip(runs, checked, strict=True):
        title = f"<h3>{esc(run.run_id)}</h3>" if len(runs) > 1 else ""
        items = []
        for f in findings:
            cells = ""
            if f.cells:
                cells = ("<details><summary>" f"{len(f.cells)} cell(s)</summary><ul>"
                         + "".join(f"<li>{esc(c)}</li>" for c in f.cells) + "</ul></details>")
            items.append(f'<div class="{esc(f.severity)}"><b>{esc(f.severity)}</b> '
                         f"({esc(f.code)}): {esc(f.message)}<br><span class=muted>Fix: "
                         f"{esc(f.fix)}</span>{cells}</div>")
        parts.append(title + ("".join(items) or "<p>No findings.</p>"))
    return "".join(parts)


def _failures(runs: list[Run]) -> str:
    rows = []
    for run in runs:
        for r in run.failures:
            if r.status != "ok":
                rows.append(f"<tr><td>{esc(run.run_id)}</td><td>{esc(r.key)}</td>"
                            f"<td>{esc(r.status)}</td><td>{esc(r.error)}</td>"
                            f"<td><pre>{esc(r.stderr[-800:])}</pre></td></tr>")
    if not rows:
        return ""
    return ("<table><tr><th>run</th><th>run key</th><th>status</th><th>error</th>"
            "<th>stderr (end)</th></tr>" + "".join(rows[:200]) + "</table>")


def _environment(runs: list[Run]) -> str:
    envs = [analysis.environment(run.manifest) for run in runs]
    scenario = "".join(
        f"<details><summary>scenario of {esc(run.run_id)}</summary><pre>"
        f"{esc((run.manifest.get('scenario') or {}).get('text', ''))}</pre></details>"
        for run in runs)
    head = "".join(f"<th>{esc(run.run_id)}</th>" for run in runs)
    if len(runs) == 1:
        env = envs[0]
        rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in env.items()
                       if not k.startswith("image.packages."))
        packages = "".join(f"<tr><td>{esc(k[15:])}</td><td>{esc(v)}</td></tr>"
                           for k, v in env.items() if k.startswith("image.packages."))
        return (f"<table><tr><th>key</th>{head}</tr>{rows}</table>{scenario}"
                f"<details><summary>image packages</summary><table>{packages}</table></details>")
    differ, same = analysis.environment_diff(envs)
    volatile = ("run_id", "started_at", "finished_at")

    def row(key: str, klass: str) -> str:
        values = "".join(f"<td>{esc(env.get(key, '—'))}</td>" for env in envs)
        return f'<tr class="{klass}"><td>{esc(key)}</td>{values}</tr>'

    changed = [k for k in differ if k not in volatile]
    diff_rows = "".join(row(k, "diff") for k in changed)
    same_rows = "".join(row(k, "") for k in same if not k.startswith("image.packages."))
    return (f"<h3>Differences between the runs ({len(changed)})</h3>"
            f"<table><tr><th>key</th>{head}</tr>{diff_rows or '<tr><td>none</td></tr>'}</table>"
            f"<details><summary>the same in every run ({len(same)})</summary>"
            f"<table><tr><th>key</th>{head}</tr>{same_rows}</table></details>{scenario}")


def render(runs: list[Run], plotlyjs: str = "inline") -> str:
    """The report page for `runs` (one, or several to compare)."""
    several = len(runs) > 1
    tiers = analysis.tier_order(runs)
    hosts = sorted({run.host for run in runs})
    title = ("bench report: " + runs[0].run_id) if not several else \
        f"bench report: {len(runs)} runs"
    page = Page(title, f"host(s) {', '.join(hosts)} · tiers {', '.join(tiers) or 'none'} · "
                       f"generated {_when(time.time())}")
    emulated = sorted({str(t) for run in runs if "meta.accelerator" in run.frame
                       for t in run.frame.loc[run.frame["meta.accelerator"].astype(str) == "tcg",
                                              "tier"]})
    if emulated:
        page.add("emulated", "Emulated results",
                 f'<div class="warning"><b>{esc(emulation_banner(emulated))}</b></div>')
    checked = [methodology.check(run.manifest, run.frame) for run in runs]
    page.add("runs", "Runs", _overview(runs))

    rows = [row for run in runs for row in analysis.overhead_rows(run, tiers)]
    chart = figures.overhead(rows, tiers, several)
    body = page.figure(chart) if chart else (
        "<p class=muted>Only the host tier has samples: there is no overhead to show. Medians "
        "and CIs are in the table below.</p>")
    page.add("overhead", "Overhead vs host", body + _overhead_table(rows, tiers, several))
    page.add("methodology", "Methodology warnings", _methodology(runs, checked))

    bars, segments = analysis.startup_phases(runs, tiers)
    fig = figures.startup(bars, segments)
    if fig is not None:
        counts = ", ".join(f"{esc(b.name)}: n={b.n}" for b in bars)
        page.add("startup", "Start-up phases",
                 page.figure(fig) + f"<p class=muted>Medians of the time between consecutive "
                 f"phase stamps of each start ({counts}).</p>")

    mains = [(run, methodology.headline(run.frame)) for run in runs]
    metrics: dict[tuple[str, str], str] = {}
    for _, main in mains:
        for workload, metric, unit in main[["workload", "metric", "unit"]].drop_duplicates() \
                .itertuples(index=False, name=None):
            metrics.setdefault((str(workload), str(metric)), str(unit))
    dists: list[str] = []
    heats: list[str] = []
    dens: list[str] = []
    for (workload, metric), unit in sorted(metrics.items()):
        series = []
        parts = [main[(main["workload"] == workload) & (main["metric"] == metric)]
                 for _, main in mains]
        labels = analysis.short_labels(pd.concat(parts)).to_numpy()
        start = 0
        for (run, _), part in zip(mains, parts, strict=True):
            part = part.assign(short=labels[start:start + len(part)])
            start += len(part)
            for tier in tiers:
                chunk = part[part["tier"].astype(str) == tier]
                if not chunk.empty:
                    series.append((f"{tier} · {run.run_id}" if several else tier, chunk))
        dists.append(page.figure(figures.distribution(workload, metric, unit, series)))
        for run, main in mains:
            part = main[(main["workload"] == workload) & (main["metric"] == metric)]
            if part.empty:
                continue
            suffix = f"<p class=muted>run {esc(run.run_id)}</p>" if several else ""
            if methodology.family(workload) == "density":
                fig = figures.density(part, workload, metric, unit, tiers)
                dens += [page.figure(fig) + suffix] if fig is not None else []
                continue
            for fig in figures.heatmaps(part, workload, metric, unit, tiers):
                if len(heats) < MAX_HEATMAPS:
                    heats.append(page.figure(fig) + suffix)
    page.add("distributions", "Distributions per cell",
             "<p class=muted>Every sample of each headline metric, per cell and tier (boxes "
             "from quantiles when there are too many points to draw).</p>" + "".join(dists)
             if dists else "<p>No samples.</p>")
    page.add("sweeps", "Sweep axes",
             "".join(heats) if heats else "<p class=muted>No cell differs from another in a "
             "swept parameter or tunable.</p>")
    page.add("density", "Density",
             "".join(dens) if dens else "<p class=muted>No density samples in these runs.</p>")
    failures = _failures(runs)
    if failures:
        page.add("failures", "Failed runs", failures)
    for run in runs:  # runs with a `sweep:` (bench/tune/recommend.py; escaped HTML)
        swept = not run.frame.empty and (
            (run.frame["tunables"].astype(str) != "{}").any()
            or (run.frame["cache"].astype(str) != "none").any())
        tuning = recommendation_html(run.path) if swept and run.path.exists() else ""
        if tuning:
            page.add(f"tuning-{run.run_id}", f"Tuning recommendations ({run.run_id})", tuning)
    for run in runs:  # runs with `switches:` (bench/report/switches.py; escaped HTML)
        switches.section(page, run.run_id, run.path)
    page.add("environment", "Environment", _environment(runs))
    return page.render(plotlyjs)


def write(runs: list[Run], out: Path, plotlyjs: str = "inline") -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render(runs, plotlyjs), encoding="utf-8")
    tmp.replace(out)
    return out
