"""Host settings the isolating tiers change, journaled like tunables: net.ipv4.ip_forward.

The ns tier's bridge and the kvm tier's NAT network need forwarding on. The first user to turn
it on records the value it found in an fsynced journal before writing; each user holds an flock
on a file of its own while it needs forwarding (the kernel drops it when the process dies, even
by SIGKILL). Whoever finds no live user left (the last user on its way out, the next run's
start, `bench cleanup`) writes the original value back and removes the journal. Forwarding is a
setting of each network namespace: the journal is kept per namespace, and only a process in that
namespace restores it (tests run all of this in a throwaway namespace).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from bench.core import safefs
from bench.tune.journal import state_dir

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def _netns() -> str:
    return str(os.stat("/proc/thread-self/ns/net").st_ino)


def _dir() -> Path:
    return safefs.secure_dir(state_dir() / "host-settings", 0o700)


@contextlib.contextmanager
def _locked() -> Iterator[Path]:
    directory = _dir()
    fd = safefs.lock(directory / ".lock", wait=True)
    if fd is None:  # pragma: no cover (wait=True blocks until it has the lock)
        raise RuntimeError("no lock")
    try:
        yield directory
    finally:
        os.close(fd)


def _journal(directory: Path) -> Path:
    return directory / f"ip_forward-{_netns()}.json"


def _users(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"ip_forward-{_netns()}-*.user"))


def _write(value: str) -> None:
    fd = os.open(IP_FORWARD, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


class Forwarding:
    """One user's need for forwarding (a run's bridge or VM network): `enable`, then `release`."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._fd: int | None = None

    def enable(self) -> None:
        with _locked() as directory:
            if self._fd is None:
                user = directory / f"ip_forward-{_netns()}-{self.owner}.user"
                self._fd = safefs.lock(user)
            found = IP_FORWARD.read_text().strip()
            journal = _journal(directory)
            if found != "1" and not journal.exists():
                safefs.create_new(journal, json.dumps({"setting": "net.ipv4.ip_forward",
                                                       "original": found}).encode())
                fd = os.open(journal, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
                dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
                os.fsync(dfd)
                os.close(dfd)
            if found != "1":
                _write("1")

    def release(self) -> list[str]:
        """This user is done; restores the original when no other live user is left."""
        with _locked() as directory:
            user = directory / f"ip_forward-{_netns()}-{self.owner}.user"
            with contextlib.suppress(FileNotFoundError):
                user.unlink()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            return _restore_if_unused(directory)


def _restore_if_unused(directory: Path) -> list[str]:
    for user in _users(directory):
        if safefs.is_locked(user):
            return []  # someone still needs it
        user.unlink(missing_ok=True)  # a dead user's
    journal = _journal(directory)
    try:
        original = json.loads(journal.read_text())["original"]
    except FileNotFoundError:
        return []
    _write(original)
    journal.unlink()
    return [f"net.ipv4.ip_forward restored to {original}"]


def recover() -> list[str]:
    """For the next run's start and `bench cleanup`: restore what dead users left on."""
    with _locked() as directory:
        return _restore_if_unused(directory)
