"""Files and directories that root makes in shared, world-writable places (/var/tmp, /run/lock).

Anyone can plant a symlink, a hard link or a directory of their own there before bench runs.
Every helper here opens with O_NOFOLLOW, creates with fixed modes, and checks what it got with
fstat (type, owner, mode, link count) before using it, so a planted name makes bench refuse
with a clear error instead of truncating, chmod-ing or deleting something else. A directory
bench may remove later carries bench's marker file; nothing without it is ever removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import stat
from pathlib import Path

from bench.core.errors import BenchError

MARKER = ".bench-owned"
DIR_MODE = 0o755
FILE_MODE = 0o644


class UnsafePath(BenchError):
    """A path in a shared directory is not what bench made (symlink, foreign owner, ...)."""


def _refuse(path: Path | str, what: str) -> UnsafePath:
    return UnsafePath(
        f"{path} {what}; bench runs as root and refuses to use it (someone may have planted it "
        "to make bench overwrite or delete another file).",
        f"inspect it, remove it by hand if it is not yours (`ls -la {path}`), and run again.")


def _check(st: os.stat_result, path: Path | str, kind: int) -> None:
    if stat.S_IFMT(st.st_mode) != kind:
        raise _refuse(path, "is not a " + ("directory" if kind == stat.S_IFDIR
                                             else "regular file"))
    if st.st_uid != os.geteuid():
        raise _refuse(path, f"belongs to uid {st.st_uid}, not to {os.geteuid()}")
    if st.st_mode & 0o022:
        raise _refuse(path, f"is writable by others (mode {stat.S_IMODE(st.st_mode):o})")
    if kind == stat.S_IFREG and st.st_nlink != 1:
        raise _refuse(path, f"has {st.st_nlink} hard links")


def secure_dir(path: Path | str, mode: int = DIR_MODE) -> Path:
    """Make `path` (and missing parents) as a directory of ours with `mode`; an existing one
    must be a real directory (not a symlink) owned by us and not writable by others."""
    path = Path(path)
    if not path.parent.exists():
        secure_dir(path.parent, mode)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, mode)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _refuse(path, "is a symlink or not a directory") from None
        raise
    try:
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o022 == 0 \
                and stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)  # ours already: only the mode differs (umask)
            st = os.fstat(fd)
        _check(st, path, stat.S_IFDIR)
    finally:
        os.close(fd)
    return path


def open_file(path: Path | str, mode: int = FILE_MODE) -> int:
    """Open (creating with `mode`) a regular file of ours for reading and writing, never
    through a symlink, a hard link or a file someone else owns. The caller closes the fd."""
    fd = -1
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(path, "is a symlink") from None
        raise
    try:
        _check(os.fstat(fd), path, stat.S_IFREG)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_new(path: Path | str, data: bytes, mode: int = 0o600) -> None:
    """Write a file that must not exist yet (O_EXCL: never an existing file or a link)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def lock(path: Path | str, wait: bool = False) -> int | None:
    """An flock on a safely opened file: its fd, or None if another process holds it."""
    fd = open_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def is_locked(path: Path | str) -> bool:
    """Does a live process hold the flock on `path` (a missing or unsafe file: no)?"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def mark(directory: Path | str, owner: str) -> None:
    """Put bench's marker in a directory bench made (secure_dir), naming what it belongs to."""
    with contextlib.suppress(FileExistsError):
        create_new(Path(directory) / MARKER, owner.encode(), FILE_MODE)


def marked(directory: Path | str) -> str | None:
    """Who a directory belongs to, if it is a real directory of ours with bench's marker
    (a regular file of ours): else None, and bench must not remove it."""
    try:
        st = os.lstat(directory)
        _check(st, directory, stat.S_IFDIR)
        fd = os.open(Path(directory) / MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (OSError, UnsafePath):
        return None
    try:
        _check(os.fstat(fd), directory, stat.S_IFREG)
        return os.read(fd, 4096).decode(errors="replace")
    except UnsafePath:
        return None
    finally:
        os.close(fd)


def remove_marked(directory: Path | str) -> bool:
    """Remove a directory tree only if it carries bench's marker; rmtree works on directory
    descriptors here (no symlink inside is followed). True if it was removed."""
    if marked(directory) is None:
        return False
    if not shutil.rmtree.avoids_symlink_attacks:  # pragma: no cover (Linux has it)
        raise _refuse(directory, "cannot be removed safely on this platform")
    shutil.rmtree(directory, ignore_errors=True)
    return not os.path.lexists(directory)


_SYS_OPENAT2 = 437  # the same number on every architecture (a new-style syscall)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def read_in_root(root: Path | str, path: str) -> bytes:
    """Read `path` as a process chrooted at `root` would see it: `..` and every symlink (absolute
    ones too) resolve inside `root` (openat2 RESOLVE_IN_ROOT), so what an instance planted in
    its own tree cannot lead root to a file of the host."""
    libc = ctypes.CDLL(None, use_errno=True)
    dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        how = _OpenHow(os.O_RDONLY | os.O_CLOEXEC, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
        fd = libc.syscall(_SYS_OPENAT2, dirfd, os.fsencode(path.lstrip("/") or "."),
                          ctypes.byref(how), ctypes.sizeof(how))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{os.strerror(err)}: {path} inside {root}")
    finally:
        os.close(dirfd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{path} inside {root} is not a regular file")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
