"""Where the shipped scenarios and the tuning catalog live: package data of bench (bench/data/
links to the checkout's scenarios/ and tuning/, and wheels carry copies), so an installed bench
finds them without a checkout and never from the current directory."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def data_dir(name: str) -> Path:
    """bench/data/<name> of the installed (or editable) package."""
    return Path(str(resources.files("bench") / "data" / name))
