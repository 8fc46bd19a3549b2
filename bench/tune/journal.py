"""The tuning journal: every original value is on disk (fsynced) before bench writes a tunable.

One journal per session: a run (`journal-<run-id>.jsonl`) or `bench tune apply`
(`journal-manual.jsonl`). A live session holds an flock on its `.lock` file; the kernel drops the
lock when the process dies, even by SIGKILL, so a journal whose lock can be taken is a leftover
whose originals must be restored (at the next run's start, `bench tune restore`, `bench cleanup`).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from pathlib import Path
from typing import IO

from pydantic import BaseModel, ConfigDict

from bench.core.settings import settings
from bench.tune.catalog import TuneError

STATE_ENV = "BENCH_TUNE_STATE_DIR"
MANUAL = "manual"
_SESSION_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def state_dir() -> Path:
    return settings().tune_state_dir


class Entry(BaseModel):
    """The value a tunable had before this session first wrote it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: int = 1
    session: str
    seq: int
    target: str  # Target.key
    root: str  # the procfs/sysfs root of a host target
    name: str
    device: str | None = None
    original: str  # rendered value, ready to write back
    written: str | None = None  # what bench was about to write (None: recorded as counterpart)
    pid: int = 0
    ts: float = 0.0

    @property
    def key(self) -> tuple[str, str, str | None]:
        return (self.target, self.name, self.device)


class MemoryJournal:
    """Originals of a target that dies with its instance (a VM, a container's netns)."""

    def __init__(self, session: str = "memory") -> None:
        self.session = session
        self._entries: list[Entry] = []

    def record(self, entry: Entry) -> None:
        self._entries.append(entry)

    def entries(self) -> list[Entry]:
        return list(self._entries)

    def next_seq(self) -> int:
        return len(self._entries)

    def discard(self) -> None:
        self._entries.clear()

    def close(self) -> None:
        """Nothing to release."""


class JournalBusy(TuneError):
    """Another live process holds this journal."""


class Journal(MemoryJournal):
    """A session's journal file, held open under an exclusive flock while the session lives."""

    def __init__(self, session: str, directory: Path | None = None) -> None:
        if not _SESSION_RE.match(session):
            raise TuneError(f"{session!r} is not a usable journal session name.",
                            "use letters, digits, '.', '_' and '-'.")
        super().__init__(session)
        self.dir = directory or state_dir()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TuneError(f"Cannot create the tuning state directory {self.dir}: "
                            f"{exc.strerror}.", f"make it writable or set {STATE_ENV}.") from None
        self.path = self.dir / f"journal-{session}.jsonl"
        self.lock_path = self.dir / f"journal-{session}.lock"
        self._lock: IO[str] | None = open(self.lock_path, "a")  # noqa: SIM115
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise JournalBusy(f"Another bench process holds the tuning journal {self.path}.",
                              "wait for it to finish (or stop it; its values are restored at "
                              "the next start).") from None
        try:
            self._entries = _read(self.path)
        except TuneError:
            self.close()
            raise

    def record(self, entry: Entry) -> None:
        """Append and fsync (and fsync the directory when the file is new) before any write."""
        new = not self.path.exists()
        line = json.dumps(entry.model_dump(mode="json"), sort_keys=True) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        if new:
            _fsync_dir(self.dir)
        super().record(entry)

    def discard(self) -> None:
        """Everything is restored: the journal goes."""
        super().discard()
        if self.path.exists():
            self.path.unlink()
            _fsync_dir(self.dir)

    def close(self) -> None:
        if self._lock is not None:
            if not self.path.exists():
                self.lock_path.unlink(missing_ok=True)
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None


def _read(path: Path) -> list[Entry]:
    if not path.exists():
        return []
    found = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            found.append(Entry.model_validate_json(line))
        except ValueError:
            if number == len(lines):
                break  # torn last line: the write it announced never started
            raise TuneError(f"{path}:{number} is not a journal entry.",
                            "restore the values it lists by hand, then delete the file."
                            ) from None
    return found


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sessions(directory: Path | None = None) -> list[str]:
    """Sessions with a journal on disk, oldest first."""
    base = directory or state_dir()
    if not base.is_dir():
        return []
    files = sorted(base.glob("journal-*.jsonl"), key=lambda p: p.stat().st_mtime)
    return [p.name[len("journal-"):-len(".jsonl")] for p in files]


def is_live(session: str, directory: Path | None = None) -> bool:
    """Does a running process hold this session's lock?"""
    lock_path = (directory or state_dir()) / f"journal-{session}.lock"
    if not lock_path.exists():
        return False
    with open(lock_path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def remove_dead_locks(session: str | None = None, directory: Path | None = None) -> list[str]:
    """Lock files of run sessions that are gone and left no journal (a run killed before it
    wrote a tunable); `recover` only visits sessions with a journal."""
    base = directory or state_dir()
    if not base.is_dir():
        return []
    removed = []
    for lock in sorted(base.glob(f"journal-{session or '*'}.lock")):
        name = lock.name[len("journal-"):-len(".lock")]
        if name != MANUAL and not (base / f"journal-{name}.jsonl").exists() \
                and not is_live(name, base):
            lock.unlink(missing_ok=True)
            removed.append(lock.name)
    return removed


def live_sessions(directory: Path | None = None) -> list[str]:
    base = directory or state_dir()
    if not base.is_dir():
        return []
    names = [p.name[len("journal-"):-len(".lock")] for p in base.glob("journal-*.lock")]
    return [n for n in names if is_live(n, base)]


def now() -> float:
    return time.time()
