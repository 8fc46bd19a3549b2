"""History on SQLite: ingest, list, trends with change points at the right run, the nightly
check's exit status, the round trip of a run through the database, and the published site."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from bench.analysis import frame, history
from bench.analysis.columnar import META_COLUMNS
from bench.cli.main import main
from bench.report import publish
from tests import synthetic
from tests.parts import need

from . import browser

DAY = 86400.0
SHIFT_AT = 14
NIGHTS = 20


def nightly(root: Path, nights: int = NIGHTS, shift_at: int | None = SHIFT_AT,
            shift: float = 1.10) -> list[Path]:
    """One run per night; from night `shift_at` on, every cost is `shift` times higher."""
    paths = []
    for night in range(nights):
        slower = shift if shift_at is not None and night >= shift_at else 1.0
        paths.append(synthetic.write_run(root, synthetic.Spec(
            f"2026{night // 28 + 1:02d}{night % 28 + 1:02d}-020000-nightly-{night:02d}",
            tiers=("host", "docker"), repetitions=5, noise=0.01, seed=night,
            started_at=1_790_000_000 + night * DAY, shift=slower, sweep=False)))
    return paths


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[Path]]:
    root = tmp_path_factory.mktemp("history")
    paths = nightly(root / "results")
    url = f"sqlite:///{root / 'history.db'}"
    engine = history.connect(url)
    for path in paths:
        history.ingest_path(engine, path)
    return url, paths


def test_change_point_at_the_night_of_the_shift(stored: tuple[str, list[Path]]) -> None:
    url, _ = stored
    engine = history.connect(url)
    assert len(history.runs(engine)) == NIGHTS
    found = history.series(history.points(engine))
    assert len(found) > 10
    for s in found:
        assert len(s.points) == NIGHTS
        assert [c.index for c in s.changes] == [SHIFT_AT], (s.name, s.changes)
        (change,) = s.changes
        assert s.bad(change) == pytest.approx(0.10, abs=0.03)
        assert str(s.points["run_id"].iloc[SHIFT_AT]).endswith(f"nightly-{SHIFT_AT:02d}")


@pytest.mark.parametrize("without", [None, "cpu.sysbench"])
def test_headline_points_are_the_headline_rows_of_all_points(
        stored: tuple[str, list[Path]], without: str | None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Filtered in the database first, then exactly; a workload without headline metrics
    (`without`) keeps all of its metrics."""
    original = dict(history.HEADLINE)
    headlines = {w: ms for w, ms in original.items() if w != without}
    monkeypatch.setattr(history, "HEADLINE", headlines)
    engine = history.connect(stored[0])
    everything = history.points(engine, all_metrics=True)
    wanted = everything[[m in headlines.get(w, (m,)) for w, m in
                         zip(everything["workload"], everything["metric"], strict=True)]]
    headline = history.points(engine)
    assert 0 < len(headline) < len(everything) or without
    assert headline.astype(str).equals(wanted.reset_index(drop=True).astype(str))
    if without:
        kept = set(headline.loc[headline["workload"] == without, "metric"])
        assert len(kept) > len(original[without])


def test_trend_json_carries_each_series_points_in_order(stored: tuple[str, list[Path]]) -> None:
    url, _ = stored
    done = CliRunner().invoke(main, ["history", "trend", "--db", url, "--format", "json"])
    assert done.exit_code == 0, done.output
    found = {(s.tier, s.label, s.metric): s for s in history.series(
        history.points(history.connect(url)))}
    listed = json.loads(done.output)
    assert len(listed) == len(found)
    for entry in listed:
        points = found[entry["tier"], entry["cell"], entry["metric"]].points
        assert [p["run_id"] for p in entry["points"]] == points["run_id"].tolist()
        assert [p["median"] for p in entry["points"]] == points["median"].tolist()
        assert [c["run_id"] for c in entry["change_points"]] == [
            points["run_id"].iloc[SHIFT_AT]]


def test_check_alarms_only_while_the_shift_is_recent(stored: tuple[str, list[Path]]) -> None:
    url, _ = stored
    engine = history.connect(url)
    found = history.series(history.points(engine))
    recent = history.check(found, window=NIGHTS - SHIFT_AT, threshold=0.05)
    assert len(recent) == len(found)
    assert {a.run_id[-10:] for a in recent} == {f"nightly-{SHIFT_AT:02d}"}
    assert history.check(found, window=2, threshold=0.05) == []  # old news by now
    assert history.check(found, window=NIGHTS, threshold=0.2) == []  # below the threshold


