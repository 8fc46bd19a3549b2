"""The same files in N layers: a file set taken from the bench image, split into N layers of
about equal size, written as deterministic tar archives; and the hash of a file tree, so an
image pulled in 1 or 64 layers can be shown to unpack to the same files.

The file set is the bench image's files in path order up to a size cap, leaving out files
larger than cap / (5 x the most layers asked for): a split at cumulative-size boundaries then
keeps every layer within 20% of size / N (each layer is off by less than its largest file).
It also gets `/.bench-start` (a tiny static program that exits 0, so a container of the set
can start without a shell or libc) and the empty mount points dev, proc, sys and scratch.
"""

from __future__ import annotations

import hashlib
import os
import platform
import stat
import struct
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from bench.core.errors import BenchError

PROBE = ".bench-start"
MOUNT_POINTS = ("dev", "proc", "sys", "scratch")
# paths an engine puts into every container: never part of the set, never hashed
ENGINE_PATHS = (".dockerenv", "etc/hostname", "etc/hosts", "etc/resolv.conf", "etc/mtab")
SKIP_TOP = ("dev", "proc", "sys", "run", "tmp", "boot", "mnt", "media", "scratch")
BALANCE = 5  # largest file <= layer size / BALANCE: each layer within 1/BALANCE of size/N


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the root, "/"-separated, no leading slash
    kind: str  # "dir" | "file" | "symlink"
    mode: int
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    size: int = 0
    target: str = ""  # a symlink's target
    source: str | None = None  # where a file's bytes are on the host
    data: bytes | None = None  # or the bytes themselves

    @property
    def weight(self) -> int:
        """What a layer holding this entry weighs, as an engine counts a layer's size."""
        return self.size if self.kind == "file" else len(self.target)

    def content(self) -> BinaryIO:
        if self.data is not None:
            import io

            return io.BytesIO(self.data)
        assert self.source is not None
        return open(self.source, "rb")


def probe_program(machine: str | None = None) -> bytes:
    """A static ELF executable whose whole job is exit(0): 8 to 12 bytes of code."""
    arch = machine or platform.machine()
    codes = {"x86_64": (62, bytes.fromhex("31ffb83c0000000f05")),  # xor edi; mov eax,60; syscall
             "aarch64": (183, bytes.fromhex("000080d2a80b80d2010000d4"))}  # mov x0,0; x8,93; svc
    if arch not in codes:
        raise BenchError(f"The layer images' start probe has no code for {arch}.",
                         "run the image workload on an x86_64 or aarch64 host.")
    machine_no, code = codes[arch]
    base, header = 0x400000, 64 + 56
    elf = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, 2, machine_no, 1,
                      base + header, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, header + len(code),
                       header + len(code), 0x1000)
    return elf + phdr + code


def select(root: Path, cap_bytes: int, max_layers: int) -> list[Entry]:
    """The file set: the image's entries in path order until their files reach `cap_bytes`."""
    limit = cap_bytes // (BALANCE * max_layers)
    probe = probe_program()
    found = [Entry(PROBE, "file", 0o755, size=len(probe), data=probe)]
    found += [Entry(name, "dir", 0o755) for name in MOUNT_POINTS]
    total = 0
    for entry in _walk(root, root):
        if entry.kind == "file" and entry.size > limit:
            continue
        found.append(entry)
        total += entry.weight
        if total >= cap_bytes:
            break
    if total < cap_bytes * 0.9:
        raise BenchError(f"The bench image at {root} has only {total / 2**20:.1f} MiB of files "
                         f"up to {limit} bytes, less than the {cap_bytes / 2**20:.0f} MiB asked.",
                         "ask for a smaller size_mb (or fewer layers).")
    return sorted(found, key=lambda e: e.path.split("/"))


def _walk(root: Path, top: Path) -> Iterator[Entry]:
    with os.scandir(top) as it:
        items = sorted(it, key=lambda d: d.name)
    for item in items:
        rel = os.path.relpath(item.path, root)
        if rel in ENGINE_PATHS or (top == root and item.name in SKIP_TOP):
            continue
        st = item.stat(follow_symlinks=False)
        mode, owner = stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid, int(st.st_mtime))
        if stat.S_ISDIR(st.st_mode):
            yield Entry(rel, "dir", mode, *owner)
            yield from _walk(root, Path(item.path))
        elif stat.S_ISREG(st.st_mode):
            yield Entry(rel, "file", mode, *owner, size=st.st_size, source=item.path)
        elif stat.S_ISLNK(st.st_mode):
            yield Entry(rel, "symlink", mode, *owner, target=os.readlink(item.path))


