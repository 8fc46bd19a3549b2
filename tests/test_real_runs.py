"""The analysis (report, compare, history, methodology) on runs bench really made on this machine
kind (tests/data/runs, see its README), next to the synthetic ones. Expected values come from
ground truth: the tools' own output in raw/, and arithmetic done here on samples.jsonl with the
standard library, never from the code under test."""

from __future__ import annotations

import html
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bench.analysis import frame, history, methodology
from bench.cli.main import main
from bench.workloads import WORKLOADS

RUNS = Path(__file__).parent / "data" / "runs"
BASE = RUNS / "20261206-235631-captured-a26e"
SAME = RUNS / "20261206-235706-captured-14a2"
THIRD = RUNS / "20261206-235735-captured-180b"
ALL = (BASE, SAME, THIRD)
Key = tuple[str, str, str]  # tier, workload, metric (each run has one cell per tier+workload)


def rows(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]


def values(run: Path) -> dict[Key, list[float]]:
    found: dict[Key, list[float]] = defaultdict(list)
    for row in rows(run):
        found[(row["cell"]["tier"], row["cell"]["workload"], row["metric"])].append(row["value"])
    return found


def headline(run: Path) -> dict[Key, list[float]]:
    return {k: v for k, v in values(run).items() if k[2] in WORKLOADS[k[1]].headline}


def test_the_captured_runs_are_what_the_readme_says() -> None:
    for run in ALL:
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["run_id"] == run.name and manifest["status"] == "complete"
        assert sorted(manifest["tiers"]) == ["host", "ns"]
        found = values(run)
        assert {k[:2] for k in found} == {(t, w) for t in ("host", "ns")
                                           for w in ("cpu.sysbench", "memory", "disk.fio")}
        assert all(len(v) == 3 for v in found.values()), "3 repetitions, the warm-up not kept"


# -- the samples against the tools' own output --------------------------------------------------

def _raw(run: Path, row: dict[str, Any]) -> str:
    cell = row["cell"]
    (path,) = (run / "raw").glob(f"{cell['tier']}.{cell['workload']}.*.r{row['repetition']}.*")
    return path.read_text()


@pytest.mark.parametrize("run", ALL, ids=lambda p: p.name)
def test_every_sample_is_what_its_tool_printed(run: Path) -> None:
    checked = 0
    for row in rows(run):
        raw, metric, value = _raw(run, row), row["metric"], row["value"]
        if row["cell"]["workload"] == "cpu.sysbench" and metric == "events_per_s":
            match = re.search(r"events per second:\s+([\d.]+)", raw)
            assert match and value == pytest.approx(float(match.group(1))), raw
        elif row["cell"]["workload"] == "memory" and metric == "copy_MBps":
            probe = json.loads(raw)
            assert value == pytest.approx(probe["mb_per_s"])
            # and the probe's own arithmetic: bytes copied over the time it took
            assert value == pytest.approx(probe["size_bytes"] * probe["copies"]
                                          / probe["seconds"] / 1e6, rel=1e-3)
        elif row["cell"]["workload"] == "disk.fio":
            job = json.loads(raw[raw.find("{"):])["jobs"][0]["read"]
            expected = {"iops": job["iops"], "bandwidth_MBps": job["bw_bytes"] / 1e6,
                        "clat_p99_us": job["clat_ns"]["percentile"]["99.000000"] / 1e3}
            if metric not in expected:
                continue
            assert value == pytest.approx(expected[metric]), metric
            if metric == "iops":  # fio's iops is its IO count over its runtime
                assert value == pytest.approx(job["total_ios"] / (job["runtime"] / 1000),
                                              rel=0.02)
        else:
            continue
        checked += 1
    assert checked == 2 * 3 * (1 + 1 + 3)  # tiers x repetitions x (sysbench, memory, fio)


# -- compare -------------------------------------------------------------------------------------

def test_compare_medians_changes_and_verdicts_from_the_samples() -> None:
    done = CliRunner().invoke(main, ["compare", str(BASE), str(SAME), "--format", "json"])
    data = json.loads(done.output)
    base, new = headline(BASE), headline(SAME)
    changes = {(c["tier"], c["cell"].split(" ")[0], c["metric"]): c for c in data["changes"]}
    assert set(changes) == set(base) == set(new)
    for key, change in changes.items():
        b, n = statistics.median(base[key]), statistics.median(new[key])
        assert change["base_median"] == pytest.approx(b, abs=0.01)
        assert change["new_median"] == pytest.approx(n, abs=0.01)
        assert change["base_n"] == change["new_n"] == 3
        assert change["change"] == pytest.approx(n / b - 1, rel=1e-6)
        # one convention for cost: > 0 means slower than the base
        slower = b / n - 1 if change["direction"] == "higher" else n / b - 1
        assert change["slowdown"] == pytest.approx(slower, rel=1e-6)
        # the exact Mann-Whitney test of 3 against 3 can go no lower than p = 2/20 = 0.1:
        # nothing can be called a significant change, whatever the medians did
        assert change["p_value"] >= 0.1 - 1e-9 and change["verdict"] == "same", change
    assert done.exit_code == 0 and data["regressions"] == 0, data["summary"]


