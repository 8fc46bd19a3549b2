"""YAML reading through libyaml when PyYAML has it (about 10x faster than the Python loader: the
catalog and the scenarios are parsed on every command that plans)."""

from __future__ import annotations

from typing import Any

import yaml

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    return yaml.load(text, Loader=_LOADER)  # noqa: S506 (a safe loader)
