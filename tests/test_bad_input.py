"""Property-based: random and malformed scenarios and results never give a traceback, always an
error that names where the problem is; and garbage is never accepted: an input that breaks a
rule stated here (independently of the parser) must be refused."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.core.errors import ScenarioError
from bench.core.samples import read_samples
from bench.run import scenario
from bench.tiers.registry import TIERS
from bench.workloads import WORKLOADS

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


SCENARIO_KEYS = set(scenario.Scenario.model_fields)
LIMIT_KEYS = {"cpus", "cpuset", "memory_mb", "pids", "io_read_bps", "io_write_bps"}
SAMPLE_FIELDS = {"run_id", "cell", "repetition", "metric", "value", "unit", "direction",
                 "timestamp"}


def garbage(data: Any) -> str | None:
    """Why this scenario must be refused, by the rules of the scenario format, or None when no
    rule checked here is broken (the parser may still refuse it for others)."""
    if not isinstance(data, dict):
        return "not a mapping"
    if set(data) - SCENARIO_KEYS:
        return f"unknown keys {set(data) - SCENARIO_KEYS}"
    if not isinstance(data.get("name"), str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}",
                                                                  data["name"]):
        return "name is not a short plain string"
    tiers = data.get("tiers")
    if not isinstance(tiers, list) or not tiers or \
            not all(isinstance(t, str) and t in TIERS for t in tiers):
        return "tiers is not a list of known tiers"
    workloads = data.get("workloads")
    if not isinstance(workloads, list) or not workloads:
        return "workloads is not a non-empty list"
    for entry in workloads:
        if not isinstance(entry, dict) or entry.get("workload") not in WORKLOADS:
            return "an unknown workload"
        fields = set(WORKLOADS[entry["workload"]].params_model.model_fields)
        if not isinstance(entry.get("params", {}), dict) or set(entry.get("params", {})) - fields:
            return "an unknown parameter"
    limits = data.get("limits", {})
    if not isinstance(limits, dict) or set(limits) - LIMIT_KEYS:
        return "unknown limits"
    return None


def check(text: str) -> None:
    try:
        parsed = scenario.parse(text, "fuzz.yaml")
    except ScenarioError as exc:
        message = str(exc)
        assert "fuzz.yaml" in message
        assert exc.fix
        assert "Traceback" not in message
        return
    data = yaml.safe_load(text)
    assert garbage(data) is None, f"accepted garbage ({garbage(data)}): {text!r}"
    assert parsed.tiers == data["tiers"] and len(parsed.workloads) == len(data["workloads"])


def test_the_garbage_rules_can_fail() -> None:
    """check() itself fails when the parser lets a broken scenario through."""
    good = {"name": "ok", "tiers": ["host"], "workloads": [{"workload": "memory"}]}
    assert garbage(good) is None
    for broken in ({**good, "bogus": 1}, {**good, "tiers": ["vmware"]},
                   {**good, "workloads": [{"workload": "nope"}]},
                   {**good, "workloads": [{"workload": "memory", "params": {"x": 1}}]},
                   {**good, "limits": {"x": 1}}, {**good, "name": "$(reboot)"}):
        assert garbage(broken) is not None, broken
    original = scenario.parse
    try:
        scenario.parse = lambda text, source: original(  # type: ignore[assignment]
            yaml.safe_dump(good), source)
        with pytest.raises(AssertionError, match="accepted garbage"):
            check(yaml.safe_dump({**good, "bogus": 1}))
    finally:
        scenario.parse = original  # type: ignore[assignment]


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
            found = list(read_samples(path))
        except ValueError as exc:
            assert str(exc).startswith(str(path))
            return
        # accepted: then every line but a torn last one was blank (random bytes are no sample)
        lines = (blob + b"\n" + blob).decode("utf-8").splitlines()
        assert found == [] and not [line for line in lines[:-1] if line.strip()], blob


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "run_id", "cell", "metric", "value", "unit",
                                        "direction", "repetition", "timestamp"]), VALUES))
def test_random_sample_rows(row: dict) -> None:  # type: ignore[type-arg]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "samples.jsonl"
        path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
        try:
            found = list(read_samples(path))
        except ValueError as exc:
            assert str(exc).startswith(f"{path}:1: ")
            return
        # accepted: a whole sample, twice, with the value it carried
        assert set(row) >= SAMPLE_FIELDS, f"accepted a row without {SAMPLE_FIELDS - set(row)}"
        assert len(found) == 2 and found[0] == found[1]
        value = float(row["value"])
        assert found[0].metric == row["metric"]
        assert found[0].value == value or (math.isnan(value) and math.isnan(found[0].value))