def test_no_alarm_without_a_shift(tmp_path: Path) -> None:
    engine = history.connect(f"sqlite:///{tmp_path / 'h.db'}")
    for path in nightly(tmp_path / "results", nights=16, shift_at=None):
        history.ingest_path(engine, path)
    found = history.series(history.points(engine))
    assert found and all(s.changes == [] for s in found)
    assert history.check(found, window=16) == []


def test_a_faster_run_is_a_change_but_not_an_alarm(tmp_path: Path) -> None:
    engine = history.connect(f"sqlite:///{tmp_path / 'h.db'}")
    for path in nightly(tmp_path / "results", nights=12, shift_at=8, shift=0.85):
        history.ingest_path(engine, path)
    found = history.series(history.points(engine))
    assert all([c.index for c in s.changes] == [8] for s in found)
    assert history.check(found, window=12) == []


def test_a_run_round_trips_through_the_database(stored: tuple[str, list[Path]]) -> None:
    url, paths = stored
    engine = history.connect(url)
    original = frame.load(paths[3])
    again = history.load(engine, original.run_id)
    assert again.manifest == original.manifest
    columns = ["cell", "tier", "label", "metric", "repetition", "value", "direction"]
    a = original.frame[columns].astype(str).sort_values(columns).reset_index(drop=True)
    b = again.frame[columns].astype(str).sort_values(columns).reset_index(drop=True)
    assert a.equals(b)
    phases = again.frame["meta.phases_ms"].dropna()
    assert len(phases) and isinstance(phases.iloc[0], dict)
    assert set(again.frame.columns) >= {"param.threads", "param.instances"}
    # re-ingesting replaces the run instead of doubling it
    done = history.ingest(engine, original)
    assert done.replaced
    assert len(history.load(engine, original.run_id).frame) == len(original.frame)


def expected_samples(run: frame.Run) -> list[tuple[object, ...]]:
    """The bench_samples rows of a run, built row by row from its frame (the reference)."""
    rows = []
    for _, r in run.frame.iterrows():
        meta = {m: r[f"meta.{m}"] for m in META_COLUMNS
                if f"meta.{m}" in r and r[f"meta.{m}"] is not None
                and not (isinstance(r[f"meta.{m}"], float) and np.isnan(r[f"meta.{m}"]))}
        rows.append((str(r["run_id"]), str(r["cell"]), str(r["metric"]), int(r["repetition"]),
                     float(r["value"]), str(r["unit"]), str(r["direction"]),
                     float(r["timestamp"]), json.dumps(meta, sort_keys=True) if meta else None))
    return rows


def stored_samples(engine: Any, run_id: str) -> list[tuple[object, ...]]:
    import sqlalchemy as sa

    from bench.analysis.history_schema import SampleRow

    columns = [getattr(SampleRow, name) for name in history.SAMPLE_COLUMNS]
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            sa.select(*columns).where(SampleRow.run_id == run_id).order_by(SampleRow.id))]


def test_the_bulk_insert_stores_every_sample_as_it_is(stored: tuple[str, list[Path]],
                                                       tmp_path: Path) -> None:
    """Every sample, value for value and in order, with the types the reference gives; also
    a run whose length is not a whole number of SQLite batches, and one shorter than one."""
    url, paths = stored
    engine = history.connect(url)
    original = frame.load(paths[3])
    assert original.frame["meta.phases_ms"].notna().any()
    assert stored_samples(engine, original.run_id) == expected_samples(original)
    small = history.connect(f"sqlite:///{tmp_path / 'small.db'}")
    longer = pd.concat([original.frame] * 4, ignore_index=True)  # 4 x 120 samples
    for n in (history.SQLITE_BATCH * 3 + 7, history.SQLITE_BATCH - 1):
        part = dataclasses.replace(original, run_id=f"part-{n}",
                                   frame=longer.iloc[:n].assign(run_id=f"part-{n}"))
        history.ingest(small, part)
        found = stored_samples(small, part.run_id)
        assert len(found) == n and found == expected_samples(part)
    with small.connect() as conn:
        types = conn.exec_driver_sql("SELECT DISTINCT typeof(repetition), typeof(value), "
                                     "typeof(timestamp) FROM bench_samples").all()
    assert [tuple(t) for t in types] == [("integer", "real", "real")]


