"""The report's jinja2 environment: templates under bench/report/templates (package data),
autoescaped, undefined names an error. Markup built here (a figure's JSON block, a section
already rendered) is passed as `Markup` and is the only thing not escaped again."""

from __future__ import annotations

import time
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from bench.core.numbers import human


def num(value: float | None) -> str:
    """A number for a table cell (bench.core.numbers), an en dash when missing."""
    return human(value, missing="\u2013")


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
