"""The required-parts switch: a test that would skip for a missing part fails when the part is
required, and a full run counts the tests that really ran per part.

BENCH_REQUIRE=host,ns,docker,kvm,chromium,postgres (CI sets it in .ci/run) names the parts whose
absence is a failure. A test belongs to a part by `@pytest.mark.part("docker")` (module-wide
through `pytestmark`), by a `tier` parameter, or by a fixture its module names in PART_FIXTURES
(e.g. {"engine_up": "docker"}: every test on the live engine). At the end of a run the summary
lists how many tests ran per part; on a full run (no paths, -k or -m given) a required part
below its floor fails the session, so a green CI cannot hide a tier that never ran.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

# the least number of tests that must really run (pass or fail, not skip) for a required part
# on a full run; well below today's counts (see the summary), so only a lost part trips them
FLOORS = {"root": 60, "cgroup": 1, "host": 15, "ns": 20, "docker": 20, "kvm": 8,
          "chromium": 2, "postgres": 1, "registry": 8}
PARTS = tuple(FLOORS)
_ran: Counter[str] = Counter()
_skipped: Counter[str] = Counter()  # by the part whose absence skipped the test (need())
_xfailed: Counter[str] = Counter()  # quarantined tests that failed, by the test's parts
_parts: dict[str, tuple[str, ...]] = {}  # node id -> its parts


def required_parts() -> set[str]:
    """Parts whose absence fails a test instead of skipping it (BENCH_REQUIRE=host,ns,...).

    CI sets it to everything it installs, so a green run cannot hide a part that never ran."""
    return {p.strip() for p in os.environ.get("BENCH_REQUIRE", "").split(",") if p.strip()}


def need(part: str, available: bool, reason: str = "") -> None:
    """Skip the calling test when `part` is missing, or fail it when the part is required."""
    if available:
        return
    message = f"{part} is not available here" + (f": {reason}" if reason else "")
    if part in required_parts():
        pytest.fail(f"required part missing (BENCH_REQUIRE): {message}", pytrace=False)
    pytest.skip(message)


def parts_of(item: pytest.Item) -> set[str]:
    found = {str(arg) for mark in item.iter_markers("part") for arg in mark.args}
    by_fixture = getattr(getattr(item, "module", None), "PART_FIXTURES", {})
    found |= {part for name, part in by_fixture.items()
              if name in getattr(item, "fixturenames", ())}
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.params.get("tier") in PARTS:
        found.add(callspec.params["tier"])
    if item.get_closest_marker("integration") is not None:
        found.add("root")
    return found


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "part(*names): the test exercises these parts "
                            "(host, ns, docker, kvm, chromium, postgres, ...); counted per part")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("integration") is not None:
        need("root", os.geteuid() == 0, "integration tests run as root")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _parts.update((item.nodeid, tuple(sorted(parts_of(item)))) for item in items)


def skip_cause(report: pytest.TestReport) -> str:
    """The part whose absence skipped the test (need()'s message names it), else "other"."""
    longrepr = report.longrepr
    message = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr)
    part, found, _ = message.removeprefix("Skipped: ").partition(" is not available here")
    return part if found else "other"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    parts = _parts.get(report.nodeid, ())
    if hasattr(report, "wasxfail"):
        if report.skipped:  # an xfail that failed; one that passed counts as ran
            _xfailed.update(parts)
        elif report.when == "call":
            _ran.update(parts)
    elif report.skipped:
        _skipped[skip_cause(report)] += 1
    elif report.when == "call":
        _ran.update(parts)


def _full_run(config: pytest.Config) -> bool:
    if os.environ.get("BENCH_FLOORS") == "1":
        return True
    return (config.args_source == pytest.Config.ArgsSource.TESTPATHS
            and not config.option.keyword and not config.option.markexpr)


def short_parts(config: pytest.Config) -> dict[str, tuple[int, int]]:
    """Required parts that ran fewer tests than their floor on a full run: part -> (ran, floor)."""
    if not _full_run(config):
        return {}
    return {p: (_ran[p], FLOORS.get(p, 1)) for p in sorted(required_parts())
            if _ran[p] < FLOORS.get(p, 1)}


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if short_parts(session.config) and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    required = required_parts()
    names = sorted(set(_ran) | set(_skipped) | set(_xfailed) | required)
    if not names:
        return
    terminalreporter.section("tests per part")
    terminalreporter.line("(skipped: tests skipped because this part is missing; a required "
                          "part fails them instead)")
    for name in names:
        flag = " (required)" if name in required else ""
        xfailed = f" xfailed {_xfailed[name]}" if _xfailed[name] else ""
        terminalreporter.line(f"{name:14} ran {_ran[name]:4} skipped {_skipped[name]:4} "
                              f"floor {FLOORS.get(name, 1):3}{xfailed}{flag}")
    for name, (ran, floor) in short_parts(config).items():
        terminalreporter.line(f"FAILED: required part {name} ran {ran} tests, below its floor "
                              f"{floor}", red=True)
