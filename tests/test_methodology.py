"""Methodology checks on constructed runs: each finding appears when its cause is there, and
not when it is not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.analysis import frame, methodology
from bench.analysis.summary import print_methodology
from bench.core.rundir import RunDir
from tests import synthetic


def codes(findings: list[methodology.Finding]) -> set[str]:
    return {f.code for f in findings}


def test_every_finding_when_its_cause_is_there(tmp_path: Path) -> None:
    spec = synthetic.Spec("bad", tiers=("host", "kvm"), repetitions=3, noise=0.2)
    run = frame.load(synthetic.write_run(tmp_path, spec))
    found = methodology.check(run.manifest, run.frame)
    assert {"governor", "frequency", "loopback", "page_cache", "tcg", "noisy",
            "few_repetitions"} <= codes(found)
    by_code = {f.code: f for f in found}
    governor = by_code["governor"]
    assert governor.severity == "warning" and "schedutil" in governor.message
    assert any("boost" in f.message.lower() for f in found if f.code == "frequency")
    # loopback: the host's network cells, not kvm's bridged ones, not disk cells
    assert by_code["loopback"].cells == ("host: network.iperf3 [seconds=1]",)
    # page cache: buffered *reads* only
    cached = by_code["page_cache"].cells
    assert cached and all("direct=False" in c and "rw=read" in c for c in cached)
    assert by_code["tcg"].cells == ("kvm",)


def test_a_clean_run_has_none_of_them(tmp_path: Path) -> None:
    spec = synthetic.Spec("good", tiers=("host", "ns"), repetitions=10, noise=0.01,
                          sweep=False)
    path = synthetic.write_run(tmp_path, spec)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["host"]["governor"] = "performance"
    manifest["host"]["frequency"] = {"min_khz": "3000000", "max_khz": "3000000", "boost": "0"}
    (path / "manifest.json").write_text(json.dumps(manifest))
    # the host's network runs over loopback in every run: take them out for this check
    lines = [line for line in (path / "samples.jsonl").read_text().splitlines()
             if "network.iperf3" not in line]
    (path / "samples.jsonl").write_text("\n".join(lines) + "\n")
    run = frame.load(path)
    assert codes(methodology.check(run.manifest, run.frame)) == set()


def test_no_governor_visible_is_said_plainly(tmp_path: Path) -> None:
    path = synthetic.write_run(tmp_path, synthetic.Spec("vm", repetitions=5))
    run = frame.load(path)
    run.manifest["host"]["governor"] = None
    (finding,) = [f for f in methodology.check(run.manifest, run.frame) if f.code == "governor"]
    assert finding.severity == "info" and "could not be checked" in finding.message


def test_outliers_are_flagged(tmp_path: Path) -> None:
    path = synthetic.write_run(tmp_path, synthetic.Spec("outlier", tiers=("host",),
                                                        repetitions=12, sweep=False,
                                                        noise=0.005))
    lines = (path / "samples.jsonl").read_text().splitlines()
    for index, line in enumerate(lines):
        data = json.loads(line)
        if data["metric"] == "events_per_s" and data["repetition"] == 3:
            data["value"] *= 0.5  # one run disturbed
            lines[index] = json.dumps(data, sort_keys=True)
    (path / "samples.jsonl").write_text("\n".join(lines) + "\n")
    run = frame.load(path)
    (finding,) = [f for f in methodology.check(run.manifest, run.frame) if f.code == "outliers"]
    sysbench = [c for c in finding.cells if "events_per_s" in c]
    assert len(sysbench) == 2  # both sysbench cells, one sample each
    assert all("(1 of 12)" in c for c in sysbench)


def test_printed_at_the_end_of_a_run(tmp_path: Path) -> None:
    from io import StringIO

    from rich.console import Console

    path = synthetic.write_run(tmp_path, synthetic.Spec("printed", repetitions=3))
    out = StringIO()
    print_methodology(RunDir(path), Console(file=out, width=300))
    text = out.getvalue()
    assert "warning:" in text and "loopback" in text and "fewer than 5 repetitions" in text


def test_host_facts_that_cannot_be_read_are_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.core import hostinfo

    monkeypatch.setattr(hostinfo, "_read", lambda path: None)  # procfs/sysfs/etc unreadable
    facts = hostinfo.collect()
    assert facts["os"] == "unknown"
    assert facts["memory_bytes"] is None and facts["governor"] is None


def test_headline_keeps_each_workloads_headline_rows_and_every_row_of_others() -> None:
    import pandas as pd

    from bench.workloads import HEADLINE

    rows = [("cpu.sysbench", "events_per_s"), ("cpu.sysbench", "latency_p95_ms"),
            ("startup.noop", "first_instruction_ms"), ("unknown.tool", "a"),
            ("unknown.tool", "b"), ("cpu.sysbench", "events_per_s")]
    frame = pd.DataFrame(rows, columns=["workload", "metric"]).astype("category")
    kept = methodology.headline(frame)
    expected = [i for i, (w, m) in enumerate(rows) if m in HEADLINE.get(w, (m,))]
    assert kept.index.tolist() == expected == [0, 2, 3, 4, 5]
    assert methodology.headline(frame.astype(str)).index.tolist() == expected
