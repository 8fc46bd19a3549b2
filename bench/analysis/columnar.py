"""The bulk path of the samples reader (see `bench.analysis.frame`): samples.jsonl parsed by
pyarrow, checked column by column, each distinct cell validated once.

Lines are written by `append_jsonl` with sorted keys, so each starts with the cell object,
followed by `, "direction": "`. The text before that marker names the cell: equal texts are
the same cell, so a run's cells are found by dictionary-encoding those prefixes (a few hundred
distinct texts for a million rows), and each distinct text is parsed and validated as a `Cell`.
Everything else comes from pyarrow's JSON reader with an explicit schema (so a field of the
wrong type is an error, not a guess). `read` returns None whenever it cannot vouch for the data;
the caller then reads row by row, which names the offending line.
"""

from __future__ import annotations

import io
import json
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

if TYPE_CHECKING:
    import pyarrow as pa

from bench.core.samples import FORMAT_VERSION, Cell

META_COLUMNS = ("network_path", "page_cache", "accelerator", "phases_ms", "scratch_fs",
                "start_mode")
BASE_COLUMNS = ("run_id", "cell", "tier", "workload", "label", "cache", "params", "tunables",
                "repetition", "metric", "value", "unit", "direction", "timestamp")

PREFIX = '{"cell": '
MARKER = ', "direction": "'
BLOCK = 1 << 24
STRING_META = ("network_path", "page_cache", "accelerator", "scratch_fs", "start_mode")
REQUIRED = ("run_id", "repetition", "metric", "value", "unit", "direction", "timestamp")


@cache
def schema() -> pa.Schema:
    """What the JSON reader is told each field is (pyarrow is imported when first read)."""
    import pyarrow as pa

    return pa.schema([
        ("v", pa.int64()), ("run_id", pa.string()), ("repetition", pa.int64()),
        ("metric", pa.string()), ("value", pa.float64()), ("unit", pa.string()),
        ("direction", pa.string()), ("timestamp", pa.float64()),
        # phases_ms as a struct of no fields: parsed for nothing but where it is present
        ("metadata", pa.struct([*((name, pa.string()) for name in STRING_META),
                                ("phases_ms", pa.struct([]))])),
    ])


def canonical(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def describe(cell: Cell) -> tuple[str, str, str, str, str, str, str, dict[str, Any],
                                   dict[str, Any]]:
    return (cell.key, cell.tier, cell.workload, cell.label, cell.cache,
            canonical(cell.params), canonical(cell.tunables), cell.params, cell.tunables)


CELL_FIELDS = ("cell", "tier", "workload", "label", "cache", "params", "tunables")


def empty_frame() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in
                         (*BASE_COLUMNS, *(f"meta.{m}" for m in META_COLUMNS))})


def assemble(columns: dict[str, Any], meta: dict[str, Any], cells: list[tuple[Any, ...]],
             codes: np.ndarray) -> pd.DataFrame:
    """The frame from per-row columns, per-row meta values and per-row indexes into `cells`
    (each `describe`d once): cell columns and param./tunable. columns are taken by index."""
    n = len(codes)
    frame: dict[str, Any] = {}
    for position, name in enumerate(CELL_FIELDS):
        values = [cell[position] for cell in cells]
        uniques = {value: None for value in values}
        number = {value: index for index, value in enumerate(uniques)}
        lookup = np.asarray([number[v] for v in values], dtype=np.int64)
        frame[name] = pd.Categorical.from_codes(lookup[codes] if n else codes,
                                                categories=list(uniques))
    for name in BASE_COLUMNS:
        if name in CELL_FIELDS:
            continue
        frame[name] = columns[name]
    out = pd.DataFrame(frame)[list(BASE_COLUMNS)]
    for name in ("run_id", "metric", "unit", "direction"):
        out[name] = out[name].astype("category")
    out["value"] = out["value"].astype(float)
    for name in META_COLUMNS:
        out[f"meta.{name}"] = pd.Series(meta[name], dtype=object)
    extra: dict[str, np.ndarray] = {}
    for position, prefix in ((7, "param."), (8, "tunable.")):
        for key in sorted({k for cell in cells for k in cell[position]}):
            per_cell = np.empty(len(cells), dtype=object)
            per_cell[:] = [_scalar(cell[position].get(key, np.nan)) for cell in cells]
            extra[prefix + key] = per_cell[codes]
    for name in sorted(extra):
        out[name] = pd.Series(extra[name], dtype=object)
    return out


