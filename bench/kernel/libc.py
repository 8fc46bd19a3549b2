"""The C library, loaded once for the kernel primitives (mount, setns, unshare, ...).

By its glibc soname: ctypes.util.find_library would spawn ldconfig, 150 ms of every start."""

from __future__ import annotations

import ctypes
import ctypes.util


def _load() -> ctypes.CDLL:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


LIBC = _load()
