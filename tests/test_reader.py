"""The one reader of samples for analysis: the bulk (pyarrow) path gives exactly the frame the
validated row-by-row path gives, and hands over to it for whatever it cannot vouch for."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bench.analysis import columnar, frame
from bench.core.errors import BenchError
from bench.core.samples import Cell, Sample, append_jsonl
from tests import synthetic

DATA = Path(__file__).parent / "data"


def same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns)
    for column in a.columns:
        assert a[column].dtype == b[column].dtype, column
        assert a[column].astype(str).tolist() == b[column].astype(str).tolist(), column


def bulk(path: Path) -> pd.DataFrame:
    found = columnar.read(columnar.without_torn_tail(path.read_bytes()))
    assert found is not None, "the bulk path refused a well-formed file"
    return found


@pytest.mark.parametrize("spec", [
    synthetic.Spec("hostile", hostile=True, repetitions=3),
    synthetic.Spec("four", tiers=("host", "ns", "docker", "kvm"), extra_cells=3, repetitions=2),
])
def test_bulk_path_equals_validated_rows(tmp_path: Path, spec: synthetic.Spec) -> None:
    path = synthetic.write_run(tmp_path, spec) / "samples.jsonl"
    fast = bulk(path)
    same(fast, frame._validated(path))
    assert fast["meta.phases_ms"].notna().sum() > 0
    assert {"param.threads", "param.rw", "param.instances"} <= set(fast.columns)


def test_real_captured_run_reads_in_bulk() -> None:
    path = DATA / "samples-v1.jsonl"
    same(bulk(path), frame._validated(path))
    assert bulk(path)["meta.page_cache"].notna().any()


def sample(rep: int, **params: object) -> Sample:
    return Sample(run_id="r", cell=Cell(tier="host", workload="memory", params=params),
                  repetition=rep, metric="m", value=1.0 + rep, unit="ns", direction="lower",
                  timestamp=1.0)


def test_torn_tail_skipped_and_corruption_named(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    for rep in range(3):
        append_jsonl(path, sample(rep))
    with open(path, "a") as fh:
        fh.write('{"cell": {"cache": "no')  # a crash mid-write
    assert frame.read_frame(path)["repetition"].tolist() == [0, 1, 2]
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "garbage", *lines[1:3]]) + "\n")
    with pytest.raises(BenchError, match=r"samples.jsonl:2: not valid JSON"):
        frame.read_frame(path)


@pytest.mark.parametrize("change, message", [
    ({"direction": "sideways"}, r":1: not a valid sample: direction"),
    ({"value": "fast"}, r":1: not a valid sample: value"),
    ({"v": 99}, r"v99 is newer than this bench"),
])
def test_bad_values_fall_back_to_rows_that_name_the_line(tmp_path: Path, change: dict[str, object],
                                                         message: str) -> None:
    path = tmp_path / "samples.jsonl"
    row = sample(0).model_dump(mode="json") | change
    path.write_text(json.dumps(row, sort_keys=True) + "\n")
    assert columnar.read(path.read_bytes()) is None
    with pytest.raises(BenchError, match=message):
        frame.read_frame(path)


def test_only_the_samples_own_phases_are_read_not_a_parameter_of_that_name(
        tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    append_jsonl(path, sample(0, phases_ms={"create": 1.0}))
    timed = sample(1).model_copy(update={"metadata": {"phases_ms": {"create": 2.0}}})
    append_jsonl(path, timed)
    found = bulk(path)
    same(found, frame._validated(path))
    assert found["meta.phases_ms"].tolist() == [None, {"create": 2.0}]


def test_a_params_key_that_looks_like_the_marker_is_read_right(tmp_path: Path) -> None:
    """A parameter named `direction` cuts the cell's text early: the bulk path must notice."""
    path = tmp_path / "samples.jsonl"
    append_jsonl(path, sample(0, direction="up", note=', "direction": "x'))
    append_jsonl(path, sample(1, direction="up", note=', "direction": "x'))
    found = frame.read_frame(path)
    assert found["param.direction"].tolist() == ["up", "up"]
    assert found["param.note"].tolist() == [', "direction": "x'] * 2
    assert found["cell"].nunique() == 1


def test_the_parquet_copy_reads_back_the_same_frame_and_goes_stale(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.analysis import parquet_copy

    monkeypatch.setattr(parquet_copy, "WORTH", 10)
    path = synthetic.write_run(tmp_path, synthetic.Spec("copy", hostile=True, repetitions=3))
    jsonl = path / "samples.jsonl"
    first = frame._read(jsonl)  # parsed, and the copy written
    assert (path / "samples.parquet").exists()
    again = parquet_copy.read(jsonl)
    assert again is not None
    same(first, again)
    append_jsonl(jsonl, sample(99))  # the run goes on: the copy no longer describes the file
    assert parquet_copy.read(jsonl) is None
    grown = frame._read(jsonl)
    assert len(grown) == len(first) + 1 and grown["repetition"].iloc[-1] == 99
    assert parquet_copy.read(jsonl) is not None  # written again for the new state
