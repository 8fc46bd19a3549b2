"""The run directory results/<run-id>/: manifest.json, samples.jsonl, runs.jsonl, raw/.

samples.jsonl holds the samples; runs.jsonl is the journal of finished runs (ok or failed),
which is what `--resume` reads to know what is left.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from bench.core.errors import BenchError
from bench.core.samples import Sample, append_jsonl, read_samples
from bench.core.settings import settings

# formats of the run directory's files; a reader refuses a newer one instead of misreading it
MANIFEST_VERSION = 1
JOURNAL_VERSION = 1


def results_dir() -> Path:
    return settings().results_dir


def new_run_id(scenario: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{stamp}-{scenario}-{secrets.token_hex(2)}"


class RunRecord(BaseModel):
    """One journal line: the outcome of one planned run."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = JOURNAL_VERSION
    key: str
    cell: str
    repetition: int
    status: str  # ok | failed | timeout | skipped
    seconds: float
    error: str = ""
    stderr: str = ""
    raw: list[str] = []
    metadata: dict[str, Any] = {}


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.raw = path / "raw"
        self.samples_path = path / "samples.jsonl"
        self.journal_path = path / "runs.jsonl"
        self.manifest_path = path / "manifest.json"

    @classmethod
    def create(cls, run_id: str) -> RunDir:
        path = results_dir() / run_id
        try:
            (path / "raw").mkdir(parents=True, exist_ok=False)
        except OSError as exc:
            raise BenchError(f"Cannot create the run directory {path}: {exc.strerror}.",
                             "check that the results directory is writable "
                             "(BENCH_RESULTS_DIR sets it).") from None
        return cls(path)

    @classmethod
    def open(cls, run_id_or_path: str) -> RunDir:
        path = Path(run_id_or_path)
        if not (path / "manifest.json").exists():
            path = results_dir() / run_id_or_path
        if not (path / "manifest.json").exists():
            raise BenchError(f"No run {run_id_or_path!r} (no manifest.json in {path}).",
                             "give a run id listed under results/ or a run directory path.")
        return cls(path)

    @property
    def run_id(self) -> str:
        return self.path.name

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        tmp = self.manifest_path.with_suffix(".tmp")
        try:
            manifest = {**manifest, "format_version": manifest.get("format_version",
                                                                    MANIFEST_VERSION)}
            tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
            os.replace(tmp, self.manifest_path)
        except OSError:
            tmp.unlink(missing_ok=True)  # (a full disk) the last complete manifest stays
            raise

    def manifest(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.manifest_path.read_text())
        version = data.get("format_version", 1)  # manifests before versioning were version 1
        if not isinstance(version, int) or version > MANIFEST_VERSION:
            raise BenchError(f"{self.manifest_path} has manifest format {version!r}; this bench "
                             f"reads formats up to {MANIFEST_VERSION}.",
                             "read it with the newer bench that wrote it.")
        return data

    def update_manifest(self, **fields: Any) -> None:
        data = self.manifest()
        data.update(fields)
        self.write_manifest(data)

    def add_sample(self, sample: Sample) -> None:
        append_jsonl(self.samples_path, sample)

    def add_record(self, record: RunRecord) -> None:
        append_jsonl(self.journal_path, record)

    def samples(self) -> list[Sample]:
        return list(read_samples(self.samples_path))

    def records(self) -> list[RunRecord]:
        """The journal of finished runs. Only a torn last line (a crash mid-write) is skipped:
        any other unreadable line is an error, since the runs it recorded would be redone or
        go unreported."""
        if not self.journal_path.exists():
            return []
        found = []
        lines = self.journal_path.read_text(encoding="utf-8", errors="replace").splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                found.append(RunRecord.model_validate_json(line))
            except ValueError:
                if number == len(lines):
                    break
                raise BenchError(f"{self.journal_path}:{number} is not a run record.",
                                 "repair or delete that line (the runs it recorded will be "
                                 "run again by --resume).") from None
        return found

    def done_keys(self) -> set[str]:
        return {r.key for r in self.records()}
