"""History for nightly jobs: runs and samples in a database, trends and change points.

SQLAlchemy 2 over SQLite by default (`results/history.db`); any SQLAlchemy URL (e.g.
`postgresql+psycopg://user@db/bench`) through `--db` or `BENCH_HISTORY_URL` lets a team share
one history. A *series* is one metric of one cell on one host; its points are the per-run
medians in start order, and `changepoint.detect` (PELT) says whether and when it shifted.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    and_,
    create_engine,
    delete,
    insert,
    or_,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from bench.analysis import changepoint
from bench.analysis.frame import META_COLUMNS, Run, empty_frame
from bench.analysis.frame import load as load_run
from bench.core.errors import BenchError
from bench.core.rundir import RunRecord, results_dir
from bench.core.settings import settings
from bench.workloads import HEADLINE

CHUNK = 20000


class HistoryError(BenchError):
    """The history database cannot be opened or used."""


class Base(DeclarativeBase):
    pass


class RunRow(Base):
    __tablename__ = "bench_runs"

    run_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), index=True)
    scenario: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[float] = mapped_column(Float, index=True)
    status: Mapped[str] = mapped_column(String(32))
    tiers: Mapped[str] = mapped_column(String(500))
    samples: Mapped[int] = mapped_column(Integer)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    failures: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    path: Mapped[str] = mapped_column(Text)
    ingested_at: Mapped[float] = mapped_column(Float)


class CellRow(Base):
    __tablename__ = "bench_cells"

    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    tier: Mapped[str] = mapped_column(String(64), index=True)
    workload: Mapped[str] = mapped_column(String(128), index=True)
    label: Mapped[str] = mapped_column(Text)
    cache: Mapped[str] = mapped_column(String(128))
    params: Mapped[str] = mapped_column(Text)
    tunables: Mapped[str] = mapped_column(Text)


class SampleRow(Base):
    __tablename__ = "bench_samples"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("bench_runs.run_id", ondelete="CASCADE"))
    cell: Mapped[str] = mapped_column(ForeignKey("bench_cells.key"))
    metric: Mapped[str] = mapped_column(String(128))
    repetition: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(32))
    direction: Mapped[str] = mapped_column(String(8))
    timestamp: Mapped[float] = mapped_column(Float)
    meta: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_bench_samples_run_cell_metric", "run_id", "cell", "metric"),
                      Index("ix_bench_samples_cell_metric", "cell", "metric"))


def default_url() -> str:
    return settings().history_url or f"sqlite:///{results_dir() / 'history.db'}"


def connect(url: str | None = None) -> Engine:
    """The history database at `url` (default: BENCH_HISTORY_URL or results/history.db)."""
    url = url or default_url()
    try:
        engine = create_engine(url)
        if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            Path(str(engine.url.database)).parent.mkdir(parents=True, exist_ok=True)
        Base.metadata.create_all(engine)
    except (ArgumentError, SQLAlchemyError, ImportError, OSError) as exc:
        raise HistoryError(f"Cannot open the history database {_safe(url)}: {exc}",
                           "give a SQLAlchemy URL with --db or BENCH_HISTORY_URL, e.g. "
                           "sqlite:///results/history.db or postgresql+psycopg://user@host/db "
                           "(with its driver installed).") from None
    return engine


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparsable URL)"


def _meta(row: dict[str, Any]) -> str | None:
    found = {}
    for name in META_COLUMNS:
        value = row.get(f"meta.{name}")
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            found[name] = value
    return json.dumps(found, sort_keys=True) if found else None


@dataclass
class Ingested:
    run_id: str
    samples: int
    replaced: bool


def ingest(engine: Engine, run: Run) -> Ingested:
    """Store a run (replacing an earlier copy of the same run id)."""
    frame = run.frame
    manifest = run.manifest
    failures = [r.model_dump(include={"key", "cell", "repetition", "status", "error"})
                for r in run.failures]
    with Session(engine) as session, session.begin():
        replaced = session.get(RunRow, run.run_id) is not None
        if replaced:
            session.execute(delete(SampleRow).where(SampleRow.run_id == run.run_id))
            session.execute(delete(RunRow).where(RunRow.run_id == run.run_id))
        session.add(RunRow(
            run_id=run.run_id, host=run.host,
            scenario=str((manifest.get("scenario") or {}).get("name", "?")),
            started_at=run.started, status=str(manifest.get("status", "?")),
            tiers=",".join(map(str, manifest.get("tiers", []))), samples=len(frame),
            manifest=json.loads(json.dumps(manifest, default=str)), failures=failures,
            path=str(run.path), ingested_at=time.time()))
        session.flush()
        if not frame.empty:
            cells = frame.drop_duplicates("cell")[["cell", "tier", "workload", "label", "cache",
                                                   "params", "tunables"]]
            known = set(session.scalars(select(CellRow.key).where(
                CellRow.key.in_([str(c) for c in cells["cell"]]))))
            new_cells = [{"key": str(r.cell), "tier": str(r.tier), "workload": str(r.workload),
                          "label": str(r.label), "cache": str(r.cache), "params": str(r.params),
                          "tunables": str(r.tunables)}
                         for r in cells.itertuples(index=False) if str(r.cell) not in known]
            if new_cells:
                session.execute(insert(CellRow), new_cells)
            for chunk in _chunks(frame):
                session.execute(insert(SampleRow), chunk)
    return Ingested(run.run_id, len(frame), replaced)


def _chunks(frame: pd.DataFrame) -> Iterator[list[dict[str, Any]]]:
    meta_columns = [f"meta.{m}" for m in META_COLUMNS if f"meta.{m}" in frame]
    base = ["run_id", "cell", "metric", "repetition", "value", "unit", "direction", "timestamp"]
    for start in range(0, len(frame), CHUNK):
        part = frame.iloc[start:start + CHUNK]
        metas = part[meta_columns].to_dict("records") if meta_columns else [{}] * len(part)
        rows = []
        for values, meta in zip(part[base].itertuples(index=False, name=None), metas,
                                strict=True):
            run_id, cell, metric, repetition, value, unit, direction, stamp = values
            rows.append({"run_id": str(run_id), "cell": str(cell), "metric": str(metric),
                         "repetition": int(repetition), "value": float(value),
                         "unit": str(unit), "direction": str(direction),
                         "timestamp": float(stamp), "meta": _meta(meta)})
        yield rows


def ingest_path(engine: Engine, run: str | Path) -> Ingested:
    return ingest(engine, load_run(run))


def runs(engine: Engine, host: str | None = None) -> list[RunRow]:
    with Session(engine) as session:
        query = select(RunRow).order_by(RunRow.started_at)
        if host:
            query = query.where(RunRow.host == host)
        return list(session.scalars(query))


def load(engine: Engine, run_id: str) -> Run:
    """A stored run as a `Run`, the same shape `bench.analysis.frame.load` gives for a directory."""
    with Session(engine) as session:
        row = session.get(RunRow, run_id)
        if row is None:
            raise HistoryError(f"No run {run_id!r} in the history database.",
                               "`bench history list` shows the stored runs.")
        query = (select(SampleRow.run_id, SampleRow.cell, CellRow.tier, CellRow.workload,
                        CellRow.label, CellRow.cache, CellRow.params, CellRow.tunables,
                        SampleRow.repetition, SampleRow.metric, SampleRow.value, SampleRow.unit,
                        SampleRow.direction, SampleRow.timestamp, SampleRow.meta)
                 .join(CellRow, CellRow.key == SampleRow.cell)
                 .where(SampleRow.run_id == run_id).order_by(SampleRow.id))
        data = [tuple(row) for row in session.execute(query)]
        records = [RunRecord(seconds=0.0, **f) for f in row.failures]
        manifest, path, host_run = row.manifest, row.path, row.run_id
    if not data:
        return Run(host_run, Path(path), manifest, empty_frame(), records)
    frame = pd.DataFrame.from_records(data, columns=[
        "run_id", "cell", "tier", "workload", "label", "cache", "params", "tunables",
        "repetition", "metric", "value", "unit", "direction", "timestamp", "meta"])
    metas = [json.loads(m) if isinstance(m, str) else {} for m in frame.pop("meta")]
    for name in META_COLUMNS:
        frame[f"meta.{name}"] = [m.get(name) for m in metas]
    for column, prefix in (("params", "param."), ("tunables", "tunable.")):
        decoded = {text: json.loads(text) for text in frame[column].unique()}
        keys = sorted({k for d in decoded.values() for k in d})
        for key in keys:
            lookup = {text: d.get(key) for text, d in decoded.items()}
            frame[prefix + key] = frame[column].map(lookup).astype(object)
    for name in ("run_id", "cell", "tier", "workload", "label", "cache", "params", "tunables",
                 "metric", "unit", "direction"):
        frame[name] = frame[name].astype("category")
    return Run(host_run, Path(path), manifest, frame, records)


# -- series and change points ------------------------------------------------------------------

@dataclass
class Series:
    host: str
    tier: str
    label: str
    workload: str
    metric: str
    unit: str
    direction: str
    points: pd.DataFrame  # run_id, started, median, n (oldest first)
    changes: list[changepoint.ChangePoint]

    @property
    def name(self) -> str:
        return f"{self.host} · {self.tier} · {self.label} · {self.metric}"

    def bad(self, change: changepoint.ChangePoint) -> float:
        """The change as a slowdown (+ = worse, whichever way the metric points)."""
        if change.after <= 0 or change.before <= 0:
            return float("nan")
        ratio = change.after / change.before
        return ratio - 1 if self.direction == "lower" else 1 / ratio - 1


def points(engine: Engine, host: str | None = None, tier: str | None = None,
           workload: str | None = None, metric: str | None = None,
           all_metrics: bool = False) -> pd.DataFrame:
    """Per-run medians: host, cell, tier, label, workload, metric, unit, direction, run_id,
    started, median, n."""
    query = (select(RunRow.host, SampleRow.cell, CellRow.tier, CellRow.label, CellRow.workload,
                    SampleRow.metric, SampleRow.unit, SampleRow.direction, SampleRow.run_id,
                    RunRow.started_at.label("started"), SampleRow.value)
             .join(CellRow, CellRow.key == SampleRow.cell)
             .join(RunRow, RunRow.run_id == SampleRow.run_id))
    for column, value in ((RunRow.host, host), (CellRow.tier, tier),
                          (CellRow.workload, workload), (SampleRow.metric, metric)):
        if value:
            query = query.where(column == value)
    if not all_metrics and not metric:  # each workload's headline metrics (all for others)
        query = query.where(or_(
            CellRow.workload.not_in(list(HEADLINE)),
            *(and_(CellRow.workload == w, SampleRow.metric.in_(m)) for w, m in HEADLINE.items())))
    with engine.connect() as conn:
        frame = pd.DataFrame.from_records(
            [tuple(row) for row in conn.execute(query)],
            columns=["host", "cell", "tier", "label", "workload", "metric", "unit", "direction",
                     "run_id", "started", "value"])
    if frame.empty:
        return frame.assign(median=[], n=[]).drop(columns="value")
    keys = ["host", "cell", "tier", "label", "workload", "metric", "unit", "direction", "run_id",
            "started"]
    grouped = frame.groupby(keys, observed=True, sort=False)["value"]
    out = grouped.median().rename("median").to_frame().join(grouped.size().rename("n"))
    return out.reset_index().sort_values(["host", "cell", "metric", "started"])


def series(frame: pd.DataFrame, min_effect: float = 0.02, min_size: int = 2) -> list[Series]:
    found: list[Series] = []
    if frame.empty:
        return found
    for key, part in frame.groupby(["host", "cell", "metric"], observed=True, sort=True):
        part = part.sort_values("started")
        first = part.iloc[0]
        changes = changepoint.detect(part["median"].to_numpy(float), min_size=min_size,
                                     min_effect=min_effect)
        found.append(Series(str(key[0]), str(first["tier"]), str(first["label"]),
                            str(first["workload"]), str(key[2]), str(first["unit"]),
                            str(first["direction"]),
                            part[["run_id", "started", "median", "n"]].reset_index(drop=True),
                            changes))
    return sorted(found, key=lambda s: (s.host, s.tier, s.label, s.metric))


@dataclass
class Alarm:
    series: Series
    change: changepoint.ChangePoint
    slowdown: float

    @property
    def run_id(self) -> str:
        return str(self.series.points["run_id"].iloc[self.change.index])


def check(all_series: list[Series], window: int = 3, threshold: float = 0.05) -> list[Alarm]:
    """Series whose level got worse by more than `threshold` at one of the last `window` runs."""
    alarms = []
    for s in all_series:
        n = len(s.points)
        for change in s.changes:
            slowdown = s.bad(change)
            if change.index >= n - window and slowdown > threshold:
                alarms.append(Alarm(s, change, slowdown))
    return alarms

