"""The end-of-run summary leads with the answer: a tier x family matrix of cost factors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from rich.console import Console

from bench.analysis.summary import cost_factors, print_summary
from bench.core.rundir import RunDir
from tests import synthetic


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    spec = synthetic.Spec("matrix", tiers=("host", "ns", "docker"),
                          slowdown={"ns": 1.02, "docker": 1.25}, noise=0.002, density=False)
    return RunDir(synthetic.write_run(tmp_path, spec))


def test_cost_factors_recover_the_constructed_slowdown(run: RunDir) -> None:
    factors = cost_factors(run.samples())
    for (tier, family), found in factors.items():
        if family == "startup":  # synthetic start-ups draw their phases at random
            continue
        expected = {"ns": 1.02, "docker": 1.25}[tier]
        gmean = math.exp(sum(map(math.log, found)) / len(found))
        assert gmean == pytest.approx(expected, rel=0.02), (tier, family, found)
    assert {t for t, _ in factors} == {"ns", "docker"}
    assert {"cpu", "disk"} <= {f for _, f in factors}


def test_summary_leads_with_the_matrix_and_keeps_details_for_all_metrics(run: RunDir) -> None:
    console = Console(record=True, width=250)
    print_summary(run, console)
    text = console.export_text()
    assert text.index("cost factor vs host per family") < text.index("--all-metrics")
    assert "median and 95% CI per cell" not in text
    assert "1.25" in text
    console = Console(record=True, width=250)
    print_summary(run, console, all_metrics=True)
    assert "median and 95% CI per cell" in console.export_text()
