"""Shared fixtures. Integration tests run real tools as root on the bench image."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.core import image as image_mod
from bench.core.image import Image

# the required-parts switch (need, BENCH_REQUIRE) and the per-part counts are hooks of tests.parts
from tests.parts import (  # noqa: F401
    need,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_runtest_logreport,
    pytest_runtest_setup,
    pytest_sessionfinish,
    pytest_terminal_summary,
    required_parts,
)

DATA = Path(__file__).parent / "data"
# the typical-host lane boots a guest and runs tests inside it: only `tox -e lane` runs it
collect_ignore = [] if os.environ.get("BENCH_LANE") else ["lane"]


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
