"""The command line as a newcomer meets it: fast help, lazy commands, a tier filter, settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.cli.info import settings_table
from bench.cli.main import COMMANDS, load, main

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("pandas", "scipy", "plotly", "sqlalchemy", "docker", "libvirt", "numpy", "pyperf")


def test_help_imports_nothing_heavy() -> None:
    probe = ("import sys\nfrom bench.cli.main import main\n"
             "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             f"print('heavy=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    assert "Commands:" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "heavy=", done.stdout


def test_list_imports_no_tier_workload_or_model_module() -> None:
    probe = ("import sys\nfrom bench.cli.main import main\n"
             "try:\n    main(['list'])\nexcept SystemExit:\n    pass\n"
             "print('loaded=' + ','.join(m for m in sys.modules if m.split('.')[0] in "
             f"{HEAVY!r} + ('pydantic', 'pydantic_settings') or m.startswith("
             "('bench.tiers', 'bench.workloads', 'bench.run'))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"})
    assert "quick" in done.stdout and "isolation.forkbomb" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "loaded=", done.stdout


def test_list_rows_are_what_the_tier_and_workload_classes_say() -> None:
    from bench.cli import listing, listing_data

    tiers, workloads = listing.from_classes()
    assert (tiers, workloads) == (listing_data.TIERS, listing_data.WORKLOADS), (
        "bench/cli/listing_data.py is stale: run `python -m bench.cli.listing`")


def test_list_marks_a_broken_scenario_and_check_validates_fully(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken.yaml").write_text("description: [unclosed\n")
    (tmp_path / "stranger.yaml").write_text("description: a stranger workload\n"
                                            "workloads: [{workload: no.such}]\n")
    (tmp_path / "[b]marked.yaml").write_text("description: 'shown as written: [/b] [red]'\n")
    monkeypatch.setenv("BENCH_SCENARIO_DIR", str(tmp_path))
    runner = CliRunner()
    quick = runner.invoke(main, ["list"], env={"COLUMNS": "200"})
    assert quick.exit_code == 0, quick.output
    broken = next(line for line in quick.output.splitlines() if "broken" in line)
    assert "invalid" in broken
    assert "a stranger workload" in quick.output  # only --check validates the fields
    assert "[b]marked" in quick.output and "shown as written: [/b] [red]" in quick.output
    checked = runner.invoke(main, ["list", "--check"], env={"COLUMNS": "200"})
    stranger = next(line for line in checked.output.splitlines() if "stranger" in line)
    assert "invalid" in stranger and "invalid" in next(
        line for line in checked.output.splitlines() if "broken" in line)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_lazy_command_loads_and_its_help_line_is_its_own(name: str) -> None:
    command = load(name)
    assert command.get_short_help_str(limit=60) == COMMANDS[name][1]


def test_run_tier_filter_plans_only_that_tier_and_refuses_a_stranger() -> None:
    runner = CliRunner()
    done = runner.invoke(main, ["run", "quick", "--dry-run", "--tier", "host"])
    assert done.exit_code == 0, done.output
    rows = [line for line in done.output.splitlines() if line.startswith("│")]
    assert rows and all(line.split("│")[1].strip() in ("host", "") for line in rows)
    done = runner.invoke(main, ["run", "quick", "--dry-run", "--tier", "vmware"])
    assert done.exit_code == 2
    assert "vmware" in done.output and "not in scenario" in done.output


def test_config_names_each_setting_and_its_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_KVM_BOOT_TIMEOUT", "33")
    monkeypatch.delenv("BENCH_WORK_DIR", raising=False)
    done = CliRunner().invoke(main, ["config"], terminal_width=200)
    assert done.exit_code == 0, done.output
    line = next(x for x in done.output.splitlines() if "BENCH_KVM_BOOT_TIMEOUT" in x)
    assert "33" in line and "environment" in line
    line = next(x for x in done.output.splitlines() if "BENCH_WORK_DIR" in x)
    assert "default" in line


def test_a_bad_setting_is_a_one_paragraph_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_KVM_ACCEL", "vmx")
    done = CliRunner().invoke(main, ["config"])
    assert done.exit_code == 2
    assert "BENCH_KVM_ACCEL is invalid" in done.output and "fix:" in done.output


def test_readme_settings_table_is_the_generated_one() -> None:
    assert settings_table() in (REPO / "README.md").read_text()


def test_shipped_scenarios_are_found_from_any_directory(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--dry-run", "quick",
                           "--tier", "host"], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cells" in done.stdout
