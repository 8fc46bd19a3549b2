"""Scenario validation: every error names the file, the field path and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.core.errors import ScenarioError
from bench.run import plan, scenario

GOOD = """
name: t
tiers: [host]
repetitions: 2
warmup: 1
workloads:
  - workload: cpu.sysbench
    params: {seconds: 1}
    matrix: {threads: [1, 0]}
  - workload: disk.fio
    matrix: {rw: [read, randwrite], direct: [true, false]}
"""


def error_of(text: str, source: str = "s.yaml") -> str:
    with pytest.raises(ScenarioError) as info:
        scenario.parse(text, source)
    return str(info.value)


def test_good_scenario_expands_matrix() -> None:
    parsed = scenario.parse(GOOD, "good.yaml")
    cells = plan.cells_of(parsed, parsed.tiers)
    assert len(cells) == 2 + 4
    assert {c.params["threads"] for c in cells if c.cell.workload == "cpu.sysbench"} == {0, 1}


def test_unknown_key_names_path_and_allowed_keys() -> None:
    message = error_of(GOOD.replace("repetitions: 2", "repetitons: 2"), "typo.yaml")
    assert "typo.yaml" in message
    assert "repetitons: unknown key" in message
    assert "allowed keys:" in message and "repetitions" in message


def test_unknown_key_in_nested_limits() -> None:
    message = error_of(GOOD + "limits: {cpu: 2}\n")
    assert "limits.cpu: unknown key" in message
    assert "cpus" in message


def test_wrong_type_names_field_and_value() -> None:
    message = error_of(GOOD.replace("repetitions: 2", "repetitions: many"))
    assert "repetitions:" in message and "'many'" in message


def test_unknown_workload_lists_the_known_ones() -> None:
    message = error_of(GOOD.replace("workload: disk.fio", "workload: disk.fiio"))
    assert "workloads[1].workload" in message
    assert "disk.fiio" in message and "disk.fio" in message and "cpu.sysbench" in message


def test_unknown_tier() -> None:
    message = error_of(GOOD.replace("tiers: [host]", "tiers: [host, vmware]"))
    assert "tiers" in message and "vmware" in message and "host" in message


def test_param_out_of_range() -> None:
    message = error_of(GOOD.replace("params: {seconds: 1}", "params: {seconds: -3}"))
    assert "workloads[0].params.seconds" in message and "greater than or equal to 1" in message


def test_unknown_param_lists_the_workload_parameters() -> None:
    message = error_of(GOOD.replace("params: {seconds: 1}", "params: {secs: 1}"))
    assert "workloads[0].params.secs: unknown key" in message
    assert "seconds" in message and "max_prime" in message


def test_bad_matrix_value_is_pinpointed() -> None:
    message = error_of(GOOD.replace("rw: [read, randwrite]", "rw: [read, sideways]"))
    assert "workloads[1].matrix.rw[1]" in message
    assert "'sideways'" in message and "'randwrite'" in message


def test_bad_first_matrix_value_is_pinpointed() -> None:
    message = error_of(GOOD.replace("threads: [1, 0]", "threads: [-1, 0]"))
    assert "workloads[0].matrix.threads[0]" in message


def test_out_of_range_limit() -> None:
    message = error_of(GOOD + "limits: {memory_mb: 1}\n")
    assert "limits.memory_mb" in message and "16" in message


def test_not_yaml_and_not_a_mapping() -> None:
    assert "not valid YAML" in error_of("name: [unclosed")
    assert "mapping" in error_of("- just\n- a list\n")


def test_missing_required_fields() -> None:
    message = error_of("name: x\n")
    assert "tiers: Field required" in message and "workloads: Field required" in message


def test_error_has_a_fix() -> None:
    with pytest.raises(ScenarioError) as info:
        scenario.parse(GOOD.replace("repetitions: 2", "repetitions: 0"), "s.yaml")
    assert info.value.fix


def test_shipped_scenarios_are_valid() -> None:
    shipped = sorted(scenario.scenario_dir().glob("*.yaml"))
    assert {p.stem for p in shipped} >= {"quick", "full"}
    for path in shipped:
        scenario.parse(path.read_text(), str(path))


def test_resolve_by_name_and_unknown_name(tmp_path: Path) -> None:
    assert scenario.resolve_path("quick").name == "quick.yaml"
    with pytest.raises(ScenarioError, match="quick"):
        scenario.resolve_path("no-such-scenario")


def test_plan_is_interleaved_seeded_and_warmups_first() -> None:
    parsed = scenario.parse(GOOD, "good.yaml")
    first = plan.expand(parsed, ["host"])
    again = plan.expand(parsed, ["host"])
    assert [r.key for r in first.runs] == [r.key for r in again.runs]
    n_cells = len(first.cells)
    assert len(first.runs) == n_cells * (parsed.warmup + parsed.repetitions)
    assert all(r.warmup for r in first.runs[:n_cells])
    assert not any(r.warmup for r in first.runs[n_cells:])
    rounds = [first.runs[i:i + n_cells] for i in range(0, len(first.runs), n_cells)]
    orders = [[r.cell.cell.key for r in rnd] for rnd in rounds]
    assert len({tuple(o) for o in orders}) > 1, "rounds should be shuffled differently"
    other = plan.expand(parsed.model_copy(update={"seed": 99}), ["host"])
    assert [r.key for r in other.runs] != [r.key for r in first.runs]
