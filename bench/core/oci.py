"""Image blobs a registry serves (Docker image manifest v2, schema 2) and layer squashing.

A layer is a gzipped tar; its blob digest is the sha256 of the gzip stream, its diff id the
sha256 of the tar inside. Everything is deterministic (gzip mtime 0, no file name), so the same
files in the same split always give the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import platform
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
EPOCH = "1970-01-01T00:00:00Z"
GZIP_LEVEL = 6  # gzip's default, as `docker push` compresses


class _Hashing:
    """A write-only file that hashes and counts what passes through to `out`."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)

    def flush(self) -> None:
        self.out.flush()

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha.hexdigest()}"


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    path: Path
    diff_id: str = ""  # layers: the digest of the uncompressed tar
    diff_size: int = 0


@dataclass
class BuiltImage:
    layers: list[Blob]
    config: bytes
    manifest: bytes = field(init=False)

    def __post_init__(self) -> None:
        config = hashlib.sha256(self.config).hexdigest()
        self.manifest = json.dumps({
            "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "size": len(self.config),
                       "digest": f"sha256:{config}"},
            "layers": [{"mediaType": LAYER_TYPE, "size": b.size, "digest": b.digest}
                       for b in self.layers]}, indent=3).encode()

    @property
    def digest(self) -> str:
        return f"sha256:{hashlib.sha256(self.manifest).hexdigest()}"

    @property
    def config_digest(self) -> str:
        return f"sha256:{hashlib.sha256(self.config).hexdigest()}"

    @property
    def compressed_bytes(self) -> int:
        return sum(b.size for b in self.layers)


def gzip_blob(write: Callable[[BinaryIO], None], out_dir: Path) -> Blob:
    """Write a tar through gzip into out_dir, named by its digest; returns the blob."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "incoming.tmp"
    with open(tmp, "wb") as raw:
        packed = _Hashing(raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=packed,
                           compresslevel=GZIP_LEVEL, mtime=0) as gz:
            plain = _Hashing(gz)
            write(plain)  # type: ignore[arg-type]
    path = out_dir / packed.digest.replace(":", "-")
    tmp.replace(path)
    return Blob(packed.digest, packed.size, path, plain.digest, plain.size)


def arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def image_config(layers: list[Blob], command: list[str], labels: dict[str, str],
                 base: dict[str, Any] | None = None) -> bytes:
    """An image configuration over `layers`, one history entry per layer."""
    config: dict[str, Any] = dict(base or {"architecture": arch(), "os": "linux",
                                           "created": EPOCH, "config": {}})
    config["config"] = {**(config.get("config") or {}), "Cmd": command,
                        "Labels": {**((config.get("config") or {}).get("Labels") or {}), **labels}}
    config["rootfs"] = {"type": "layers", "diff_ids": [b.diff_id for b in layers]}
    config["history"] = [{"created": EPOCH, "created_by": f"bench layer {i + 1}/{len(layers)}"}
                         for i in range(len(layers))]
    return json.dumps(config, sort_keys=True).encode()


def _norm(name: str) -> str:
    return name[2:] if name.startswith("./") else name.lstrip("/")


def squash(layers: list[Path], out: BinaryIO) -> int:
    """Merge layer tars (bottom first; plain or gzipped) into one tar with the same files:
    whiteouts (`.wh.NAME`, `.wh..wh..opq`) applied, the topmost version of each path kept.
    Each layer is read twice, front to back. Returns the number of entries written."""
    final: dict[str, tuple[int, int, tarfile.TarInfo]] = {}
    for index, path in enumerate(layers):
        with tarfile.open(path, mode="r|*") as archive:
            for member in archive:
                name = _norm(member.name).rstrip("/")
                if not name:
                    continue
                parent, _, base = name.rpartition("/")
                if base == ".wh..wh..opq":
                    prefix = f"{parent}/" if parent else ""
                    for key in [k for k, v in final.items()
                                if k.startswith(prefix) and v[0] < index]:
                        del final[key]
                elif base.startswith(".wh."):
                    gone = f"{parent}/{base[4:]}" if parent else base[4:]
                    for key in [k for k in final if k == gone or k.startswith(gone + "/")]:
                        del final[key]
                else:
                    final[name] = (index, member.offset, member)
    written: set[str] = set()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as merged:

        def emit(name: str, info: tarfile.TarInfo, data: Any = None) -> None:
            parts = name.split("/")
            for depth in range(1, len(parts)):
                parent = "/".join(parts[:depth])
                if parent not in written and parent in final and final[parent][2].isdir():
                    emit(parent, final[parent][2])
            if name not in written:
                copy = info.replace(name=name, deep=False)
                merged.addfile(copy, data)
                written.add(name)

        for index, path in enumerate(layers):
            with tarfile.open(path, mode="r|*") as archive:
                for member in archive:
                    name = _norm(member.name).rstrip("/")
                    kept = final.get(name) if name else None
                    if kept is None or kept[:2] != (index, member.offset):
                        continue
                    emit(name, member, archive.extractfile(member) if member.isfile() else None)
    return len(written)
