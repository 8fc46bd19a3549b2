"""A run's samples as a Parquet copy (samples.parquet beside samples.jsonl), so a big run is
parsed once: `bench run` writes it at its end, and reading a large samples.jsonl writes it too.

The copy holds the frame's plain columns, each row's cell as an index into the run's cells
(kept in the file's metadata with their key, label and canonical parameters), and the start-up
phases as JSON text. It names the samples.jsonl it was made from (size and modification time):
a copy of any other state of the file is ignored, so appending a sample (or a resumed run)
makes the reader go back to the JSON lines. samples.jsonl stays the record; the copy is a cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.analysis.columnar import CELL_FIELDS, META_COLUMNS, assemble

NAME = "samples.parquet"
FORMAT = 1
PLAIN = ("run_id", "repetition", "metric", "value", "unit", "direction", "timestamp")
WORTH = 100_000  # a smaller run parses in a fraction of a second: no copy


def _source(jsonl: Path) -> dict[str, int]:
    stat = jsonl.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def write(jsonl: Path, frame: pd.DataFrame) -> Path | None:
    """Write the copy of `frame` (read from `jsonl`); None when it cannot be written (a
    read-only results directory is fine: the reader parses the JSON lines again)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = _source(jsonl)
    cells = frame.drop_duplicates("cell")[list(CELL_FIELDS)].astype(str)
    index = {key: i for i, key in enumerate(cells["cell"])}
    cell = frame["cell"].astype("category")  # per category, not per row, from here on
    per_category = np.asarray([index[str(key)] for key in cell.cat.categories], dtype=np.int32)
    columns: dict[str, Any] = {name: frame[name] for name in PLAIN}
    columns["cell_index"] = per_category[cell.cat.codes.to_numpy()]
    strings: dict[str, np.ndarray] = {}
    for name in META_COLUMNS:
        column = frame[f"meta.{name}"]
        present = column.notna().to_numpy()
        picked = column.to_numpy()[present]
        values = np.full(len(column), None, dtype=object)
        # phases as JSON text (only the start-up rows carry them)
        values[present] = [json.dumps(p) for p in picked] if name == "phases_ms" else picked
        strings[f"meta.{name}"] = values
    target = jsonl.with_name(NAME)
    tmp = target.with_name(f".{NAME}.{os.getpid()}.tmp")
    try:
        table = pa.Table.from_pandas(pd.DataFrame(columns), preserve_index=False)
        for name, values in strings.items():
            table = table.append_column(name, pa.array(values, type=pa.string()))
        meta = {"format": FORMAT, "source": source, "cells": cells.to_numpy().tolist()}
        table = table.replace_schema_metadata({"bench": json.dumps(meta)})
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, target)
    except (OSError, TypeError, ValueError, pa.ArrowException):  # odd metadata: no copy
        tmp.unlink(missing_ok=True)
        return None
    return target


def read(jsonl: Path) -> pd.DataFrame | None:
    """The frame from a copy made of `jsonl` as it is now, or None (no copy, or a stale one)."""
    copy = jsonl.with_name(NAME)
    if not copy.exists():
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(copy)
        meta = json.loads((table.schema.metadata or {}).get(b"bench", b"{}"))
        if meta.get("format") != FORMAT or meta.get("source") != _source(jsonl):
            return None
        cells = [(key, tier, workload, label, cache, params, tunables, json.loads(params),
                  json.loads(tunables))
                 for key, tier, workload, label, cache, params, tunables in meta["cells"]]
        columns: dict[str, Any] = {}
        for name in PLAIN:
            column = table.column(name)
            columns[name] = (column.to_pandas() if pa.types.is_dictionary(column.type)
                             else column.to_numpy())
        values: dict[str, Any] = {name: table.column(f"meta.{name}").to_numpy(
            zero_copy_only=False) for name in META_COLUMNS}
        phases = values["phases_ms"]
        for row in np.flatnonzero([p is not None for p in phases]):
            phases[row] = json.loads(phases[row])
        codes = table.column("cell_index").to_numpy().astype(np.int64)
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
        return None
    return assemble(columns, values, cells, codes)
