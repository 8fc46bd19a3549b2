"""Where a cache setup is built: this machine, or a guest (commands through its agent).

The recipe steps (stack.py) and the counters speak to a Shell, so the same code builds bcache,
dm-cache and dm-writecache on the host and inside a kvm guest.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from bench.core import procs


class Shell(Protocol):
    def run(self, argv: list[str], timeout: float = 60, check: bool = True) -> str:
        """stdout of argv; CommandError on a non-zero exit when `check`."""

    def read(self, path: str) -> str:
        """A (sysfs) file's text; OSError when it cannot be read."""

    def write(self, path: str, text: str) -> None:
        """Write text into an existing (sysfs) file; OSError when refused."""

    def exists(self, path: str) -> bool: ...

    def realpath(self, path: str) -> str: ...


class LocalShell:
    def run(self, argv: list[str], timeout: float = 60, check: bool = True) -> str:
        return procs.run(argv, check=check, timeout=timeout).stdout

    def read(self, path: str) -> str:
        return Path(path).read_text()

    def write(self, path: str, text: str) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def exists(self, path: str) -> bool:
        return Path(path).exists()

    def realpath(self, path: str) -> str:
        return os.path.realpath(path)
