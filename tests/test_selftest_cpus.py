"""How selftest judges a CPU quota from paired shares (a limited and an unlimited busy thread
at the same moment): on a quiet host, within 5%; on a loaded one, that the quota holds; skipped,
with the shares measured, only when the quota cannot bind; a measurement that breaks is a
failed check of its own. The shares are given, not measured (tests/test_selftest.py and
test_tier_kvm.py measure real ones)."""

from __future__ import annotations

import itertools

import pytest

from bench.cli.selftest_checks import Probe, measure_cpus

QUOTA = 0.25


def probe(limited: list[float], free: list[float]) -> Probe:
    shares = {"limited": itertools.cycle(limited), "free": itertools.cycle(free)}
    return Probe("ns", lambda argv: f"{next(shares['limited'])}\n",
                 lambda argv: f"{next(shares['free'])}\n", "/scratch", "cpus=0.25 (overlay)")


def test_a_quiet_host_checks_the_quota_within_tolerance() -> None:
    check = measure_cpus(probe([0.251, 0.248, 0.25], [0.97, 0.95, 0.99]), QUOTA)
    assert check.passed and not check.skipped and check.measured == pytest.approx(0.25)
    assert "loaded" not in check.detail


def test_a_loaded_host_checks_that_the_quota_holds() -> None:
    # the unlimited thread gets 0.45-0.6 CPU: more than the quota, so the quota binds
    held = measure_cpus(probe([0.2, 0.21, 0.19], [0.45, 0.6, 0.5]), QUOTA)
    assert held.passed and not held.skipped
    assert held.measured == pytest.approx(0.2) and "on a loaded host" in held.detail
    assert "0.45-0.60" in held.detail  # the shares measured are stated
    # a quota that is not enforced: the limited thread gets what the unlimited one gets
    broken = measure_cpus(probe([0.45, 0.6, 0.5], [0.45, 0.6, 0.5]), QUOTA)
    assert not broken.passed and not broken.skipped and broken.measured == pytest.approx(0.5)
    starved = measure_cpus(probe([0.1], [0.5]), QUOTA)
    assert not starved.passed and not starved.skipped


def test_the_check_is_skipped_only_when_the_quota_cannot_bind() -> None:
    check = measure_cpus(probe([0.2, 0.22], [0.24, 0.26]), QUOTA)
    assert check.skipped and not check.passed
    assert "got 0.24-0.26 CPU in 6 pairs, no more than the quota" in check.skipped, check.skipped
    assert "limited thread got 0.21" in check.skipped


def test_a_measurement_that_breaks_is_a_failed_check_and_the_others_are_kept() -> None:
    from bench.cli.selftest_checks import measure_all
    from bench.core.errors import BenchError

    calls = iter(range(1000))

    def run(argv: list[str]) -> str:
        if argv[0] == "fio" and next(calls) == 0:  # the first fio run breaks
            raise BenchError("fio was killed by a timeout after 120 s.", "see raw/")
        assert argv[0] == "fio", argv  # CPU shares come from share/free_share here
        return '{"jobs": []}'  # a later one reports nothing: also not a number

    checks = measure_all(lambda limits, values, mode: Probe(
        "ns", run, lambda argv: "0.95\n", "/scratch", "x",
        share=lambda: 0.25, free_share=lambda: 0.95), "ns", False, lambda _: None)
    assert [c.limit for c in checks] == ["cpus", "io_read_bps", "io_write_bps", "io_read_bps"]
    cpus, *io = checks
    assert cpus.passed and cpus.measured == pytest.approx(0.25)
    assert "fio was killed by a timeout" in io[0].detail and not io[0].passed
    assert all(not c.passed and not c.skipped for c in io)


def test_the_io_cases_overlap_the_quota_and_the_network_waits_for_it() -> None:
    """With `beside` (instances that start without a boot), the throttled I/O cases run next to
    the CPU quota case, and the network checks start only once the quota is measured (a shaped
    path's packets would take CPU from the busy threads)."""
    import threading
    import time

    from bench.cli.selftest_checks import Check, measure_all
    from bench.core.errors import BenchError

    spans: dict[str, list[tuple[float, float]]] = {}
    lock = threading.Lock()

    def mark(name: str, seconds: float) -> None:
        began = time.monotonic()
        time.sleep(seconds)
        with lock:
            spans.setdefault(name, []).append((began, time.monotonic()))

    def share() -> float:
        mark("cpu", 0.05)
        return QUOTA

    def fio(argv: list[str]) -> str:
        mark("io", 0.2)
        raise BenchError("fio stopped here.", "nothing")  # the timing is what is checked

    def network() -> list[Check]:
        mark("network", 0.01)
        return []

    checks = measure_all(lambda limits, values, mode: Probe(
        "ns", fio, lambda argv: "", "/scratch", "x", share=share, free_share=lambda: 0.95),
        "ns", False, lambda _: None, beside=network)
    assert [c.limit for c in checks] == ["cpus", "io_read_bps", "io_write_bps", "io_read_bps"]
    quota_done = max(end for _, end in spans["cpu"])
    assert min(start for start, _ in spans["io"]) < quota_done  # side by side
    assert min(start for start, _ in spans["network"]) >= quota_done
