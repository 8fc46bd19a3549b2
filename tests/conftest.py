"""Shared fixtures. Integration tests run real tools as root on the bench image."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.core import image as image_mod
from bench.core.image import Image

DATA = Path(__file__).parent / "data"


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
