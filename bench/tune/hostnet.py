"""Host sysctls the isolating tiers change (net.ipv4.ip_forward), journaled like tunables.

The ns tier's bridge and the kvm tier's NAT network need forwarding on. The first user to change
a setting records the value it found in the tuning journal format (bench/tune/journal.py, fsynced
before the write); each user holds an flock on a file of its own while it needs the settings
(the kernel drops it when the process dies, even by SIGKILL). Whoever finds no live user left
(the last user on its way out, the next run's start, `bench cleanup`) writes the originals back
and removes the journal, unless the value is no longer the one bench wrote: another user changed
it since, and it is left as they set it (and said so). These settings belong to a network
namespace: the journal and the users are kept per namespace, and only a process in that namespace
restores them (tests run in a throwaway namespace, or under a fake procfs root,
BENCH_SYSFS_ROOT).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from bench.core import safefs
from bench.core.settings import settings
from bench.tune.catalog import ALLOWED_RESOLVED, TuneError
from bench.tune.journal import Entry, Journal, state_dir

IP_FORWARD = "net.ipv4.ip_forward"


def netns() -> str:
    return str(os.stat("/proc/thread-self/ns/net").st_ino)


def settings_dir() -> Path:
    """Journals of host settings (shared sysctls, firewall rules): not the tunables' journals,
    which `bench tune restore` would put back regardless of live users."""
    return safefs.secure_dir(state_dir() / "host-settings", 0o700)


@contextlib.contextmanager
def _locked() -> Iterator[Path]:
    directory = settings_dir()
    fd = safefs.lock(directory / ".lock", wait=True)
    if fd is None:  # pragma: no cover (wait=True blocks until it has the lock)
        raise RuntimeError("no lock")
    try:
        yield directory
    finally:
        os.close(fd)


def sysctl_path(name: str, root: Path | None = None) -> Path:
    """The file of a sysctl under the procfs root, refused unless it is (after symlinks) one of
    the paths the tunables catalog may write."""
    base = Path(os.path.realpath(root or settings().sysfs_root))
    logical = "/proc/sys/" + name.replace(".", "/")
    real = Path(os.path.realpath(base / logical.lstrip("/")))
    if not real.is_relative_to(base) or not ALLOWED_RESOLVED.match(
            "/" + str(real.relative_to(base))):
        raise TuneError(f"{name} resolves to {real}, outside the subtrees bench may write.",
                        f"check the symlinks under the procfs root ({base}).")
    return real


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _session() -> str:
    return f"sysctl-{netns()}"


class HostSysctls:
    """One user's need for host sysctls (a run's bridge or VM network): `set`, then `release`."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._fd: int | None = None

    def _user(self, directory: Path) -> Path:
        return directory / f"{netns()}-{self.owner}.user"

    def set(self, name: str, value: str) -> None:
        with _locked() as directory:
            if self._fd is None:
                self._fd = safefs.lock(self._user(directory))
                if self._fd is None:
                    raise TuneError(f"Another process already holds host settings as "
                                    f"{self.owner!r}.", "use one owner name per run.")
            path = sysctl_path(name)
            found = path.read_text().strip()
            if found == value:
                return
            journal = Journal(_session(), directory)
            try:
                if not any(e.name == name for e in journal.entries()):
                    root = str(settings().sysfs_root)
                    journal.record(Entry(session=journal.session, seq=journal.next_seq(),
                                         target=f"host:{root}", root=root, name=name,
                                         original=found, written=value, pid=os.getpid(),
                                         ts=time.time()))
            finally:
                journal.close()
            _write(path, value)

    def release(self) -> list[str]:
        """This user is done; restores the originals when no other live user is left."""
        with _locked() as directory:
            self._user(directory).unlink(missing_ok=True)
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            return _restore_if_unused(directory)


class Forwarding(HostSysctls):
    """net.ipv4.ip_forward on for as long as this user needs it."""

    def enable(self) -> None:
        self.set(IP_FORWARD, "1")


def _restore_if_unused(directory: Path) -> list[str]:
    for user in sorted(directory.glob(f"{netns()}-*.user")):
        if safefs.is_locked(user):
            return []  # someone still needs them
        user.unlink(missing_ok=True)  # a dead user's
    session = _session()
    if not (directory / f"journal-{session}.jsonl").exists():
        return []
    journal = Journal(session, directory)
    try:
        done = []
        for entry in reversed(journal.entries()):
            path = sysctl_path(entry.name, Path(entry.root))
            now = path.read_text().strip()
            if entry.written is not None and now != entry.written:
                # someone else changed it after bench: theirs to keep, not ours to restore (said
                # on stderr: a run's teardown has no other voice)
                print(f"bench: {entry.name} left at {now}, not restored to {entry.original}: "
                      f"another user changed it after bench set it to {entry.written}.",
                      file=sys.stderr)
                continue
            _write(path, entry.original)
            done.append(f"{entry.name} restored to {entry.original}")
        journal.discard()
    finally:
        journal.close()
    return done


def recover() -> list[str]:
    """For the next run's start and `bench cleanup`: restore what dead users left changed."""
    with _locked() as directory:
        return _restore_if_unused(directory)
