"""Property-based: random and malformed scenarios and results never give a traceback, always an
error that names where the problem is."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.core.errors import ScenarioError
from bench.core.samples import read_samples
from bench.run import scenario

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=20),
                    st.sampled_from(["host", "disk.fio", "read", "$(reboot)", "<script>",
                                     "'; rm -rf /"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12)
KEYS = st.sampled_from(["name", "tiers", "repetitions", "warmup", "seed", "limits", "workloads",
                        "description", "require_all_tiers", "bogus"])
WORKLOAD_ENTRY = st.fixed_dictionaries(
    {"workload": st.sampled_from(["cpu.sysbench", "disk.fio", "memory", "nope"])},
    optional={"params": st.dictionaries(st.sampled_from(["seconds", "rw", "threads", "size_mb",
                                                         "direct", "x"]), SCALARS, max_size=3),
              "matrix": st.dictionaries(st.sampled_from(["rw", "threads", "test"]),
                                        st.lists(SCALARS, max_size=3), max_size=2),
              "repetitions": SCALARS})
SCENARIOS = st.fixed_dictionaries(
    {"name": st.one_of(st.just("fuzz"), SCALARS), "tiers": st.one_of(st.just(["host"]), VALUES),
     "workloads": st.one_of(st.lists(WORKLOAD_ENTRY, max_size=3), VALUES)},
    optional={"limits": st.one_of(st.dictionaries(st.sampled_from(
        ["cpus", "cpuset", "memory_mb", "pids", "x"]), SCALARS, max_size=3), VALUES),
        "repetitions": SCALARS, "bogus": VALUES})


def check(text: str) -> None:
    try:
        scenario.parse(text, "fuzz.yaml")
    except ScenarioError as exc:
        message = str(exc)
        assert "fuzz.yaml" in message
        assert exc.fix
        assert "Traceback" not in message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SCENARIOS)
def test_structured_random_scenarios(data: dict) -> None:  # type: ignore[type-arg]
    check(yaml.safe_dump(data))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(KEYS, VALUES, max_size=6))
def test_random_mappings(data: dict) -> None:  # type: ignore[type-arg]
    check(yaml.safe_dump(data))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_text(text: str) -> None:
    check(text)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_in_results_file(blob: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "samples.jsonl"
        path.write_bytes(blob + b"\n" + blob)
        try:
            list(read_samples(path))
        except ValueError as exc:
            assert str(exc).startswith(str(path))


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "run_id", "cell", "metric", "value", "unit",
                                        "direction", "repetition", "timestamp"]), VALUES))
def test_random_sample_rows(row: dict) -> None:  # type: ignore[type-arg]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "samples.jsonl"
        path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
        try:
            list(read_samples(path))
        except ValueError as exc:
            assert str(exc).startswith(f"{path}:1: ")
