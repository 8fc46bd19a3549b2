"""Hostile content: scenario text, host metadata and sample labels carrying shell metacharacters,
rich markup and HTML/JS go through every output of the CLI (`bench report`, `bench compare`
as markdown and JUnit, `bench summary`) without running anything and without appearing as live
markup. (That tunable paths cannot leave the catalog, `..` or symlinks, is in test_tune.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from bench.core.image import Image
from tests import synthetic

REPO = Path(__file__).resolve().parent.parent
PWNED = Path(f"/tmp/pwned-{uuid.uuid4().hex[:8]}")
EVIL = (f"<script>alert(1)</script>\"'&<img src=x onerror=alert(2)> $(touch {PWNED}) "
        f"`touch {PWNED}`; touch {PWNED} | cat && touch {PWNED} [bold red]markup[/] [/]")


def _bench(*args: str, results: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BENCH_RESULTS_DIR": str(results), "COLUMNS": "250", **extra}
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def _poison(path: Path) -> None:
    """Put EVIL where the synthetic run put its own hostile string, and into the host facts."""
    old, new = json.dumps(synthetic.HOSTILE)[1:-1], json.dumps(EVIL)[1:-1]
    for name in ("manifest.json", "samples.jsonl", "runs.jsonl"):
        text = (path / name).read_text()
        assert old in text
        (path / name).write_text(text.replace(old, new))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["host"]["kernel"] = EVIL
    manifest["host"]["cpu_model"] = EVIL
    manifest["scenario"]["text"] = f"name: x\ndescription: {json.dumps(EVIL)}\n"
    (path / "manifest.json").write_text(json.dumps(manifest))
    lines = [json.loads(line) for line in (path / "samples.jsonl").read_text().splitlines()]
    for sample in lines:
        sample["metadata"]["label"] = EVIL
    (path / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in lines))


@pytest.fixture
def poisoned(tmp_path: Path) -> tuple[Path, Path, Path]:
    results = tmp_path / "results"
    spec = {"tiers": ("host", "docker"), "repetitions": 6, "hostile": True, "density": False}
    a = synthetic.write_run(results, synthetic.Spec("20260101-000000-evil-a", **spec))  # type: ignore[arg-type]
    b = synthetic.write_run(results, synthetic.Spec("20260102-000000-evil-b", seed=3,
                                                    shift=1.2, **spec))  # type: ignore[arg-type]
    _poison(a)
    _poison(b)
    return results, a, b


# what EVIL must look like once escaped for HTML (quotes may be escaped either way)
ESCAPED_HTML = ("&lt;script&gt;alert(1)&lt;/script&gt;", "&lt;img src=x onerror=alert(2)&gt;",
                f"$(touch {PWNED})", "[bold red]markup[/]")


def _no_live_markup(html: str) -> None:
    """The raw hostile string is absent, and its escaped form is present (it was shown)."""
    assert "<script>alert" not in html and "<img src=x" not in html
    assert EVIL not in html and "onerror=alert(2)>" not in html
    for piece in ESCAPED_HTML:
        assert piece in html, piece


def test_the_markup_check_can_fail() -> None:
    """The check above rejects a page that carries EVIL raw, and one that dropped it."""
    with pytest.raises(AssertionError):
        _no_live_markup(f"<html><body><p>{EVIL}</p></body></html>")
    with pytest.raises(AssertionError):
        _no_live_markup("<html><body><p>nothing hostile here</p></body></html>")
    from html import escape

    _no_live_markup(f"<p>{escape(EVIL)}</p>")


def test_report_escapes_what_runs_and_hosts_carry(poisoned: tuple[Path, Path, Path],
                                                  tmp_path: Path) -> None:
    results, a, b = poisoned
    for runs, name in (([a.name], "one.html"), ([a.name, b.name], "two.html")):
        out = tmp_path / name
        done = _bench("report", *runs, "-o", str(out), results=results)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        _no_live_markup(out.read_text())
    assert not PWNED.exists()


def test_compare_markdown_and_junit_escape_it(poisoned: tuple[Path, Path, Path]) -> None:
    results, a, b = poisoned
    done = _bench("compare", a.name, b.name, "--format", "markdown", "--all-metrics",
                  results=results)
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "<script>" not in done.stdout and "<img" not in done.stdout
    assert EVIL not in done.stdout
    # the label is there, escaped for markdown-in-HTML, its shell text kept as plain text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in done.stdout
    assert "&lt;img src=x onerror=alert(2)&gt;" in done.stdout
    assert f"$(touch {PWNED})" in done.stdout
    done = _bench("compare", a.name, b.name, "--format", "junit", "--all-metrics",
                  results=results)
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    xml = done.stdout[done.stdout.index("<testsuite"):]
    root = ET.fromstring(xml)  # well-formed: every quote and bracket is escaped
    texts = " ".join(e.get("name", "") + " " + (e.text or "") for e in root.iter())
    assert EVIL in texts  # the whole value survives, as data
    assert "<script>alert" not in xml and "&lt;script&gt;alert(1)&lt;/script&gt;" in xml
    assert not PWNED.exists()


def test_summary_prints_it_as_text(poisoned: tuple[Path, Path, Path]) -> None:
    results, a, _ = poisoned
    done = _bench("summary", a.name, "--all-metrics", results=results)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    text = "".join(done.stdout.split())  # the table wraps long cells
    # rich markup in the data is printed as it is, not interpreted (which would drop it)
    assert "[boldred]markup[/][/]" in text, done.stdout[-3000:]
    assert f"$(touch{PWNED})" in text and "<script>alert(1)</script>" in text
    assert not PWNED.exists()


@pytest.mark.integration
def test_a_real_run_with_a_hostile_description(tmp_path: Path, bench_image: Image) -> None:
    results = tmp_path / "results"
    scenario = tmp_path / "evil.yaml"
    scenario.write_text(yaml.safe_dump({
        "name": "evil", "description": EVIL, "tiers": ["host"], "repetitions": 1, "warmup": 0,
        "workloads": [{"workload": "memory", "params": {"size_mb": 8, "seconds": 0.2}}]}))
    done = _bench("run", str(scenario), results=results, BENCH_WORK_DIR=str(tmp_path / "work"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run,) = [p for p in results.iterdir() if p.is_dir()]
    text = json.loads((run / "manifest.json").read_text())["scenario"]["text"]
    assert yaml.safe_load(text)["description"] == EVIL  # kept as given
    assert "Traceback" not in done.stderr
    out = tmp_path / "report.html"
    done = _bench("report", run.name, "-o", str(out), results=results)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _no_live_markup(out.read_text())
    assert not PWNED.exists()
