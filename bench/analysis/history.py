"""History for nightly jobs: runs and samples in a database, trends and change points.

SQLAlchemy 2 over SQLite by default (`results/history.db`); any SQLAlchemy URL (e.g.
`postgresql+psycopg://user@db/bench`) through `--db` or `BENCH_HISTORY_URL` lets a team share
one history. A *series* is one metric of one cell on one host; its points are the per-run
medians in start order, and `changepoint.detect_all` (PELT) says whether and when it shifted.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, create_engine, delete, insert, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session

from bench.analysis import changepoint
from bench.analysis.columnar import META_COLUMNS, empty_frame
from bench.analysis.history_schema import (
    SCHEMA_VERSION,
    CellRow,
    PointRow,
    RunRow,
    SampleRow,
    SchemaTooNew,
    migrate,
    point_rows,
)
from bench.core.errors import BenchError
from bench.core.rundir import RunRecord, results_dir
from bench.core.settings import settings
from bench.workloads import HEADLINE

if TYPE_CHECKING:
    from bench.analysis.frame import Run

SAMPLE_COLUMNS = ("run_id", "cell", "metric", "repetition", "value", "unit", "direction",
                  "timestamp", "meta")
_NAMES = ", ".join(SAMPLE_COLUMNS)
COPY_SAMPLES = f"COPY bench_samples ({_NAMES}) FROM STDIN"
_ROW = f"({', '.join('?' for _ in SAMPLE_COLUMNS)})"
INSERT_SAMPLES = f"INSERT INTO bench_samples ({_NAMES}) VALUES {_ROW}"  # noqa: S608 (constants)
SQLITE_BATCH = 100  # rows per statement: 900 parameters, under SQLite's oldest limit of 999
INSERT_BATCH = f"INSERT INTO bench_samples ({_NAMES}) VALUES " \
    + ", ".join([_ROW] * SQLITE_BATCH)  # noqa: S608 (constants only)


class HistoryError(BenchError):
    """The history database cannot be opened or used."""


def default_url() -> str:
    return settings().history_url or f"sqlite:///{results_dir() / 'history.db'}"


def connect(url: str | None = None) -> Engine:
    """The history database at `url` (default: BENCH_HISTORY_URL or results/history.db),
    created or migrated to the current schema version."""
    url = url or default_url()
    try:
        engine = create_engine(url)
        if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            Path(str(engine.url.database)).parent.mkdir(parents=True, exist_ok=True)
        with engine.begin() as conn:
            migrate(conn)
    except SchemaTooNew as exc:
        raise HistoryError(f"The history database {_safe(url)} has schema version "
                           f"{exc.found}, newer than this bench (v{SCHEMA_VERSION}).",
                           "upgrade bench, or give another database with --db.") from None
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


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


# json.dumps(x, sort_keys=True) to the byte, without building an encoder on each call
_SORTED = json.JSONEncoder(sort_keys=True)


def meta_json(frame: pd.DataFrame) -> np.ndarray:
    """Per row, the stored meta column: JSON of the row's non-missing `meta.*` values (None if
    none). The string fields are low-cardinality: each distinct combination is encoded once;
    only rows with start-up phases are encoded one by one."""
    n = len(frame)
    if n == 0:
        return np.empty(0, dtype=object)
    combined = np.zeros(n, dtype=np.int64)
    columns = []
    for name in (m for m in META_COLUMNS if m != "phases_ms" and f"meta.{m}" in frame):
        found, values = pd.factorize(frame[f"meta.{name}"].astype(object), use_na_sentinel=True)
        combined = pd.factorize(combined * (len(values) + 1) + (found + 1))[0]
        columns.append((name, found, list(values)))
    firsts = pd.Series(combined).drop_duplicates().index.to_numpy()  # in group-id order
    bases = [{name: values[found[row]] for name, found, values in columns
              if found[row] >= 0 and _present(values[found[row]])} for row in firsts]
    texts = np.asarray([_SORTED.encode(b) if b else None for b in bases], dtype=object)
    out: np.ndarray = texts[combined]
    if "meta.phases_ms" in frame:
        column = frame["meta.phases_ms"]
        phases = column.to_numpy(dtype=object)
        for row in np.flatnonzero(column.notna().to_numpy()):
            out[row] = _SORTED.encode({**bases[combined[row]], "phases_ms": phases[row]})
    return out


@dataclass
class Ingested:
    run_id: str
    samples: int
    replaced: bool


def ingest(engine: Engine, run: Run) -> Ingested:
    """Store a run (replacing an earlier copy of the same run id), in one transaction."""
    frame = run.frame
    manifest = run.manifest
    failures = [r.model_dump(include={"key", "cell", "repetition", "status", "error"})
                for r in run.failures]
    with engine.begin() as conn:
        replaced = conn.scalar(select(RunRow.run_id).where(RunRow.run_id == run.run_id)) \
            is not None
        if replaced:
            for table in (PointRow, SampleRow, RunRow):
                conn.execute(delete(table).where(table.run_id == run.run_id))
        conn.execute(insert(RunRow), [dict(
            run_id=run.run_id, host=run.host,
            scenario=str((manifest.get("scenario") or {}).get("name", "?")),
            started_at=run.started, status=str(manifest.get("status", "?")),
            tiers=",".join(map(str, manifest.get("tiers", []))), samples=len(frame),
            manifest=json.loads(json.dumps(manifest, default=str)), failures=failures,
            path=str(run.path), ingested_at=time.time())])
        if not frame.empty:
            cells = frame.drop_duplicates("cell")[["cell", "tier", "workload", "label", "cache",
                                                   "params", "tunables"]]
            known = set(conn.scalars(select(CellRow.key).where(
                CellRow.key.in_([str(c) for c in cells["cell"]]))))
            new_cells = [{"key": str(r.cell), "tier": str(r.tier), "workload": str(r.workload),
                          "label": str(r.label), "cache": str(r.cache), "params": str(r.params),
                          "tunables": str(r.tunables)}
                         for r in cells.itertuples(index=False) if str(r.cell) not in known]
            if new_cells:
                conn.execute(insert(CellRow), new_cells)
            _insert_samples(conn, frame)
            conn.execute(insert(PointRow), point_rows(frame))
    return Ingested(run.run_id, len(frame), replaced)


def _values(series: pd.Series) -> np.ndarray:
    """A column as an object array of Python values (categories converted once, not per row)."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        categories = np.asarray([str(c) for c in series.cat.categories], dtype=object)
        return np.asarray(categories[series.cat.codes.to_numpy()])
    return np.asarray(series.to_numpy())


