"""Shared fixtures. Integration tests run real tools as root on the bench image."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.core import image as image_mod
from bench.core.image import Image

DATA = Path(__file__).parent / "data"
# the typical-host lane boots a guest and runs tests inside it: only `tox -e lane` runs it
collect_ignore = [] if os.environ.get("BENCH_LANE") else ["lane"]


def required_parts() -> set[str]:
    """Parts whose absence fails a test instead of skipping it (BENCH_REQUIRE=host,ns,...).

    CI sets it to everything it installs, so a green run cannot hide a part that never ran."""
    return {p.strip() for p in os.environ.get("BENCH_REQUIRE", "").split(",") if p.strip()}


def need(part: str, available: bool, reason: str = "") -> None:
    """Skip the calling test when `part` is missing, or fail it when the part is required."""
    if available:
        return
    message = f"{part} is not available here" + (f": {reason}" if reason else "")
    if part in required_parts():
        pytest.fail(f"required part missing (BENCH_REQUIRE): {message}", pytrace=False)
    pytest.skip(message)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="integration tests need root")
        for item in items:
            if "integration" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def bench_image() -> Image:
    """The bench image, built on first use (about 30 s) and cached by its recipe hash."""
    return image_mod.find() or image_mod.build(log=lambda *_: None)


@pytest.fixture
def results_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each test writes its runs under its own results directory."""
    path = tmp_path / "results"
    path.mkdir()
    monkeypatch.setenv("BENCH_RESULTS_DIR", str(path))
    yield path


def data(name: str) -> str:
    return (DATA / name).read_text()