def _scalar(value: Any) -> Any:
    """A parameter as one hashable column value: nested ones (a victim's parameters, per-instance
    limits) as their canonical JSON text."""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return value


def without_torn_tail(data: bytes) -> bytes:
    """`data` without a last line that a crash cut short (no newline and not valid JSON)."""
    if not data or data.endswith(b"\n"):
        return data
    cut = data.rfind(b"\n") + 1
    try:
        json.loads(data[cut:])
    except ValueError:
        return data[:cut]
    return data


def _lines(data: bytes) -> pa.ChunkedArray:
    """Each non-empty line as a string. JSON text has no raw control characters, so a CSV
    reader with \\x01 as its delimiter and no quoting splits lines and nothing else."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    table = pcsv.read_csv(
        io.BytesIO(data),
        read_options=pcsv.ReadOptions(column_names=["line"], block_size=BLOCK),
        parse_options=pcsv.ParseOptions(delimiter="\x01", quote_char=False, escape_char=False),
        convert_options=pcsv.ConvertOptions(column_types={"line": pa.string()}))
    return table["line"]


def read(data: bytes) -> pd.DataFrame | None:
    """The tidy frame of `data` (samples.jsonl's bytes, torn tail removed), or None."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pjson

    try:
        lines = _lines(data)
        table = pjson.read_json(io.BytesIO(data),
                                read_options=pjson.ReadOptions(block_size=BLOCK),
                                parse_options=pjson.ParseOptions(
                                    explicit_schema=schema(), unexpected_field_behavior="ignore"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError):
        return None
    if len(lines) != table.num_rows or not _valid(lines, table):
        return None
    prefixes = pc.list_element(pc.split_pattern(lines, pattern=MARKER, max_splits=1), 0)
    encoded = prefixes.combine_chunks().dictionary_encode()
    cells = []
    for text in encoded.dictionary.to_pylist():
        try:
            cell = Cell.model_validate(json.loads(text[len(PREFIX):]))
        except (ValueError, ValidationError):  # not the layout append_jsonl writes
            return None
        cells.append(describe(cell))
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    columns = {name: _numpy(table[name]) for name in REQUIRED}
    metadata = table["metadata"].combine_chunks()
    meta: dict[str, Any] = {name: metadata.field(name).to_numpy(zero_copy_only=False)
                            for name in STRING_META}
    meta["phases_ms"] = _phases(lines, metadata.field("phases_ms"))
    return assemble(columns, {name: meta[name] for name in META_COLUMNS}, cells, codes)


def _numpy(column: pa.ChunkedArray) -> Any:
    import pyarrow as pa

    if pa.types.is_string(column.type):
        return pd.Categorical(column.to_pandas(strings_to_categorical=True))
    return column.to_numpy()


def _valid(lines: pa.ChunkedArray, table: pa.Table) -> bool:
    """The bulk checks: layout, required fields, allowed values, the current format."""
    import pyarrow.compute as pc

    if not pc.all(pc.starts_with(lines, PREFIX + "{")).as_py():
        return False
    if any(table[name].null_count for name in REQUIRED):
        return False
    versions = pc.unique(table["v"].fill_null(1)).to_pylist()
    if versions != [FORMAT_VERSION]:  # older rows are upgraded, newer refused, row by row
        return False
    directions = set(pc.unique(table["direction"]).to_pylist())
    return directions <= {"higher", "lower"}


def _phases(lines: pa.ChunkedArray, present: pa.Array) -> np.ndarray:
    """metadata.phases_ms (start-up rows only): parsed from just the lines that carry it (the
    JSON reader says which: `present` is null where a row has none)."""
    import pyarrow as pa

    out = np.full(len(lines), None, dtype=object)
    rows = np.flatnonzero(present.is_valid().to_numpy(zero_copy_only=False))
    if len(rows):
        picked = lines.take(pa.array(rows)).to_pylist()
        for row, line in zip(rows, picked, strict=True):
            phases = (json.loads(line).get("metadata") or {}).get("phases_ms")
            out[row] = phases if isinstance(phases, dict) and phases else None
    return out
