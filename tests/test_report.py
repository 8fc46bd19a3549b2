"""`bench report`: one self-contained HTML file, escaped, rendered for real in headless Chromium."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from plotly.offline import get_plotlyjs

from bench.analysis import frame
from bench.cli.main import main
from bench.report import render, write
from bench.report.figures import PALETTE
from tests import synthetic
from tests.parts import need

from . import browser


@pytest.fixture
def chromium() -> None:
    need("chromium", Path(browser.CHROMIUM).exists(),
         f"no headless Chromium at {browser.CHROMIUM} (apt-get install chromium)")

DRAWN = {
    "drawn": "document.body.getAttribute('data-figures-drawn')",
    "figures": "document.querySelectorAll('div.figure').length",
    "plots": "document.querySelectorAll('div.figure.js-plotly-plot').length",
    "overhead_points": "document.querySelectorAll('#overhead .js-plotly-plot .scatterlayer "
                       ".points path').length",
    "overhead_top": "document.querySelector('#overhead .js-plotly-plot')"
                    ".getBoundingClientRect().top",
    "overhead_bottom": "document.querySelector('#overhead .js-plotly-plot')"
                       ".getBoundingClientRect().bottom",
    "images": "document.querySelectorAll('img, iframe, object, embed').length",
    "scripts": "document.scripts.length",
    "hostile_text": f"document.body.innerText.includes({synthetic.HOSTILE[:25]!r})",
    "diff_rows": "document.querySelectorAll('tr.diff').length",
}


def rgb(hex_colour: str) -> tuple[int, int, int]:
    return (int(hex_colour[1:3], 16), int(hex_colour[3:5], 16), int(hex_colour[5:7], 16))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[frame.Run]:
    root = tmp_path_factory.mktemp("results")
    first = synthetic.write_run(root, synthetic.Spec("20260101-000000-syn-a", hostile=True))
    second = synthetic.write_run(root, synthetic.Spec("20260102-000000-syn-b", seed=1,
                                                      hostname="otherhost", shift=1.05))
    return [frame.load(first), frame.load(second)]


def test_self_contained_and_escaped(runs: list[frame.Run]) -> None:
    text = render(runs[:1])
    # plotly.js is embedded exactly once and nothing is loaded from elsewhere
    assert text.count("* plotly.js v") == 1
    ours = text.replace(get_plotlyjs(), "")
    assert len(ours) < len(text) - 1_000_000
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", ours)
    # every hostile string is escaped: it never appears raw, in HTML or in figure JSON
    assert synthetic.HOSTILE not in text
    assert "<script>alert" not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # shown as text in tables
    # the script blocks are ours: plotly.js, the template, one per figure, the loader
    figures = text.count('data-figure="')
    assert text.count("<script") == figures + 3


def test_sections_and_numbers(runs: list[frame.Run]) -> None:
    text = render(runs[:1])
    for anchor in ("runs", "overhead", "methodology", "startup", "distributions", "sweeps",
                   "density", "environment", "failures"):
        assert f'id="{anchor}"' in text, anchor
    # the docker tier costs 6% on every metric in the constructed run: its cost factors show
    factors = [float(x) for x in re.findall(r"(\d\.\d{3})x \[", text)]
    docker = [f for f in factors if 1.04 < f < 1.08]
    assert len(docker) >= 20
    assert "Buffered disk reads" in text and "TCG" not in text


def test_several_runs_show_the_environment_diff(runs: list[frame.Run]) -> None:
    text = render(runs)
    assert "Differences between the runs" in text
    diff = re.search(r"Differences between the runs \((\d+)\)", text)
    assert diff and int(diff.group(1)) >= 2  # hostname, scenario text (seed too)
    assert re.search(r'<tr class="diff"><td>host\.hostname</td>', text)


@pytest.mark.part("chromium")
def test_renders_in_headless_chromium_with_the_overhead_chart(runs: list[frame.Run],
                                                              tmp_path: Path,
                                                              chromium: None) -> None:
    path = write(runs[:1], tmp_path / "report.html")
    page = browser.render(path, DRAWN)
    assert page.errors == [], page.errors
    assert page.dialogs == []  # no injected alert() ran
    values = page.values
    assert values["drawn"] == "yes"
    assert values["figures"] >= 15 and values["plots"] == values["figures"]
    assert values["overhead_points"] == 2 * 34  # ns and docker: 34 headline metrics each
    assert values["images"] == 0 and values["hostile_text"] is True
    assert [r for r in page.requests if not r.startswith(("file:", "data:", "about:"))] == []
    # the overhead chart is on the first screen, its markers drawn in the tiers' colours
    assert values["overhead_top"] < 1000
    box = (0, int(values["overhead_top"]), 1400, min(int(values["overhead_bottom"]), 1000))
    counts = browser.colour_counts(page.screenshot, box)
    for tier_colour in (PALETTE[1], PALETTE[2]):  # ns, docker
        assert counts.get(rgb(tier_colour), 0) > 500, tier_colour
    assert len(counts) > 50  # text, axes, bars: not a blank image


@pytest.mark.part("chromium")
def test_comparison_report_renders(runs: list[frame.Run], tmp_path: Path, chromium: None) -> None:
    path = write(runs, tmp_path / "compare.html")
    page = browser.render(path, DRAWN)
    assert page.errors == [] and page.dialogs == []
    assert page.values["drawn"] == "yes" and page.values["diff_rows"] >= 2


def test_cli_writes_into_the_run_directory(runs: list[frame.Run], tmp_path: Path) -> None:
    copy = tmp_path / runs[1].run_id
    shutil.copytree(runs[1].path, copy)
    result = CliRunner().invoke(main, ["report", str(copy)])
    assert result.exit_code == 0, result.output
    assert (copy / "report.html").stat().st_size > 1_000_000
    out = tmp_path / "two.html"
    result = CliRunner().invoke(main, ["report", str(runs[0].path), str(copy), "-o", str(out)])
    assert result.exit_code == 0 and out.exists()
    result = CliRunner().invoke(main, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "No run" in result.output


LAYOUT = {
    # title and legend boxes of every chart that has both, as [top, right, bottom, left] pairs
    "boxes": """Array.from(document.querySelectorAll('.js-plotly-plot')).map(function (p) {
        var title = p.querySelector('.gtitle'), legend = p.querySelector('.legend');
        if (!title || !legend) return null;
        var a = title.getBoundingClientRect(), b = legend.getBoundingClientRect();
        return [[a.top, a.right, a.bottom, a.left], [b.top, b.right, b.bottom, b.left]];
    }).filter(function (x) { return x; })""",
    # per start-up panel: the height of its stacked bar in pixels
    "panels": """Array.from(document.querySelectorAll('#startup .cartesianlayer .subplot'))
        .map(function (sp) {
            var top = 1e9, bottom = 0;
            sp.querySelectorAll('.barlayer path').forEach(function (path) {
                var r = path.getBoundingClientRect();
                if (r.height > 0) {
                    top = Math.min(top, r.top);
                    bottom = Math.max(bottom, r.bottom);
                }
            });
            return bottom > top ? bottom - top : 0;
        })""",
}


@pytest.mark.part("chromium")
def test_charts_keep_legends_off_titles_and_every_tier_visible(tmp_path: Path,
                                                               chromium: None) -> None:
    """Docker starting 100 times slower than host must not squash host and ns to slivers."""
    path = synthetic.write_run(tmp_path, synthetic.Spec(
        "slow-docker", slowdown={"ns": 1.02, "docker": 100.0}, repetitions=3))
    page = browser.render(write([frame.load(path)], tmp_path / "r.html"), LAYOUT)
    assert page.errors == []
    boxes = page.values["boxes"]
    assert len(boxes) >= 10
    for (t_top, t_right, t_bottom, t_left), (l_top, l_right, l_bottom, l_left) in boxes:
        apart = (t_right <= l_left or l_right <= t_left or t_bottom <= l_top
                 or l_bottom <= t_top)
        assert apart, ("a legend overlaps a chart title", boxes)
    panels = page.values["panels"]
    assert len(panels) == 3  # host, ns, docker: one panel each
    assert min(panels) > 100, panels  # each tier's bar fills its own panel


def test_a_trend_of_few_runs_ticks_at_the_runs() -> None:
    """Three runs seconds apart: plotly's automatic date ticks would be fractions of a second."""
    import pandas as pd

    from bench.report import figures

    points = pd.DataFrame({"series": ["a"] * 3, "started": [1_790_000_000.0, 1_790_000_002.0,
                                                            1_790_000_005.0],
                           "median": [1.0, 1.1, 1.2], "run_id": ["r1", "r2", "r3"]})
    axis = figures.trend(points, "t", "ms", {}).layout.xaxis
    assert axis.tickmode == "array" and len(axis.tickvals) == 3
    assert [t.replace("<br>", " ") for t in axis.ticktext] == [
        "2026-09-21 14:13:20", "2026-09-21 14:13:22", "2026-09-21 14:13:25"]
    many = pd.concat([points.assign(started=points["started"] + 86400 * k) for k in range(6)])
    assert figures.trend(many, "t", "ms", {}).layout.xaxis.tickformat == "%Y-%m-%d\n%H:%M"


