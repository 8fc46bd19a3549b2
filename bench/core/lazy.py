"""Third-party modules imported on first use, so `bench --help` and `bench list` stay fast.

    if TYPE_CHECKING:
        import libvirt
    else:
        libvirt = lazy("libvirt")

The proxy imports the module at its first attribute access (`libvirt.open(...)`,
`except libvirt.libvirtError`), then forwards every access to it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class _LazyModule:
    def __init__(self, name: str) -> None:
        self._lazy_name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._lazy_name)
        return getattr(self._module, attr)

    def __repr__(self) -> str:
        state = "loaded" if self._module is not None else "not loaded yet"
        return f"<lazy module {self._lazy_name!r} ({state})>"


def lazy(name: str) -> Any:
    return _LazyModule(name)
