"""The required-parts switch itself: a missing part skips a test, or fails it when the part is in
BENCH_REQUIRE; a full run below a required part's floor fails; `bench doctor --require` exits
non-zero when a named part is not ready."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.parts import FLOORS

REPO = Path(__file__).resolve().parent.parent

MODULE = '''
import pytest
from tests.parts import need

@pytest.mark.part("docker")
def test_needs_docker():
    need("docker", False, "no engine in this test")

@pytest.mark.part("host")
def test_on_the_host():
    need("host", True)

@pytest.mark.parametrize("tier", ["ns"])
def test_a_tier_parameter_is_its_part(tier):
    pass

@pytest.mark.part("host")
def test_on_the_host_without_a_kernel_feature():
    need("cgroup-v2", False, "v1 here")

@pytest.mark.part("host")
@pytest.mark.xfail(strict=False, reason="quarantined")
def test_quarantined_on_the_host():
    assert False
'''


def pytest_in(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_switch.py").write_text(MODULE)
    environ = {k: v for k, v in os.environ.items() if k not in ("BENCH_REQUIRE", "BENCH_FLOORS")}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.parts", "-p",
                           "no:cacheprovider", "--rootdir", str(tmp_path), "-rA", *args,
                           str(tmp_path / "test_switch.py")],
                          env={**environ, "PYTHONPATH": str(REPO), **env}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def test_a_missing_part_skips_unless_it_is_required(tmp_path: Path) -> None:
    relaxed = pytest_in(tmp_path)
    assert relaxed.returncode == 0, relaxed.stdout
    assert "SKIPPED" in relaxed.stdout and "docker is not available here: no engine" in \
        relaxed.stdout
    assert "2 passed, 2 skipped, 1 xfailed" in relaxed.stdout
    strict = pytest_in(tmp_path, BENCH_REQUIRE="host,docker")
    assert strict.returncode == 1, strict.stdout
    assert "FAILED" in strict.stdout and \
        "required part missing (BENCH_REQUIRE): docker is not available here" in strict.stdout
    assert "1 failed, 2 passed, 1 skipped, 1 xfailed" in strict.stdout


def test_the_summary_counts_per_part_and_a_floor_fails_the_run(tmp_path: Path) -> None:
    done = pytest_in(tmp_path, BENCH_REQUIRE="host,ns", BENCH_FLOORS="1")
    assert "tests per part" in done.stdout
    lines = {line.split()[0]: line for line in done.stdout.splitlines()
             if line.startswith(("host ", "ns ", "docker ", "cgroup-v2 "))}
    # a skip counts for the part that was missing (cgroup-v2), not for the test's parts; a
    # quarantined test is shown as xfailed, not as run
    assert lines["host"].split() == ["host", "ran", "1", "skipped", "0", "floor",
                                     str(FLOORS["host"]), "xfailed", "1", "(required)"], lines
    assert lines["cgroup-v2"].split()[:5] == ["cgroup-v2", "ran", "0", "skipped", "1"], lines
    assert lines["ns"].split()[:5] == ["ns", "ran", "1", "skipped", "0"], lines
    assert lines["docker"].split()[:5] == ["docker", "ran", "0", "skipped", "1"], lines
    # one test per part is below the real floors: the run fails, though no test did
    assert done.returncode == 1, done.stdout
    assert f"FAILED: required part host ran 1 tests, below its floor {FLOORS['host']}" in \
        done.stdout
    # a partial run (a file named on the command line) is not held to the floors
    partial = pytest_in(tmp_path, BENCH_REQUIRE="host,ns")
    assert partial.returncode == 0, partial.stdout
    assert "below its floor" not in partial.stdout


@pytest.mark.integration
def test_doctor_require_exits_nonzero_for_a_missing_part(tmp_path: Path) -> None:
    env = {**os.environ, "BENCH_DOCKER_URL": f"unix://{tmp_path}/absent.sock", "COLUMNS": "200"}

    def doctor(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bench.cli", "doctor", *args], env=env,
                              capture_output=True, text=True, timeout=300, cwd=REPO)

    missing = doctor("--require", "host,docker")
    assert missing.returncode == 1, missing.stdout + missing.stderr
    said = " ".join(missing.stdout.split())
    assert "required but not ready: tier docker: No Docker socket at" in said
    unknown = doctor("--require", "host,vmware")
    assert unknown.returncode == 2 and "unknown parts: vmware" in unknown.stdout
    # a part that is there passes (the host tier needs only root and the image)
    ready = doctor("--require", "root,host")
    assert ready.returncode == 0, ready.stdout + ready.stderr