def test_an_aggregated_report_shows_the_numbers_of_the_full_path(tmp_path: Path) -> None:
    """10,000 samples: the report draws boxes from quantiles instead of points, and every median,
    CI, cost factor and verdict it shows is the one computed from all the samples."""
    import json

    import numpy as np

    from bench.analysis import methodology, stats
    from bench.report.figures import RAW_POINTS_MAX
    from bench.report.templating import num

    run = frame.load(synthetic.write_run(tmp_path, synthetic.Spec(
        "ten-thousand", repetitions=175, sweep=False, density=False, extra_cells=6)))
    assert 9_000 <= len(run.frame) <= 11_000
    text = render([run])
    main = methodology.headline(run.frame)
    groups = {k: g["value"].to_numpy(float) for k, g in
              main.groupby(["label", "metric", "tier"], observed=True)}
    checked = 0
    for (label, metric, tier), values in groups.items():
        est = stats.median_ci(values)
        shown = f"{num(est.median)} [{num(est.low)}, {num(est.high)}]"
        assert shown in text, (label, metric, tier, shown)
        if tier == "host":
            continue
        direction = str(main.loc[main["metric"] == metric, "direction"].iloc[0])
        cost = stats.overhead_ci(values, groups[(label, metric, "host")], direction)
        verdict = "slower" if cost.low > 1 else "faster" if cost.high < 1 else "same"
        cell = f'<td class="num {verdict}">{cost.median:.3f}x [{cost.low:.3f}, {cost.high:.3f}]'
        assert cell in text, (label, metric, tier, cell)
        checked += 1
    assert checked >= 20
    # the distributions: boxes from quantiles (no raw points) equal to the samples' quantiles
    blocks = re.findall(r'<script type="application/json" data-figure="fig\d+">(.*?)</script>',
                        text)
    drawn = 0
    for block in blocks:
        fig = json.loads(block)
        title = fig["layout"].get("title", {}).get("text", "")
        if title != "cpu.sysbench: events_per_s":
            continue
        for trace in fig["data"]:
            assert "y" not in trace and len(trace["q1"]) == len(trace["x"])
            for x, q1, med, q3 in zip(trace["x"], trace["q1"], trace["median"], trace["q3"],
                                      strict=True):
                part = main[(main["tier"] == trace["name"]) & (main["metric"] == "events_per_s")]
                values = part.loc[methodology_short(part) == x, "value"].to_numpy(float)
                assert len(values) > 0
                assert [q1, med, q3] == pytest.approx(np.percentile(values, [25, 50, 75]))
                drawn += 1
    assert drawn >= 12 and len(run.frame) > RAW_POINTS_MAX


def methodology_short(part: object) -> object:
    from bench.report.tables import short_labels

    return short_labels(part)  # type: ignore[arg-type]
