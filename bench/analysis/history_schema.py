"""The history database's tables, its schema version and the migrations between versions.

`bench_schema` holds one row, the version of the layout. `migrate` brings an older database up
to `SCHEMA_VERSION` step by step in one transaction (a failed step leaves it as it was),
keeping every stored run: a database made before versions were kept (the tables of v1 and no
`bench_schema`) is v1. A database newer than this bench is refused rather than guessed at.

- v1: runs, cells, samples.
- v2: `bench_points`, each run's median (and count) per cell and metric, written at ingest, so
  trends read one row per run and series instead of every sample; filled from the stored
  samples when an older database is migrated. The samples keep one index (run id) instead of
  v1's two wider ones, which made a bulk insert three times slower, and lose their foreign keys
  (checked per row on PostgreSQL; SQLite never enforced them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pandas as pd
from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = 2


class Base(DeclarativeBase):
    pass


class SchemaRow(Base):
    __tablename__ = "bench_schema"

    version: Mapped[int] = mapped_column(Integer, primary_key=True)


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
    # no foreign keys since v2: ingest writes the run and its cells first in the same
    # transaction, and a key checked per row (a trigger call each on PostgreSQL) made a bulk
    # COPY of a million samples several times slower
    run_id: Mapped[str] = mapped_column(String(200))
    cell: Mapped[str] = mapped_column(String(32))
    metric: Mapped[str] = mapped_column(String(128))
    repetition: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(32))
    direction: Mapped[str] = mapped_column(String(8))
    timestamp: Mapped[float] = mapped_column(Float)
    meta: Mapped[str | None] = mapped_column(Text, nullable=True)

    # v1 had (run_id, cell, metric) and (cell, metric): trends read bench_points since v2, and
    # each index costs about as much as the rows themselves on a bulk insert
    __table_args__ = (Index("ix_bench_samples_run", "run_id"),)


class PointRow(Base):
    """v2: one run's median of one metric of one cell."""

    __tablename__ = "bench_points"

    run_id: Mapped[str] = mapped_column(ForeignKey("bench_runs.run_id", ondelete="CASCADE"),
                                        primary_key=True)
    cell: Mapped[str] = mapped_column(ForeignKey("bench_cells.key"), primary_key=True)
    metric: Mapped[str] = mapped_column(String(128), primary_key=True)
    unit: Mapped[str] = mapped_column(String(32))
    direction: Mapped[str] = mapped_column(String(8))
    median: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_bench_points_cell_metric", "cell", "metric"),)


def point_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The bench_points rows of one run's samples (run_id, cell, metric, unit, direction,
    value columns)."""
    if frame.empty:
        return []
    grouped = frame.groupby(["run_id", "cell", "metric", "unit", "direction"], observed=True,
                            sort=False)["value"]
    out = grouped.median().rename("median").to_frame().join(grouped.size().rename("n"))
    return [{"run_id": str(r[0]), "cell": str(r[1]), "metric": str(r[2]), "unit": str(r[3]),
             "direction": str(r[4]), "median": float(m), "n": int(n)}
            for r, m, n in zip(out.index, out["median"], out["n"], strict=True)]


def _to_v2(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":  # SQLite does not enforce them: nothing to drop
        for name in ("bench_samples_run_id_fkey", "bench_samples_cell_fkey"):
            conn.execute(text(f"ALTER TABLE bench_samples DROP CONSTRAINT IF EXISTS {name}"))
    for name in ("ix_bench_samples_run_cell_metric", "ix_bench_samples_cell_metric"):
        conn.execute(text(f"DROP INDEX IF EXISTS {name}"))  # constant names
    for index in cast(Table, SampleRow.__table__).indexes:
        index.create(conn, checkfirst=True)
    cast(Table, PointRow.__table__).create(conn, checkfirst=True)
    run_ids = list(conn.scalars(select(RunRow.run_id)))
    for run_id in run_ids:  # one run at a time: memory stays bounded
        rows = conn.execute(select(SampleRow.run_id, SampleRow.cell, SampleRow.metric,
                                   SampleRow.unit, SampleRow.direction, SampleRow.value)
                            .where(SampleRow.run_id == run_id)).all()
        frame = pd.DataFrame([tuple(r) for r in rows],
                             columns=["run_id", "cell", "metric", "unit", "direction", "value"])
        points = point_rows(frame)
        if points:
            conn.execute(insert(PointRow), points)


MIGRATIONS: dict[int, Callable[[Connection], None]] = {2: _to_v2}  # to version N from N - 1


class SchemaTooNew(Exception):
    def __init__(self, found: int) -> None:
        super().__init__(found)
        self.found = found


def stored_version(conn: Connection) -> int | None:
    """The database's schema version: None when it is empty (no bench tables)."""
    tables = set(inspect(conn).get_table_names())
    if "bench_schema" in tables:
        found = conn.scalar(select(SchemaRow.version))
        if found is not None:
            return int(found)
    return 1 if "bench_runs" in tables else None


def migrate(conn: Connection) -> tuple[int | None, int]:
    """Create or upgrade the tables; (version found, version now). Runs in the caller's
    transaction."""
    found = stored_version(conn)
    if found is not None and found > SCHEMA_VERSION:
        raise SchemaTooNew(found)
    if found is None:
        Base.metadata.create_all(conn)
    else:
        for version in range(found + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[version](conn)
        cast(Table, SchemaRow.__table__).create(conn, checkfirst=True)
    conn.execute(cast(Table, SchemaRow.__table__).delete())
    conn.execute(insert(SchemaRow), [{"version": SCHEMA_VERSION}])
    return found, SCHEMA_VERSION