def sample_rows(frame: pd.DataFrame) -> np.ndarray:
    """The stored bench_samples rows of a frame, SAMPLE_COLUMNS in order: an (n, 9) object
    array of plain str, int, float and None (what the drivers bind without adapting)."""
    grid = np.empty((len(frame), len(SAMPLE_COLUMNS)), dtype=object)
    for i, name in enumerate(SAMPLE_COLUMNS[:-1]):
        grid[:, i] = _values(frame[name])  # numbers become Python int / float here, in C
    grid[:, -1] = meta_json(frame)
    return grid


def _insert_samples(conn: Connection, frame: pd.DataFrame) -> None:
    """Every sample in bulk: COPY on PostgreSQL, multi-row INSERTs on SQLite, the ORM's
    batched insert elsewhere."""
    grid = sample_rows(frame)
    dialect = conn.dialect.name
    if dialect == "postgresql" and conn.dialect.driver == "psycopg":
        raw: Any = conn.connection.driver_connection
        # the commit need not wait for the WAL flush: a crash can lose this ingest, which is
        # then simply run again, never corrupt what is stored
        conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
        with raw.cursor() as cursor, \
                cursor.copy(COPY_SAMPLES) as copy:
            for row in grid.tolist():
                copy.write_row(row)
    elif dialect == "sqlite":
        _insert_sqlite(conn, grid)
    else:
        conn.execute(insert(SampleRow), [dict(zip(SAMPLE_COLUMNS, row, strict=True))
                                         for row in grid.tolist()])


def _insert_sqlite(conn: Connection, grid: np.ndarray) -> None:
    """SQLITE_BATCH rows per INSERT statement: sqlite3's executemany costs about a
    microsecond per statement (reset, bind, step) before SQLite's own work, so one row per
    statement spent more time there than in storing the row. Same transaction as the caller."""
    whole = len(grid) - len(grid) % SQLITE_BATCH
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        if whole:
            cursor.executemany(INSERT_BATCH, grid[:whole].reshape(-1, grid.shape[1]
                                                                  * SQLITE_BATCH).tolist())
        if whole < len(grid):
            cursor.executemany(INSERT_SAMPLES, grid[whole:].tolist())
    finally:
        cursor.close()


def ingest_path(engine: Engine, run: str | Path) -> Ingested:
    from bench.analysis.frame import load as load_run

    return ingest(engine, load_run(run))


def runs(engine: Engine, host: str | None = None) -> list[RunRow]:
    with Session(engine) as session:
        query = select(RunRow).order_by(RunRow.started_at)
        if host:
            query = query.where(RunRow.host == host)
        return list(session.scalars(query))


