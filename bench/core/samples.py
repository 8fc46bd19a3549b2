"""The Sample, one measurement (after PKB's Sample and pyperf's Run), and its JSON-lines form.

Every line of `samples.jsonl` is one Sample with a format version `v`. Readers accept every
version listed in `READABLE_VERSIONS` and upgrade old rows on load.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FORMAT_VERSION = 1
# the tier cost factors are measured against (its Tier class says is_baseline; a test checks)
BASELINE_TIER = "host"
READABLE_VERSIONS = (1,)

Direction = Literal["higher", "lower"]


class Cell(BaseModel):
    """What was measured: the same cell on two runs is comparable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tier: str
    workload: str
    params: dict[str, Any] = Field(default_factory=dict)
    tunables: dict[str, Any] = Field(default_factory=dict)
    cache: str = "none"

    @property
    def key(self) -> str:
        """A short stable id of the cell, the same on every host and run."""
        blob = json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        parts = [f"{k}={v}" for k, v in sorted(self.params.items())]
        parts += [f"{k}={v}" for k, v in sorted(self.tunables.items())]
        if self.cache != "none":
            parts.append(f"cache={self.cache}")
        suffix = f" [{', '.join(parts)}]" if parts else ""
        return f"{self.workload}{suffix}"


class Measurement(BaseModel):
    """What a workload's parser returns; the runner adds the cell, run and repetition."""

    model_config = ConfigDict(extra="forbid")

    metric: str
    value: float
    unit: str
    direction: Direction
    metadata: dict[str, Any] = Field(default_factory=dict)


class Sample(BaseModel):
    model_config = ConfigDict(extra="forbid")

    v: int = FORMAT_VERSION
    run_id: str
    cell: Cell
    repetition: int
    metric: str
    value: float
    unit: str
    direction: Direction
    timestamp: float
    metadata: dict[str, Any] = Field(default_factory=dict)

    def tidy(self) -> dict[str, Any]:
        """A flat row for pandas: one column per cell field and per parameter."""
        row: dict[str, Any] = {
            "run_id": self.run_id,
            "cell": self.cell.key,
            "tier": self.cell.tier,
            "workload": self.cell.workload,
            "label": self.cell.label,
            "cache": self.cell.cache,
            "repetition": self.repetition,
            "metric": self.metric,
            "value": self.value,
            "unit": self.unit,
            "direction": self.direction,
            "timestamp": self.timestamp,
        }
        row.update({f"param.{k}": v for k, v in self.cell.params.items()})
        row.update({f"tunable.{k}": v for k, v in self.cell.tunables.items()})
        return row


def append_jsonl(path: Path, record: BaseModel | dict[str, Any]) -> None:
    """Append one JSON line and fsync it, so a crash loses at most the record in flight."""
    data = record.model_dump(mode="json") if isinstance(record, BaseModel) else record
    line = json.dumps(data, sort_keys=True) + "\n"
    _drop_torn_tail(path)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def _drop_torn_tail(path: Path) -> None:
    """Cut a partial last line left by a crash, so the next record starts on a line of its own."""
    try:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) == b"\n":
                return
    except OSError:  # missing or empty
        return
    content = path.read_bytes()
    with open(path, "r+b") as fh:
        fh.truncate(content.rfind(b"\n") + 1)


def read_samples(path: Path) -> Iterator[Sample]:
    """Read samples, skipping a torn last line (a crash mid-write) but nothing else."""
    if not path.exists():
        return
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a samples file (not UTF-8 at byte {exc.start})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                return
            raise ValueError(f"{path}:{number}: not valid JSON") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}:{number}: a sample must be a JSON object")
        version = data.get("v", 1)
        if version not in READABLE_VERSIONS:
            raise ValueError(
                f"{path}:{number}: sample format v{version} is newer than this bench "
                f"(reads v{READABLE_VERSIONS[-1]}); upgrade bench."
            )
        try:
            yield Sample.model_validate(data)
        except ValidationError as exc:
            fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"{path}:{number}: not a valid sample: {fields}") from None
