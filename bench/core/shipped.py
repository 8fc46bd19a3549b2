"""Where the shipped scenarios and the tuning catalog live: package data of bench (bench/data/
links to the checkout's scenarios/ and tuning/, and wheels carry copies), so an installed bench
finds them without a checkout and never from the current directory."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path


def data_dir(name: str) -> Path:
    """bench/data/<name> of the installed (or editable) package."""
    return Path(str(resources.files("bench") / "data" / name))


def scenario_dir() -> Path:
    """BENCH_SCENARIO_DIR, else the shipped scenarios. The settings are built only when that
    variable is set: pydantic-settings takes ~100 ms to import, and `bench list` must answer
    at once."""
    if any(key.upper() == "BENCH_SCENARIO_DIR" for key in os.environ):
        from bench.core.settings import settings

        configured = settings().scenario_dir
        if configured is not None:
            return configured
    return data_dir("scenarios")
