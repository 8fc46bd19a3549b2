"""The report's jinja2 environment: templates under bench/report/templates (package data),
autoescaped, undefined names an error. Markup built here (a figure's JSON block, a section
already rendered) is passed as `Markup` and is the only thing not escaped again."""

from __future__ import annotations

import math
import time
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup


def num(value: float | None) -> str:
    """A number for a table cell: thousands separators when large, 3 significant digits when
    small, a dash when missing."""
    if value is None or math.isnan(value):
        return "\u2013"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def when(stamp: float | None, fmt: str = "%Y-%m-%d %H:%M:%S UTC") -> str:
    return time.strftime(fmt, time.gmtime(stamp)) if stamp else "?"


@cache
def environment() -> Environment:
    env = Environment(loader=PackageLoader("bench.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"], default=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = num
    env.filters["when"] = when
    return env


def render(name: str, **values: Any) -> Markup:
    return Markup(environment().get_template(name).render(**values))  # noqa: S704
