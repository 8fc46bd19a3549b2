"""The sample format: round trip, torn last line after a crash, versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.core.samples import Cell, Sample, append_jsonl, read_samples


def sample(rep: int = 0, value: float = 1.0) -> Sample:
    return Sample(run_id="r", cell=Cell(tier="host", workload="memory", params={"test": "latency"}),
                  repetition=rep, metric="load_latency_ns", value=value, unit="ns",
                  direction="lower", timestamp=1.0)


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    for rep in range(3):
        append_jsonl(path, sample(rep, rep + 0.5))
    back = list(read_samples(path))
    assert [s.value for s in back] == [0.5, 1.5, 2.5]
    assert back[0].cell.key == sample().cell.key


def test_cell_key_ignores_dict_order() -> None:
    a = Cell(tier="host", workload="disk.fio", params={"rw": "read", "direct": True})
    b = Cell(tier="host", workload="disk.fio", params={"direct": True, "rw": "read"})
    c = Cell(tier="ns", workload="disk.fio", params={"direct": True, "rw": "read"})
    assert a.key == b.key != c.key
    assert a.label == "disk.fio [direct=True, rw=read]"


def test_torn_last_line_is_cut_but_corruption_inside_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    append_jsonl(path, sample(0))
    with open(path, "a") as fh:
        fh.write('{"v": 1, "run_id": "r", "cel')  # a crash mid-write
    assert len(list(read_samples(path))) == 1
    append_jsonl(path, sample(1))  # the next append cuts the torn line
    assert [s.repetition for s in read_samples(path)] == [0, 1]
    with open(path, "a") as fh:
        fh.write("garbage\n")  # real corruption inside the file is an error
    append_jsonl(path, sample(2))
    with pytest.raises(ValueError, match=":3: not valid JSON"):
        list(read_samples(path))


def test_a_newer_format_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    data = sample().model_dump(mode="json") | {"v": 99}
    path.write_text(json.dumps(data) + "\n")
    with pytest.raises(ValueError, match="upgrade bench"):
        list(read_samples(path))


def test_tidy_row_has_one_column_per_param() -> None:
    row = sample().tidy()
    assert row["param.test"] == "latency" and row["tier"] == "host" and row["value"] == 1.0


def test_format_v1_files_still_load() -> None:
    """Kept from a real v1 run: every later format must still read it."""
    samples = list(read_samples(Path(__file__).parent / "data" / "samples-v1.jsonl"))
    assert len(samples) == 3
    assert all(s.v == 1 and s.run_id and s.cell.tier == "host" for s in samples)


def test_run_journal_skips_only_a_torn_last_line(tmp_path: Path) -> None:
    from bench.core.errors import BenchError
    from bench.core.rundir import RunDir

    rundir = RunDir(tmp_path)
    good = [json.dumps({"key": f"c#{i}", "cell": "c", "repetition": i, "status": "ok",
                        "seconds": 1.0}) for i in range(3)]
    rundir.journal_path.write_text("\n".join(good) + '\n{"key": "c#3", "ce')
    assert [r.repetition for r in rundir.records()] == [0, 1, 2]
    rundir.journal_path.write_text("\n".join([good[0], "{garbage", *good[1:]]) + "\n")
    with pytest.raises(BenchError, match=r"runs.jsonl:2 is not a run record"):
        rundir.records()


def test_the_baseline_tier_is_the_one_tier_that_says_so() -> None:
    from bench.core.samples import BASELINE_TIER
    from bench.tiers.registry import TIERS

    assert [name for name, tier in TIERS.items() if tier.is_baseline] == [BASELINE_TIER]


def test_manifest_carries_its_format_and_a_newer_one_is_refused(tmp_path: Path) -> None:
    import json

    from bench.core.errors import BenchError
    from bench.core.rundir import MANIFEST_VERSION, RunDir

    rundir = RunDir(tmp_path)
    rundir.write_manifest({"run_id": "x"})
    assert json.loads(rundir.manifest_path.read_text())["format_version"] == MANIFEST_VERSION
    rundir.manifest_path.write_text(json.dumps({"format_version": MANIFEST_VERSION + 1}))
    with pytest.raises(BenchError, match="manifest format"):
        rundir.manifest()
