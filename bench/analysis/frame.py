"""Run directories as tidy pandas frames, for reports, comparisons, checks and history.

One row per sample, the columns of `Sample.tidy()` plus `params`/`tunables` as canonical JSON
(to group by) and the few metadata fields the analysis reads (`meta.*`). Reading is a fast path
over `samples.jsonl` (a million samples in seconds) that keeps the reader's rules: every
version in `READABLE_VERSIONS` is accepted (older rows are upgraded through `Sample`), a torn
last line is skipped, anything else unreadable is an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core.errors import BenchError
from bench.core.rundir import RunDir, RunRecord
from bench.core.samples import FORMAT_VERSION, READABLE_VERSIONS, Cell, Sample

META_COLUMNS = ("network_path", "page_cache", "accelerator", "phases_ms", "scratch_fs")
BASE_COLUMNS = ("run_id", "cell", "tier", "workload", "label", "cache", "params", "tunables",
                "repetition", "metric", "value", "unit", "direction", "timestamp")


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


def _canonical(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


class _Cells:
    """Cell key and label, computed once per distinct cell."""

    def __init__(self) -> None:
        self.memo: dict[str, tuple[str, str, str, str]] = {}
        self.by_text: dict[str, tuple[dict[str, Any], tuple[str, str, str, str]]] = {}

    def describe_text(self, text: str, cell: dict[str, Any]) -> tuple[str, str, str, str]:
        """By the cell's JSON text as written (cheap), confirmed by comparing the cell."""
        known = self.by_text.get(text)
        if known is not None and known[0] == cell:
            return known[1]
        found = self.describe(cell)
        self.by_text[text] = (cell, found)
        return found

    def describe(self, cell: dict[str, Any]) -> tuple[str, str, str, str]:
        blob = _canonical(cell)
        found = self.memo.get(blob)
        if found is None:
            parsed = Cell.model_validate(cell)
            found = (parsed.key, parsed.label, _canonical(parsed.params),
                     _canonical(parsed.tunables))
            self.memo[blob] = found
        return found


def empty_frame() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in
                         (*BASE_COLUMNS, *(f"meta.{m}" for m in META_COLUMNS))})


def read_frame(path: Path) -> pd.DataFrame:
    """samples.jsonl -> a tidy frame (see the module's docstring)."""
    if not path.exists():
        return empty_frame()
    columns: dict[str, list[Any]] = {c: [] for c in BASE_COLUMNS}
    meta: dict[str, list[Any]] = {m: [] for m in META_COLUMNS}
    extra: dict[str, dict[int, Any]] = {}
    cells = _Cells()
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    row = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise BenchError(f"{path}:{number}: not valid JSON.",
                             "repair or remove that line; only a torn last line is skipped.") \
                from None
        version = data.get("v", 1)
        if version not in READABLE_VERSIONS:
            raise BenchError(f"{path}:{number}: sample format v{version} is newer than this "
                             f"bench (reads v{READABLE_VERSIONS[-1]}).", "upgrade bench.")
        if version != FORMAT_VERSION:
            data = Sample.model_validate(data).model_dump(mode="json")
        cell = data["cell"]
        end = line.find(', "direction": ') if line.startswith('{"cell": {') else -1
        key, label, params, tunables = (cells.describe_text(line[9:end], cell) if end > 0
                                        else cells.describe(cell))
        columns["run_id"].append(data["run_id"])
        columns["cell"].append(key)
        columns["tier"].append(cell["tier"])
        columns["workload"].append(cell["workload"])
        columns["label"].append(label)
        columns["cache"].append(cell.get("cache", "none"))
        columns["params"].append(params)
        columns["tunables"].append(tunables)
        columns["repetition"].append(data["repetition"])
        columns["metric"].append(data["metric"])
        columns["value"].append(float(data["value"]))
        columns["unit"].append(data["unit"])
        columns["direction"].append(data["direction"])
        columns["timestamp"].append(data["timestamp"])
        metadata = data.get("metadata") or {}
        for name in META_COLUMNS:
            meta[name].append(metadata.get(name))
        for prefix, values in (("param.", cell.get("params") or {}),
                               ("tunable.", cell.get("tunables") or {})):
            for k, v in values.items():
                extra.setdefault(prefix + k, {})[row] = v
        row += 1
    frame = pd.DataFrame(columns)
    for name in META_COLUMNS:
        frame[f"meta.{name}"] = meta[name]
    for name, values in sorted(extra.items()):
        frame[name] = pd.Series(values, dtype=object).reindex(range(row))
    for name in ("run_id", "cell", "tier", "workload", "label", "cache", "params", "tunables",
                 "metric", "unit", "direction"):
        frame[name] = frame[name].astype("category")
    return frame


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