def test_cli_ingest_list_trend_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = nightly(tmp_path / "results", nights=10, shift_at=6)
    monkeypatch.setenv("BENCH_HISTORY_URL", f"sqlite:///{tmp_path / 'env.db'}")
    runner = CliRunner()
    result = runner.invoke(main, ["history", "ingest", *map(str, paths)])
    assert result.exit_code == 0, result.output
    assert result.output.count("ingested") == 10
    result = runner.invoke(main, ["history", "list"])
    assert result.exit_code == 0 and "nightly-09" in result.output
    result = runner.invoke(main, ["history", "trend", "--tier", "host", "--format", "json"])
    data = json.loads(result.output)
    assert data and all(s["tier"] == "host" for s in data)
    assert all([c["index"] for c in s["change_points"]] == [6] for s in data)
    result = runner.invoke(main, ["history", "check", "--window", "5"])
    assert result.exit_code == 1 and "SLOWER" in result.output
    result = runner.invoke(main, ["history", "check", "--window", "2"])
    assert result.exit_code == 0, result.output
    # --db wins over the environment; a new database is empty
    other = f"sqlite:///{tmp_path / 'other.db'}"
    result = runner.invoke(main, ["history", "check", "--db", other, "--format", "json"])
    assert result.exit_code == 0 and json.loads(result.output)["series"] == 0
    result = runner.invoke(main, ["history", "list", "--db", "nosuchdriver://x"])
    assert result.exit_code == 2 and "Cannot open the history database" in result.output


def test_published_site(stored: tuple[str, list[Path]], tmp_path: Path) -> None:
    url, paths = stored
    engine = history.connect(url)
    site = tmp_path / "site"
    done = publish.publish(engine, site, window=NIGHTS)
    assert done.runs == NIGHTS and done.reports_written == NIGHTS
    index = (site / "index.html").read_text()
    assert (site / "plotly.min.js").stat().st_size > 1_000_000
    assert "* plotly.js v" not in index  # shared, not embedded in every page
    for path in paths:
        name = publish.page_name(path.name)
        assert f'href="runs/{name}"' in index
        assert (site / "runs" / name).exists()
    assert "first run after the shift" in index  # the alarm table
    again = publish.publish(engine, site)
    assert again.reports_written == 0 and again.reports_kept == NIGHTS
    if Path(browser.CHROMIUM).exists() or os.environ.get("CI"):
        page = browser.render(site / "index.html", {
            "drawn": "document.body.getAttribute('data-figures-drawn')",
            "plots": "document.querySelectorAll('.js-plotly-plot').length"})
        assert page.errors == [] and page.values["drawn"] == "yes"
        assert page.values["plots"] >= 5


def test_page_names_are_safe() -> None:
    assert publish.page_name("20260101-quick-ab12") == "20260101-quick-ab12.html"
    odd = publish.page_name("../../etc/passwd<x>")
    assert "/" not in odd and "<" not in odd and odd.endswith(".html")
    assert publish.page_name("a/b") != publish.page_name("a_b")


def test_synthetic_nightly_medians_are_what_was_constructed(tmp_path: Path) -> None:
    paths = nightly(tmp_path / "results", nights=2, shift_at=1, shift=1.5)
    a, b = (frame.load(p).frame for p in paths)
    pick = (a["tier"] == "host") & (a["metric"] == "events_per_s") & (a["param.threads"] == 1)
    pick_b = (b["tier"] == "host") & (b["metric"] == "events_per_s") & (b["param.threads"] == 1)
    ratio = np.median(b.loc[pick_b, "value"]) / np.median(a.loc[pick, "value"])
    assert ratio == pytest.approx(1 / 1.5, rel=0.03)


# -- PostgreSQL: the same history on a real server (a throwaway cluster on a unix socket) -------

@pytest.fixture
def postgres_url() -> Iterator[str]:
    from tests import pgserver

    why = pgserver.missing()
    need("root" if why and why.startswith("not root") else "postgres", why is None, why or "")
    with pgserver.server() as url:
        yield url