def load(engine: Engine, run_id: str) -> Run:
    """A stored run as a `Run`, the same shape `bench.analysis.frame.load` gives for a directory."""
    from bench.analysis.frame import Run

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
    columns: dict[str, np.ndarray]  # run_id, started, median, n (oldest first)
    changes: list[changepoint.ChangePoint]

    @property
    def points(self) -> pd.DataFrame:
        """run_id, started, median, n (oldest first), as a frame (built on each call: a trend
        over 1,000 series that only prints them needs none)."""
        return pd.DataFrame(self.columns)

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
    """Per-run medians (from bench_points): host, cell, tier, label, workload, metric, unit,
    direction, run_id, started, median, n."""
    # three plain reads joined here: cheaper than the database's join for ~1e5 points
    with engine.connect() as conn:
        runs_ = _read(conn, select(RunRow.run_id, RunRow.host, RunRow.started_at.label("started")))
        cells = _read(conn, select(CellRow.key.label("cell"), CellRow.tier, CellRow.label,
                                   CellRow.workload))
        query = select(PointRow.run_id, PointRow.cell, PointRow.metric, PointRow.unit,
                       PointRow.direction, PointRow.median, PointRow.n)
        if metric:
            query = query.where(PointRow.metric == metric)
        elif not all_metrics:  # in the database, what the headline filter below surely drops
            others = select(CellRow.key).where(CellRow.workload.not_in(sorted(HEADLINE)))
            query = query.where(or_(
                PointRow.metric.in_(sorted({m for ms in HEADLINE.values() for m in ms})),
                PointRow.cell.in_(others)))
        found = _read(conn, query)
    if host:
        runs_ = runs_[runs_["host"] == host]
    for name, value in (("tier", tier), ("workload", workload)):
        if value:
            cells = cells[cells[name] == value]
    frame = found.merge(cells, on="cell").merge(runs_, on="run_id")
    if not all_metrics and not metric and not frame.empty:  # each workload's headline metrics
        pairs = [f"{w}\0{m}" for w, ms in HEADLINE.items() for m in ms]
        keep = ~frame["workload"].isin(list(HEADLINE)) \
            | (frame["workload"].astype(str) + "\0" + frame["metric"].astype(str)).isin(pairs)
        frame = frame[keep]
    frame = frame[["host", "cell", "tier", "label", "workload", "metric", "unit", "direction",
                   "run_id", "started", "median", "n"]]
    return frame.sort_values(["host", "cell", "metric", "started"], kind="stable") \
        .reset_index(drop=True)


def _read(conn: Connection, query: Any) -> pd.DataFrame:
    result = conn.execute(query)  # the driver's own fetchall: no SQLAlchemy row per row
    return pd.DataFrame.from_records(result.cursor.fetchall(), columns=list(result.keys()))


def series(frame: pd.DataFrame, min_effect: float = 0.02, min_size: int = 2) -> list[Series]:
    """One `Series` per host, cell and metric of `points(...)`, with its change points."""
    found: list[Series] = []
    if frame.empty:
        return found
    frame = frame.sort_values(["host", "cell", "metric", "started"], kind="stable") \
        .reset_index(drop=True)
    keys = frame["host"].astype(str) + "\0" + frame["cell"].astype(str) + "\0" \
        + frame["metric"].astype(str)
    starts = np.flatnonzero(np.r_[True, keys.to_numpy()[1:] != keys.to_numpy()[:-1]])
    ends = np.r_[starts[1:], len(frame)]
    medians = frame["median"].to_numpy(dtype=float)
    columns = {name: frame[name].to_numpy() for name in
               ("host", "tier", "label", "workload", "metric", "unit", "direction")}
    table = {"run_id": frame["run_id"].astype(str).to_numpy(dtype=object),
             "started": frame["started"].to_numpy(dtype=float), "median": medians,
             "n": frame["n"].to_numpy()}
    detected = changepoint.detect_all([medians[a:b] for a, b in zip(starts, ends, strict=True)],
                                      min_size=min_size, min_effect=min_effect)
    for start, end, changes in zip(starts, ends, detected, strict=True):
        text = {name: str(values[start]) for name, values in columns.items()}
        found.append(Series(**text, columns={k: v[start:end] for k, v in table.items()},
                            changes=changes))
    return sorted(found, key=lambda s: (s.host, s.tier, s.label, s.metric))


@dataclass
class Alarm:
    series: Series
    change: changepoint.ChangePoint
    slowdown: float

    @property
    def run_id(self) -> str:
        return str(self.series.columns["run_id"][self.change.index])


def check(all_series: list[Series], window: int = 3, threshold: float = 0.05) -> list[Alarm]:
    """Series whose level got worse by more than `threshold` at one of the last `window` runs."""
    alarms = []
    for s in all_series:
        n = len(s.columns["median"])
        for change in s.changes:
            slowdown = s.bad(change)
            if change.index >= n - window and slowdown > threshold:
                alarms.append(Alarm(s, change, slowdown))
    return alarms

