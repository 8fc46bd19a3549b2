"""Every BENCH_* environment variable, typed and documented in one place.

`settings()` reads the environment each time it is called (tests and `bench config` change it
between calls; a read costs microseconds). `bench config` prints the effective values and where
each came from; README's settings table is generated from the model (bench/core/settings_model.py)
by `bench config --markdown`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.core.settings_model import Settings


_cache: dict[tuple[tuple[str, str], ...], Settings] = {}


def settings() -> Settings:
    """The settings as the environment says now; a bad value is a BenchError naming it.

    Built once per distinct set of BENCH_* variables (building one takes milliseconds)."""
    import os

    from pydantic import ValidationError

    from bench.core.errors import BenchError
    from bench.core.settings_model import PREFIX, Settings

    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.upper().startswith(PREFIX)))
    if key in _cache:
        return _cache[key]
    try:
        _cache[key] = Settings()
        return _cache[key]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = PREFIX + str(first["loc"][0]).upper()
        raise BenchError(f"{name} is invalid: {first['msg']}.",
                         f"fix or unset {name} (`bench config` lists every setting).") from None


def sources() -> dict[str, str]:
    """For each setting: `environment` when a BENCH_* variable set it, else `default`."""
    import os

    from bench.core.settings_model import PREFIX, Settings

    return {name: "environment" if PREFIX + name.upper() in os.environ else "default"
            for name in Settings.model_fields}
