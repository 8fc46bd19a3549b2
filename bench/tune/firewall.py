"""Firewall rules a run adds to the host (bench's own, and libvirt's for the run's network),
journaled like tunables so that a killed run's rules are removed by `bench cleanup`.

One journal per run and tier (`fw-<tier>-<run>` in the host-settings directory), held open (and
flocked) while the run lives. Every rule bench adds is journaled (fsynced) before it is added;
for rules another program adds on the run's behalf, the words that name them (libvirt's bridge
and subnet) are journaled before that program is asked to act, and the rules themselves once they
exist. A journal whose lock is free belongs to a dead run: `recover` deletes each of its rules
still present (newest first), then every rule naming a watched word, and removes the journal;
while a watched subnet is on a live link again, the journal waits (the rules would be the same).
Rules belong to a network namespace: only a process in the journal's namespace removes them.

Top-level chains a daemon creates for the run (libvirt's LIBVIRT_INP, ...: made on the first
network start of a libvirtd's life, with the jumps to them) are journaled, when absent, before the
daemon is asked to act. They are the daemon's as much as the kernel's: libvirtd creates them once
per process life and adds every later network's rules to them, so deleting them while it runs
makes its next network start fail ("No chain/target/match by that name", seen here). A journaled
chain goes only once it is empty and no process of its keepers runs in this namespace (the next
daemon creates it again); until then the journal stays, and later cleanups look again.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shlex
import socket
import time

from bench.core import procs
from bench.core.errors import CommandError
from bench.tune.catalog import TuneError
from bench.tune.hostnet import netns, settings_dir
from bench.tune.journal import Entry, Journal, JournalBusy

TABLES = ("filter", "nat", "mangle")
WATCH = "watch"
CHAIN = "chain"
BINARIES = ("iptables", "ip6tables")


def iptables(*args: str, binary: str = "iptables") -> None:
    procs.run([binary, "-w", "5", *args], timeout=30)


def _lines(table: str, binary: str = "iptables") -> list[list[str]]:
    try:
        text = procs.run([binary, "-w", "5", "-t", table, "-S"], timeout=30).stdout
    except (CommandError, OSError):
        return []
    return [shlex.split(line) for line in text.splitlines()]


def listing(table: str) -> list[list[str]]:
    """The table's rules as `iptables -S` words, without the leading -A."""
    return [words[1:] for words in _lines(table) if words[:1] == ["-A"]]


class Chain:
    """A top-level chain and the jump to it from a built-in chain (`iptables -S` words)."""

    def __init__(self, binary: str, table: str, parent: str, name: str) -> None:
        self.binary, self.table, self.parent, self.name = binary, table, parent, name

    @classmethod
    def parse(cls, written: str) -> Chain:
        binary, table, parent, name = shlex.split(written)
        if binary not in BINARIES or table not in TABLES:
            raise TuneError(f"Not a journaled chain: {written!r}.", "remove it by hand.")
        return cls(binary, table, parent, name)

    def __str__(self) -> str:
        return shlex.join([self.binary, self.table, self.parent, self.name])

    def state(self) -> tuple[bool, bool]:
        """(exists, has rules of its own)."""
        lines = _lines(self.table, self.binary)
        return (["-N", self.name] in lines,
                any(words[:2] == ["-A", self.name] for words in lines))

    def remove(self) -> None:
        with contextlib.suppress(CommandError):  # the jump may be gone already
            iptables("-t", self.table, "-D", self.parent, "-j", self.name, binary=self.binary)
        iptables("-t", self.table, "-X", self.name, binary=self.binary)


def _keeper_running(names: set[str]) -> int | None:
    """The pid of a process of these names in this network namespace, if one runs."""
    import psutil

    ours = netns()
    for proc in psutil.process_iter(["name"]):
        with contextlib.suppress(psutil.Error, OSError):
            if proc.info["name"] in names and \
                    str(os.stat(f"/proc/{proc.pid}/ns/net").st_ino) == ours:
                return int(proc.pid)
    return None


def _present(table: str, rule: list[str]) -> bool:
    try:
        iptables("-t", table, "-C", *rule)
    except (CommandError, OSError):
        return False
    return True