def split(entries: list[Entry], n: int) -> list[list[Entry]]:
    """N contiguous runs of the entries, cut where the cumulative weight crosses k x total/N
    (each entry goes to the layer its midpoint falls in). Bottom layer first."""
    total = sum(e.weight for e in entries)
    layers: list[list[Entry]] = [[] for _ in range(n)]
    done = 0
    for entry in entries:
        mid = done + entry.weight / 2
        layers[min(int(mid * n / total), n - 1) if total else 0].append(entry)
        done += entry.weight
    if any(not layer for layer in layers):
        raise BenchError(f"{len(entries)} entries cannot fill {n} layers.",
                         "ask for fewer layers or a larger size_mb.")
    return layers


def _info(entry: Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.path)
    info.mode, info.uid, info.gid, info.mtime = entry.mode, entry.uid, entry.gid, entry.mtime
    info.uname = info.gname = ""
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif entry.kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, entry.target
    else:
        info.size = entry.size
    return info


def write_layer(entries: list[Entry], dirs: dict[str, Entry], out: BinaryIO) -> None:
    """One layer as a tar stream; the parent directories it needs come first (from `dirs`)."""
    written: set[str] = set()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for entry in entries:
            parts = entry.path.split("/")
            for depth in range(1, len(parts)):
                parent = "/".join(parts[:depth])
                if parent not in written and parent in dirs:
                    archive.addfile(_info(dirs[parent]))
                    written.add(parent)
            if entry.path in written:
                continue
            written.add(entry.path)
            if entry.kind == "file":
                with entry.content() as data:
                    archive.addfile(_info(entry), data)
            else:
                archive.addfile(_info(entry))


def _skipped(path: str) -> bool:
    return path in ENGINE_PATHS or path.split("/", 1)[0] in MOUNT_POINTS


class TreeHash:
    """sha256 over (path, kind, mode, uid, gid, content hash or target) of every file and
    symlink, in path order: equal for the same files however they were layered."""

    def __init__(self) -> None:
        self.items: dict[str, str] = {}

    def add(self, path: str, kind: str, mode: int, uid: int, gid: int,
            content: IO[bytes] | None = None, target: str = "") -> None:
        path = path[2:] if path.startswith("./") else path.lstrip("/")
        if _skipped(path):
            return
        digest = hashlib.sha256()
        if content is not None:
            for chunk in iter(lambda: content.read(1 << 20), b""):
                digest.update(chunk)
        self.items[path] = f"{kind} {mode & 0o7777:o} {uid}:{gid} {target} {digest.hexdigest()}"

    def hexdigest(self) -> str:
        digest = hashlib.sha256()
        for path in sorted(self.items):
            digest.update(f"{path}\0{self.items[path]}\n".encode())
        return digest.hexdigest()


def hash_entries(entries: Iterable[Entry]) -> str:
    tree = TreeHash()
    for e in entries:
        if e.kind == "file":
            with e.content() as data:
                tree.add(e.path, "file", e.mode, e.uid, e.gid, data)
        elif e.kind == "symlink":
            tree.add(e.path, "symlink", e.mode, e.uid, e.gid, target=e.target)
    return tree.hexdigest()


def hash_tar_stream(stream: BinaryIO) -> str:
    """The tree hash of a tar stream (a container's export, a squashed layer)."""
    tree = TreeHash()
    with tarfile.open(fileobj=stream, mode="r|*") as archive:
        for member in archive:
            if member.isfile():
                tree.add(member.name, "file", member.mode, member.uid, member.gid,
                         archive.extractfile(member))
            elif member.issym():
                tree.add(member.name, "symlink", member.mode, member.uid, member.gid,
                         target=member.linkname)
    return tree.hexdigest()


def hash_dir(root: Path) -> str:
    """The tree hash of a directory (an overlayfs mount, an unpacked layer)."""
    tree = TreeHash()
    for base, dirs, files in os.walk(root):
        dirs.sort()
        for name in dirs + files:
            path = Path(base) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as data:
                    tree.add(rel, "file", st.st_mode, st.st_uid, st.st_gid, data)
            elif stat.S_ISLNK(st.st_mode):
                tree.add(rel, "symlink", st.st_mode, st.st_uid, st.st_gid,
                         target=os.readlink(path))
    return tree.hexdigest()
