"""How bench writes a number for people (summary, compare, report): thousands separators when
large, 3 significant digits when small, a dash when it is missing."""

from __future__ import annotations

import math

MISSING = "-"


def human(value: float | None, missing: str = MISSING) -> str:
    if value is None or math.isnan(value):
        return missing
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"