# -- methodology ---------------------------------------------------------------------------------

def _label(key: Key) -> str:
    return f"{key[0]}: {key[1]}"


def test_methodology_flags_the_cells_the_numbers_say() -> None:
    run = frame.load(BASE)
    found = {f.code: f for f in methodology.check(run.manifest, run.frame)}
    cells = headline(BASE)
    # every headline cell has 3 repetitions, fewer than the 5 a CI needs
    assert len(found["few_repetitions"].cells) == len(cells) == 10
    # noisy: a coefficient of variation (sample standard deviation over the mean) above 10%
    noisy = {k for k, v in cells.items() if statistics.stdev(v) / statistics.mean(v) > 0.10}
    flagged = found["noisy"].cells if "noisy" in found else ()
    assert len(flagged) == len(noisy)
    for key in noisy:
        cv = statistics.stdev(cells[key]) / statistics.mean(cells[key])
        assert any(c.startswith(_label(key)) and f"{key[2]} (CV {cv:.0%})" in c
                   for c in flagged), (key, cv, flagged)
    # this machine kind shows no cpufreq governor (a VM): said, not guessed
    governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    if not governor.exists() and not run.manifest["host"].get("governor"):
        assert "No CPU frequency governor is visible" in found["governor"].message


# -- history -------------------------------------------------------------------------------------

def test_history_stores_the_per_run_medians(tmp_path: Path) -> None:
    engine = history.connect(f"sqlite:///{tmp_path / 'h.db'}")
    for run in ALL:
        history.ingest_path(engine, run)
    history.ingest_path(engine, BASE)  # again: replaced, not doubled
    assert [r.run_id for r in history.runs(engine)] == [run.name for run in ALL]  # by start
    points = history.points(engine)
    assert len(points) == sum(len(headline(run)) for run in ALL)
    for run in ALL:
        for (tier, workload, metric), vals in headline(run).items():
            (row,) = points[(points.run_id == run.name) & (points.tier == tier)
                            & (points.workload == workload) & (points.metric == metric)
                            ].itertuples()
            assert row.median == pytest.approx(statistics.median(vals)) and row.n == 3
    engine.dispose()


# -- report ---------------------------------------------------------------------------------------

def _shown(x: float) -> set[str]:
    """How a table may print a number: grouped thousands, or one to three decimals."""
    return {f"{x:,.0f}", f"{x:.1f}", f"{x:.2f}", f"{x:.3f}", f"{x:.3g}"}


def test_report_shows_the_medians_and_cost_factors(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    done = CliRunner().invoke(main, ["report", str(BASE), "-o", str(out)])
    assert done.exit_code == 0, done.output
    page = re.sub(r"<script.*?</script>", "", out.read_text(), flags=re.S)
    manifest = json.loads((BASE / "manifest.json").read_text())
    assert BASE.name in page and html.escape(manifest["host"]["kernel"]) in page
    table = [" ".join(html.unescape(re.sub(r"<[^>]+>", " ", row)).split())
             for row in re.findall(r"<tr\b.*?</tr>", page, flags=re.S)]
    cells = headline(BASE)
    for (tier, workload, metric), vals in cells.items():
        if tier != "host":
            continue
        host = statistics.median(vals)
        ns = statistics.median(cells[("ns", workload, metric)])
        # the cost factor of ns against host: > 1 means slower than the host
        cost = host / ns if rows_direction(BASE, metric) == "higher" else ns / host
        (row,) = [r for r in table if r.startswith(workload) and f" {metric} " in r]
        words = row.split()
        assert _shown(host) & set(words), (row, host)
        assert _shown(ns) & set(words), (row, ns)
        assert f"{cost:.3f}x" in words, (row, cost)


def rows_direction(run: Path, metric: str) -> str:
    (direction,) = {r["direction"] for r in rows(run) if r["metric"] == metric}
    return str(direction)