class RunRules:
    """The rules of one run on one tier: journal first, then the host."""

    def __init__(self, tier: str, run_id: str) -> None:
        self.journal = Journal(f"fw-{tier}-{run_id}", settings_dir())

    def _record(self, name: str, written: str, device: str | None = None) -> None:
        self.journal.record(Entry(session=self.journal.session, seq=self.journal.next_seq(),
                                  target=f"iptables:{netns()}", root="", name=name,
                                  device=device, original="absent", written=written,
                                  pid=os.getpid(), ts=time.time()))

    def add(self, table: str, rule: list[str], insert: bool = False) -> None:
        """`rule` as `iptables -S` prints it: chain first, then the match and target."""
        self._record(table, shlex.join(rule))
        iptables("-t", table, "-I" if insert else "-A", *rule)

    def watch(self, *words: str) -> None:
        """Another program is about to add rules naming these words (a bridge, a subnet)."""
        self._record(WATCH, shlex.join(words))

    def watch_chains(self, chains: list[Chain], keepers: tuple[str, ...]) -> None:
        """A daemon (one of `keepers`) may create these chains now: journal those absent."""
        for chain in chains:
            if not chain.state()[0]:
                self._record(CHAIN, str(chain), " ".join(keepers))

    def adopt(self) -> int:
        """Journal the rules that now name a watched word; how many."""
        words = _watched(self.journal.entries())
        known = {(e.name, e.written) for e in self.journal.entries()}
        count = 0
        for table in TABLES:
            for rule in listing(table):
                if words & set(rule) and (table, shlex.join(rule)) not in known:
                    self._record(table, shlex.join(rule))
                    count += 1
        return count

    def remove(self) -> list[str]:
        """Delete the run's rules; a rule that will not go keeps the journal for `bench
        cleanup`, which reports it."""
        try:
            return _undo(self.journal)[0]
        finally:
            self.journal.close()


def _watched(entries: list[Entry]) -> set[str]:
    return {word for e in entries if e.name == WATCH for word in shlex.split(e.written)}


def _taken(words: set[str]) -> bool:
    """Is a watched subnet on one of the host's links now (another run's network has it)?"""
    import psutil

    nets = []
    for word in words:
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.IPv4Network(word))
    return any(ipaddress.IPv4Address(a.address) in net for net in nets
               for addrs in psutil.net_if_addrs().values() for a in addrs
               if a.family == socket.AF_INET)


def _drop_chains(entries: list[Entry]) -> tuple[list[str], bool]:
    """(removed, kept): journaled chains that are empty and whose keepers are all gone."""
    removed, kept = [], False
    for entry in reversed([e for e in entries if e.name == CHAIN]):
        chain = Chain.parse(entry.written or "")
        exists, used = chain.state()
        if not exists:
            continue
        if used or _keeper_running(set((entry.device or "").split())) is not None:
            kept = True  # another network's rules are in it, or its daemon still expects it
            continue
        with contextlib.suppress(CommandError, OSError):
            chain.remove()
            removed.append(f"{chain.binary} -t {chain.table} -X {chain.name} (and its jump "
                           f"from {chain.parent})")
        kept = kept or chain.state()[0]
    return removed, kept


def _undo(journal: Journal) -> tuple[list[str], list[str]]:
    """(removed, still there): the journal goes only when none of its rules is left (and
    none of its chains, which may wait for their daemon without being an error)."""
    entries = journal.entries()
    if any(e.target != f"iptables:{netns()}" for e in entries):
        return [], []  # another namespace's rules: only a process there can remove them
    words = _watched(entries)
    if _taken(words):
        return [], []  # its subnet is on a live link again: those rules may be its new owner's

    def remaining() -> list[tuple[str, list[str]]]:
        found = [(e.name, shlex.split(e.written or "")) for e in reversed(entries)
                 if e.name in TABLES and _present(e.name, shlex.split(e.written or ""))]
        return found + [(table, rule) for table in (TABLES if words else ())
                        for rule in listing(table) if words & set(rule)
                        and (table, rule) not in found]

    removed = []
    for table, rule in remaining():
        with contextlib.suppress(CommandError, OSError):
            iptables("-t", table, "-D", *rule)
            removed.append(f"iptables -t {table} -D {shlex.join(rule)}")
    left = [f"iptables -t {table} {shlex.join(rule)}" for table, rule in remaining()]
    if left:
        return removed, left
    chains, kept = _drop_chains(entries)
    if not kept:
        journal.discard()
    return removed + chains, left


def recover(tier: str | None, run_id: str | None) -> list[str]:
    """Remove the rules of dead runs (of `run_id` only, if given) of this tier (of any)."""
    directory = settings_dir()
    removed, left = [], []
    for path in sorted(directory.glob(f"journal-fw-{tier or '*'}-{run_id or '*'}.jsonl")):
        try:
            journal = Journal(path.name[len("journal-"):-len(".jsonl")], directory)
        except JournalBusy:
            continue  # its run is alive
        try:
            done, kept = _undo(journal)
        finally:
            journal.close()
        removed += done
        left += kept
    if left:
        raise TuneError(f"Firewall rules of a dead run could not be removed: {'; '.join(left)}",
                        "remove them by hand (`iptables -t TABLE -D ...`), or fix the cause "
                        "and run `bench cleanup` again (their journal is kept).")
    return removed