@pytest.mark.part("postgres")
def test_the_same_history_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    engine = history.connect(postgres_url)
    assert engine.dialect.name == "postgresql"
    paths = nightly(tmp_path / "results", nights=8, shift_at=5)
    for path in paths:
        history.ingest_path(engine, path)
    history.ingest_path(engine, paths[0])  # replaces
    assert len(history.runs(engine)) == 8
    found = history.series(history.points(engine))
    assert found and all([c.index for c in s.changes] == [5] for s in found)
    original = frame.load(paths[2])
    again = history.load(engine, original.run_id)
    assert len(again.frame) == len(original.frame)
    assert sorted(again.frame["value"]) == sorted(original.frame["value"])
    assert stored_samples(engine, original.run_id) == expected_samples(original)
    done = publish.publish(engine, tmp_path / "site")
    assert done.runs == 8 and (tmp_path / "site" / "index.html").exists()
    engine.dispose()


# -- schema versions: an older database is migrated in place, a newer one refused -------------

def test_a_v1_database_is_migrated_and_keeps_its_runs(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from bench.analysis import history_schema

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = history.connect(url)
    for path in nightly(tmp_path / "results", nights=6, shift_at=4):
        history.ingest_path(engine, path)
    before = history.points(engine)
    # back to the v1 layout: no version table, no points, v1's indexes
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE bench_points")
        conn.exec_driver_sql("DROP TABLE bench_schema")
        conn.exec_driver_sql("DROP INDEX ix_bench_samples_run")
        conn.exec_driver_sql("CREATE INDEX ix_bench_samples_run_cell_metric "
                             "ON bench_samples (run_id, cell, metric)")
        conn.exec_driver_sql("CREATE INDEX ix_bench_samples_cell_metric "
                             "ON bench_samples (cell, metric)")
        assert history_schema.stored_version(conn) == 1
    engine.dispose()
    engine = history.connect(url)
    with engine.connect() as conn:
        assert history_schema.stored_version(conn) == history_schema.SCHEMA_VERSION
        indexes = {i["name"] for i in sa.inspect(conn).get_indexes("bench_samples")}
    assert indexes == {"ix_bench_samples_run"}
    assert len(history.runs(engine)) == 6
    after = history.points(engine)
    assert after.drop(columns="n").equals(before.drop(columns="n"))
    assert all([c.index for c in s.changes] == [4] for s in history.series(after))


def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    engine = history.connect(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE bench_schema SET version = 99")
    with pytest.raises(history.HistoryError, match="schema version 99, newer than this bench"):
        history.connect(url)


def test_metadata_of_a_real_run_round_trips(tmp_path: Path) -> None:
    """The captured quick run's metadata (page cache, network path, scratch fs) comes back."""
    import shutil

    run = tmp_path / "20261127-184307-quick-1af3"
    run.mkdir()
    shutil.copy(Path(__file__).parent / "data" / "samples-v1.jsonl", run / "samples.jsonl")
    (run / "manifest.json").write_text(json.dumps({"run_id": run.name, "tiers": ["host"]}))
    engine = history.connect(f"sqlite:///{tmp_path / 'h.db'}")
    original = frame.load(run)
    history.ingest(engine, original)
    again = history.load(engine, run.name)
    for name in ("meta.page_cache", "meta.network_path", "meta.scratch_fs"):
        assert again.frame[name].tolist() == original.frame[name].tolist(), name
    assert original.frame["meta.page_cache"].notna().any()


def test_dense_and_pruned_change_point_searches_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short series (a nightly history) take the dense recursion; longer ones PELT's pruning."""
    from bench.analysis import changepoint

    rng = np.random.default_rng(3)
    for trial in range(200):
        n = int(rng.integers(4, 120))
        x = rng.normal(0, 1, n) + (trial % 2) * np.repeat(rng.normal(0, 3, 4), n)[:n]
        min_size = int(rng.integers(1, 4))
        penalty = 3 * float(np.log(n))
        dense = changepoint.pelt(x, penalty, 1.0, min_size)
        with monkeypatch.context() as patch:
            patch.setattr(changepoint, "DENSE_MAX", 0)
            assert changepoint.pelt(x, penalty, 1.0, min_size) == dense
