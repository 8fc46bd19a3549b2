"""Run directories as tidy pandas frames: the one reader of samples for analysis.

One row per sample, the columns of `Sample.tidy()` plus `params`/`tunables` as canonical JSON
(to group by) and the few metadata fields the analysis reads (`meta.*`).

Reading is columnar (pyarrow's multi-threaded JSON reader, a million samples in about a second
of CPU) with the checks done in bulk: every required field present with its type, the
direction one of its two values, the format version the current one, each distinct cell
validated once as a `Cell`. A torn last line (a crash mid-write) is skipped. Anything the bulk
path cannot vouch for (an older format version to upgrade, an unexpected layout, a bad value
anywhere) is read again row by row through `bench.core.samples.read_samples`, which validates
every row and names the offending line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.analysis import columnar, parquet_copy
from bench.analysis.columnar import (
    META_COLUMNS,
    assemble,
    canonical,
    describe,
    empty_frame,
)
from bench.core.errors import BenchError
from bench.core.rundir import RunDir, RunRecord
from bench.core.samples import read_samples


@dataclass
class Run:
    """One run directory, loaded."""

    run_id: str
    path: Path
    manifest: dict[str, Any]
    frame: pd.DataFrame
    failures: list[RunRecord]  # the journal's runs that did not end "ok"

    @property
    def host(self) -> str:
        return str(self.manifest.get("host", {}).get("hostname", "?"))

    @property
    def started(self) -> float:
        return float(self.manifest.get("started_at") or 0.0)


_LAST: dict[tuple[str, int, int], pd.DataFrame] = {}


def read_frame(path: Path) -> pd.DataFrame:
    """samples.jsonl -> a tidy frame (see the module's docstring). The last file read is kept
    while it is unchanged (a report and its tuning section read the same run); callers get
    a copy-on-write copy, so none sees another's changes."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return empty_frame()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _LAST:
        _LAST.clear()
        _LAST[key] = _read(path)
    return _LAST[key].copy(deep=False)


def _read(path: Path) -> pd.DataFrame:
    found = parquet_copy.read(path)
    if found is not None:
        return found
    data = columnar.without_torn_tail(path.read_bytes())
    if not data or data.isspace():  # (strip() would copy every byte)
        return empty_frame()
    found = columnar.read(data)
    if found is None:  # not vouched for in bulk: validate row by row
        found = _validated(path)
    if found.empty:
        return empty_frame()
    if len(found) >= parquet_copy.WORTH:
        parquet_copy.write(path, found)
    return found


def _validated(path: Path) -> pd.DataFrame:
    """The row-by-row path: every row validated (and upgraded) as a `Sample`."""
    try:
        samples = list(read_samples(path))
    except ValueError as exc:
        raise BenchError(f"{exc}.", "repair or remove that line; only a torn last line is "
                         "skipped.") from None
    index: dict[str, int] = {}
    cells: list[tuple[Any, ...]] = []
    codes: list[int] = []
    for sample in samples:
        blob = canonical(sample.cell.model_dump())
        if blob not in index:
            index[blob] = len(cells)
            cells.append(describe(sample.cell))
        codes.append(index[blob])
    columns = {
        "run_id": [s.run_id for s in samples], "repetition": [s.repetition for s in samples],
        "metric": [s.metric for s in samples], "value": [s.value for s in samples],
        "unit": [s.unit for s in samples], "direction": [s.direction for s in samples],
        "timestamp": [s.timestamp for s in samples]}
    meta = {name: [s.metadata.get(name) for s in samples] for name in META_COLUMNS}
    return assemble(columns, meta, cells, np.asarray(codes, dtype=np.int64))


def load(run: str | Path) -> Run:
    """A run by id (under the results directory) or by path."""
    rundir = RunDir.open(str(run))
    try:
        manifest = rundir.manifest()
    except (OSError, ValueError) as exc:
        raise BenchError(f"Cannot read {rundir.manifest_path}: {exc}.",
                         "check the run directory; manifest.json must be valid JSON.") from None
    frame = read_frame(rundir.samples_path)
    return Run(rundir.run_id, rundir.path, manifest, frame, read_failures(rundir.journal_path))


def read_failures(path: Path) -> list[RunRecord]:
    """The journal's failed and timed-out runs (ok lines are only skimmed)."""
    if not path.exists():
        return []
    found = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if '"status": "ok"' in line:
                continue
            try:
                record = RunRecord.model_validate_json(line)
            except ValueError:
                continue  # a torn last line from a crash
            if record.status != "ok":
                found.append(record)
    return found


def parameter_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith(("param.", "tunable."))]
