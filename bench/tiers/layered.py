"""What tiers with layered roots share for the image workload: the run's file set, its N-layer
builds (gzipped layer blobs under the run's work directory) and merged (squashed) versions.

A tier that stacks layers (docker: pulls them; ns: mounts them with overlayfs) returns a
`LayerLab` from `Tier.layer_lab()`; the workload asks it to measure one point.
"""

from __future__ import annotations

import shutil
import tarfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from bench.core import layers, oci
from bench.core.samples import Measurement
from bench.tiers.base import InstanceSpec

MAX_LAYERS = 64  # the file set is chosen so that any split up to this many stays balanced
MiB = 2**20


@dataclass(frozen=True)
class LayerPoint:
    size_mb: int
    layers: int
    merged: bool  # the N-layer image squashed into one layer

    @property
    def tag(self) -> str:
        return f"{self.size_mb}m-{self.layers}" + ("-merged" if self.merged else "")


def measurement(metric: str, value: float, unit: str, meta: dict[str, Any]) -> Measurement:
    """Every layer metric is a time or a size: lower is better."""
    return Measurement(metric=metric, value=value, unit=unit, direction="lower", metadata=meta)


# (blob directory, point) -> build: tiers of one run share their builds (one process)
_BUILT: dict[tuple[Path, LayerPoint], oci.BuiltImage] = {}


class LayerSource:
    """The run's file set from the bench image and its builds, each made once per run: the
    blobs live in `blob_dir` (the run's work directory, shared by its tiers)."""

    def __init__(self, image_root: Path, blob_dir: Path, labels: dict[str, str]) -> None:
        self.root, self.blob_dir, self.labels = image_root, blob_dir, labels
        self._entries: dict[int, list[layers.Entry]] = {}

    def entries(self, size_mb: int) -> list[layers.Entry]:
        if size_mb not in self._entries:
            self._entries[size_mb] = layers.select(self.root, size_mb * MiB, MAX_LAYERS)
        return self._entries[size_mb]

    def tree_hash(self, size_mb: int) -> str:
        return layers.hash_entries(self.entries(size_mb))

    def build(self, point: LayerPoint) -> oci.BuiltImage:
        key = (self.blob_dir, point)
        if key not in _BUILT or not all(b.path.exists() for b in _BUILT[key].layers):
            blob_dir = self.blob_dir
            if point.merged:
                layered = self.build(LayerPoint(point.size_mb, point.layers, False))
                paths = [b.path for b in layered.layers]
                def merge(out: BinaryIO) -> None:
                    oci.squash(paths, out)

                blobs = [oci.gzip_blob(merge, blob_dir)]
            else:
                entries = self.entries(point.size_mb)
                dirs = {e.path: e for e in entries if e.kind == "dir"}
                blobs = []
                for part in layers.split(entries, point.layers):
                    blobs.append(oci.gzip_blob(
                        lambda out, part=part: layers.write_layer(part, dirs, out),  # type: ignore[misc]
                        blob_dir))
            config = oci.image_config(blobs, [f"/{layers.PROBE}"],
                                      {**self.labels, "bench.layers": str(point.layers),
                                       "bench.merged": str(point.merged).lower()})
            _BUILT[key] = oci.BuiltImage(blobs, config)
        return _BUILT[key]

    def unpack(self, point: LayerPoint, into: Path) -> list[Path]:
        """The build's layers unpacked into into/0, into/1, ... (bottom first), once."""
        image = self.build(point)
        dirs = [into / str(i) for i in range(len(image.layers))]
        if not (into / "done").exists():
            shutil.rmtree(into, ignore_errors=True)
            for blob, target in zip(image.layers, dirs, strict=True):
                target.mkdir(parents=True)
                with tarfile.open(blob.path, "r:gz") as archive:
                    # our own archive of the bench image's files: owners and modes as they are
                    archive.extractall(target, numeric_owner=True,  # noqa: S202
                                       filter="fully_trusted")
            (into / "done").touch()
        return dirs


class LayerLab(ABC):
    """A tier's way of measuring one layer count."""

    @abstractmethod
    def measure(self, point: LayerPoint, rate_mbit: float, spec: InstanceSpec,
                save_raw: Callable[[str, str], None], deadline: float) -> list[Measurement]:
        """Measure `point` once; `rate_mbit` > 0 adds a pull over a link of that rate."""

    def close(self) -> None:  # noqa: B027 - optional
        """Remove what the lab made (images, registries, mounts). Idempotent."""
