"""Safe apply, verify and restore of catalogued tunables (after TuneD's save-before-write).

- A write is refused unless the tunable is in the catalog and the value is in its valid range,
  and (without `allow_unsafe`) in its safe range.
- Before the first write of a tunable, its original value (and its counterpart's) goes to the
  fsynced journal. Each write is read back and verified.
- Restore runs in reverse order of first write. A counterpart pair (dirty_bytes/dirty_ratio)
  is restored as one: the member that was active before (non-zero) is written back, which
  makes the kernel zero the other. A final pass re-reads everything and rewrites what drifted
  (a scheduler change resets nr_requests), then the journal is discarded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.tune import journal as journal_mod
from bench.tune.catalog import Catalog, Tunable, TuneError, Value
from bench.tune.journal import Entry, Journal, MemoryJournal
from bench.tune.sysfs import HostFs, Target

Key = tuple[str, str | None]  # (tunable name, device)


def key_text(name: str, device: str | None) -> str:
    return f"{name}[{device}]" if device else name


@dataclass(frozen=True)
class Change:
    name: str
    device: str | None
    before: str
    after: str
    written: bool

    def __str__(self) -> str:
        verb = "set" if self.written else "already"
        return f"{key_text(self.name, self.device)}: {self.before} -> {self.after} ({verb})"


class Tuner:
    def __init__(self, catalog: Catalog, target: Target,
                 journal: MemoryJournal | None = None, allow_unsafe: bool = False) -> None:
        self.catalog = catalog
        self.target = target
        self.journal = journal if journal is not None else MemoryJournal()
        self.allow_unsafe = allow_unsafe

    # -- reading ---------------------------------------------------------------------------
    def available(self, name: str, device: str | None = None) -> str:
        """'' if the tunable can be used here, else why not."""
        tunable = self.catalog.get(name)
        try:
            if self.target.exists(tunable, device):
                return ""
        except TuneError as exc:
            return exc.cause
        where = self.target.label
        if tunable.probe:
            return f"{tunable.path} does not exist on {where}: {tunable.probe_note}"
        thing = f"device {device!r}" if device else "this kernel"
        return f"{key_text(name, device)} does not exist on {where} ({thing})"

    def current(self, name: str, device: str | None = None) -> Value:
        tunable = self.catalog.get(name)
        return tunable.parse(self.target.read(tunable, device))

    def snapshot(self, devices: Iterable[str] = ()) -> dict[str, str]:
        """Every catalogued tunable as found (per-device ones for each device), as text."""
        found: dict[str, str] = {}
        devices = sorted(set(devices))
        for name, tunable in self.catalog.tunables.items():
            for device in (devices if tunable.per_device else [None]):
                label = key_text(name, device)
                why = self.available(name, device)
                if why:
                    found[label] = f"unavailable: {why}"
                    continue
                try:
                    found[label] = tunable.render(self.current(name, device))
                except (TuneError, ValueError) as exc:
                    found[label] = f"unreadable: {exc}"
        return found

    # -- writing ---------------------------------------------------------------------------
    def validate(self, name: str, raw: Any, device: str | None = None) -> Value:
        """The value to write, or TuneError saying why it is refused."""
        tunable = self.catalog.get(name)
        try:
            value = tunable.coerce(raw)
        except ValueError as exc:
            raise TuneError(f"Refused {key_text(name, device)}={raw!r}: {exc}.",
                            "give a value of the catalog's type.") from None
        hard = tunable.check(value, allow_unsafe=True)
        if hard:
            raise TuneError(f"Refused {key_text(name, device)}={raw!r}: {hard} (what the "
                            "kernel accepts).", "give a valid value.")
        soft = tunable.check(value, allow_unsafe=self.allow_unsafe)
        if soft:
            raise TuneError(f"Refused {key_text(name, device)}={raw!r}: {soft}. "
                            f"Risk: {tunable.risk_note or tunable.risk}.",
                            "stay inside the safe range, or pass --allow-unsafe "
                            "(`sweep: allow_unsafe: true` in a scenario) to accept the risk.")
        return value

    def apply(self, name: str, raw: Any, device: str | None = None) -> Change:
        tunable = self.catalog.get(name)
        value = self.validate(name, raw, device)
        why = self.available(name, device)
        if why:
            raise TuneError(f"{key_text(name, device)} is unavailable: {why}.",
                            "leave it out; this host cannot set it.")
        text = self.target.read(tunable, device)
        if tunable.type == "choice" and value not in tunable.offered(text):
            raise TuneError(f"Refused {key_text(name, device)}={value}: {self.target.label} "
                            f"offers only {', '.join(tunable.offered(text))}.",
                            "pick one it offers.")
        before = tunable.parse(text)
        if before == value:
            return Change(name, device, tunable.render(before), tunable.render(value), False)
        self._remember(tunable, device, tunable.render(before), tunable.render(value))
        for side in ([tunable.counterpart] if tunable.counterpart else []) + list(tunable.affects):
            other = self.catalog.get(side)  # a write changes these too: keep their originals
            if not self._journaled(other.name, device) and self.target.exists(other, device):
                self._remember(other, device,
                               other.render(other.parse(self.target.read(other, device))), None)
        self._write_verified(tunable, device, value)
        return Change(name, device, tunable.render(before), tunable.render(value), True)

    def set_state(self, wanted: dict[Key, Any]) -> list[Change]:
        """Make exactly `wanted` differ from the originals: what this session changed before
        and is not wanted now goes back first; then each wanted value is applied (only what
        differs is written)."""
        covered = set(wanted)
        for (name, device) in wanted:
            counterpart = self.catalog.get(name).counterpart
            if counterpart:
                covered.add((counterpart, device))
        stale = [k for k in self._originals() if (k[1], k[2]) not in covered]
        changes: list[Change] = []
        problems = self._restore_keys(stale, changes)
        if problems:
            raise TuneError("Could not put back " + "; ".join(problems) + ".",
                            "run `bench tune restore`.")
        for (name, device), raw in wanted.items():
            changes.append(self.apply(name, raw, device))
        return changes

    def restore_all(self, discard: bool = True) -> list[Change]:
        """Put back every original of this session, verify, then discard the journal."""
        changes: list[Change] = []
        originals = self._originals()
        problems = self._restore_keys(list(originals), changes)
        problems += self._verify_pass(originals, changes)
        if problems:
            where = getattr(self.journal, "path", "memory")
            raise TuneError("Could not restore " + "; ".join(problems) + f" (journal {where} "
                            "kept).", "fix the cause and run `bench tune restore`.")
        if discard:
            self.journal.discard()
        return changes

    # -- internals -------------------------------------------------------------------------
    def _journaled(self, name: str, device: str | None) -> bool:
        return (self.target.key, name, device) in self._originals()

    def _originals(self) -> dict[tuple[str, str, str | None], Entry]:
        """The first entry per tunable of this target, in order of first write."""
        found: dict[tuple[str, str, str | None], Entry] = {}
        for entry in self.journal.entries():
            if entry.target == self.target.key and entry.key not in found:
                found[entry.key] = entry
        return found

    def _remember(self, tunable: Tunable, device: str | None, original: str,
                  written: str | None) -> None:
        if self._journaled(tunable.name, device):
            return
        root = str(self.target.root) if isinstance(self.target, HostFs) else ""
        self.journal.record(Entry(
            session=self.journal.session, seq=self.journal.next_seq(), target=self.target.key,
            root=root, name=tunable.name, device=device, original=original, written=written,
            pid=os.getpid(), ts=journal_mod.now()))

    def _write_verified(self, tunable: Tunable, device: str | None, value: Value) -> None:
        self.target.write(tunable, device, tunable.render(value))
        got = tunable.parse(self.target.read(tunable, device))
        if got != value:
            raise TuneError(f"{key_text(tunable.name, device)}: wrote "
                            f"{tunable.render(value)!r} but it reads back "
                            f"{tunable.render(got)!r} on {self.target.label}.",
                            "use a value the kernel keeps as written (read_ahead_kb is "
                            "rounded to pages: use multiples of 4); `bench tune restore` "
                            "puts the original back.")

    def _restore_keys(self, keys: list[tuple[str, str, str | None]],
                      changes: list[Change]) -> list[str]:
        originals = self._originals()
        wanted = set(keys)
        done: set[tuple[str, str, str | None]] = set()
        problems: list[str] = []
        for key in sorted(wanted, key=lambda k: originals[k].seq, reverse=True):
            if key in done:
                continue
            entry = originals[key]
            tunable = self.catalog.get(entry.name)
            pair_key = (key[0], tunable.counterpart, key[2]) if tunable.counterpart else None
            try:
                if pair_key is not None and pair_key in originals:
                    done.add(pair_key)
                    self._restore_pair(entry, originals[pair_key], changes)
                else:
                    self._restore_one(entry, changes)
            except (TuneError, ValueError) as exc:
                problems.append(f"{key_text(entry.name, entry.device)} to {entry.original} "
                                f"({exc})")
            done.add(key)
        return problems

    def _restore_one(self, entry: Entry, changes: list[Change]) -> None:
        tunable = self.catalog.get(entry.name)
        value = tunable.parse(entry.original)
        now = tunable.parse(self.target.read(tunable, entry.device))
        if now == value:
            return
        self._write_verified(tunable, entry.device, value)
        changes.append(Change(entry.name, entry.device, tunable.render(now), entry.original,
                              True))

    def _restore_pair(self, a: Entry, b: Entry, changes: list[Change]) -> None:
        """Write back the member that was active: the bytes one if it was non-zero, else the
        ratio one (writing either makes the kernel zero the other)."""
        ta = self.catalog.get(a.name)
        bytes_entry, ratio_entry = (a, b) if ta.zero_means_unset else (b, a)
        active = bytes_entry if int(bytes_entry.original) != 0 else ratio_entry
        passive = ratio_entry if active is bytes_entry else bytes_entry
        self._restore_one(active, changes)
        tp = self.catalog.get(passive.name)
        now = tp.render(tp.parse(self.target.read(tp, passive.device)))
        if now != passive.original:
            raise TuneError(f"{passive.name} reads {now} after restoring {active.name}, "
                            f"expected {passive.original}", "")

    def _passive(self, entry: Entry,
                 originals: dict[tuple[str, str, str | None], Entry]) -> bool:
        """Is this the inactive member of a journaled counterpart pair?"""
        tunable = self.catalog.get(entry.name)
        if not tunable.counterpart:
            return False
        other = originals.get((entry.target, tunable.counterpart, entry.device))
        if other is None:
            return False
        bytes_entry = entry if tunable.zero_means_unset else other
        active_is_bytes = int(bytes_entry.original) != 0
        return (entry is bytes_entry) != active_is_bytes

    def _verify_pass(self, originals: dict[tuple[str, str, str | None], Entry],
                     changes: list[Change]) -> list[str]:
        """Re-read everything; rewrite what a later restore changed as a side effect."""
        problems = []
        for entry in sorted(originals.values(), key=lambda e: e.seq):
            if self._passive(entry, originals):
                continue  # it came back through its counterpart's write
            try:
                self._restore_one(entry, changes)
            except (TuneError, ValueError) as exc:
                problems.append(f"{key_text(entry.name, entry.device)} ({exc})")
        return problems


def recover(catalog: Catalog, directory: Path | None = None, include_manual: bool = False,
            log: Callable[[str], None] = lambda _: None,
            target: Callable[[str], Target] = HostFs) -> list[str]:
    """Restore the originals of every leftover journal (its owner is gone), newest first.

    Returns what was restored. A journal of `bench tune apply` is left alone unless
    `include_manual` (it holds settings a person chose to keep until `bench tune restore`).
    """
    restored: list[str] = []
    problems: list[str] = []
    for session in reversed(journal_mod.sessions(directory)):
        if session == journal_mod.MANUAL and not include_manual:
            continue
        try:
            journal = Journal(session, directory)
        except journal_mod.JournalBusy:
            continue  # its owner is alive
        except TuneError as exc:  # unreadable: a person must look, never skipped silently
            problems.append(f"{session}: {exc.cause}")
            continue
        try:
            roots = dict.fromkeys(e.root for e in journal.entries() if e.target.startswith("host:"))
            for root in roots:
                tuner = Tuner(catalog, target(root), journal, allow_unsafe=True)
                for change in tuner.restore_all(discard=False):
                    line = f"{session}: {change}"
                    restored.append(line)
                    log(f"restored {line}")
            stray = [e for e in journal.entries() if not e.target.startswith("host:")]
            if not stray:
                journal.discard()
        except BenchError as exc:
            problems.append(f"{session}: {exc.cause}")
        finally:
            journal.close()
    if problems:
        raise TuneError("Leftover tuning journals could not be restored: "
                        + " | ".join(problems), "fix the cause, then `bench tune restore`.")
    return restored
