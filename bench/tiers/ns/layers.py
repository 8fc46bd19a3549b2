"""The image workload on the ns tier: overlayfs over N lower directories.

Each point's layers are unpacked once per run into the tier's work directory (bottom first)
and reached through a short symlink under /run/bench-layers/<tag>/ (overlayfs takes its whole
lowerdir list in one page, which 64 long paths would overflow). One measurement: start a
container whose root stacks the N layers and whose command is the static probe
(`/.bench-start`), timing it to exit and its overlay mount alone; then mount the same stack
on the host and time first lookups (stat) at its root, the one directory every layer has:
of the probe, which lies in the deepest layer (a fresh mount each time, so the lookup goes
through every layer above), and of names that exist in no layer (a miss searches them all).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.core import layers
from bench.core.errors import BenchError
from bench.core.samples import Measurement
from bench.kernel import sysmount
from bench.tiers.base import InstanceSpec
from bench.tiers.layered import LayerLab, LayerPoint, LayerSource, measurement

if TYPE_CHECKING:
    from bench.tiers.ns.instance import NsInstance
    from bench.tiers.ns.tier import NsTier

LINK_ROOT = Path("/run/bench-layers")
MOUNTS = 20  # fresh mounts per measurement, one first lookup of the probe on each
MISSES = 200  # absent names looked up per measurement
PAGE = 4096  # overlayfs mount options must fit in one page


def link_dir(run_id: str) -> Path:
    return LINK_ROOT / hashlib.sha256(run_id.encode()).hexdigest()[:8]


def cleanup(run_id: str | None) -> list[str]:
    targets = [link_dir(run_id)] if run_id else list(LINK_ROOT.glob("*"))
    removed = [f"links {t}" for t in targets if t.exists()]
    for target in targets:
        shutil.rmtree(target, ignore_errors=True)
    return removed


def time_lookups(root: Path, names: list[str]) -> list[float]:
    """Microseconds per first stat() of each name under root (a miss counts as a lookup)."""
    took = []
    for name in names:
        started = time.perf_counter_ns()
        with contextlib.suppress(FileNotFoundError):
            os.stat(root / name, follow_symlinks=False)
        took.append((time.perf_counter_ns() - started) / 1e3)
    return took


class NsLayers(LayerLab):
    def __init__(self, tier: NsTier) -> None:
        self.tier = tier
        self.run_id = tier.ctx.run_id
        self.workdir = tier.ctx.workdir / "layers"
        self.source = LayerSource(tier.ctx.image.rootfs, tier.ctx.workdir.parent / "layer-blobs",
                                  {"bench.run": self.run_id})
        self.links = link_dir(self.run_id)
        self.count = 0

    def lower(self, point: LayerPoint) -> str:
        """The overlayfs lowerdir list of the point's layers, top first, via short links."""
        dirs = self.source.unpack(point, self.workdir / "ly" / point.tag)
        link = self.links / point.tag
        if not link.is_symlink():
            self.links.mkdir(parents=True, exist_ok=True, mode=0o700)
            link.symlink_to(dirs[0].parent)
        lower = ":".join(str(link / d.name) for d in reversed(dirs))
        if len(lower) > PAGE - 512:
            raise BenchError(f"{len(dirs)} layers make an overlayfs lowerdir list of "
                             f"{len(lower)} bytes, more than a page holds.",
                             "ask for fewer layers.")
        return lower

    def start(self, point: LayerPoint, spec: InstanceSpec, deadline: float) -> dict[str, float]:
        probe = dataclasses.replace(spec, role="layers", command=[f"/{layers.PROBE}"])
        instance: NsInstance = self.tier.start(probe, self.lower(point))  # type: ignore[assignment]
        try:
            status = instance.wait(max(deadline - time.monotonic(), 1))
        finally:
            instance.stop()
        if status != 0:
            raise BenchError(f"The probe in an ns container over {point.layers} layers exited "
                             f"with status {status}: {instance.output()[-300:]}", "see raw/.")
        stamps = instance.phases.stamps
        found = {"exit_ms": (stamps["exit"] - stamps["create"]) * 1e3}
        if "ready" in stamps:
            found["start_ms"] = (stamps["ready"] - stamps["create"]) * 1e3
        if "root_mounted" in stamps and "namespaces_ready" in stamps:
            found["mount_ms"] = (stamps["root_mounted"] - stamps["namespaces_ready"]) * 1e3
        return found

    def lookups(self, point: LayerPoint) -> dict[str, float]:
        lower = self.lower(point)
        hits: list[float] = []
        misses: list[float] = []
        for round_no in range(MOUNTS):
            self.count += 1
            base = self.workdir / f"m{self.count}"
            upper, work, merged = base / "u", base / "w", base / "m"
            for path in (upper, work, merged):
                path.mkdir(parents=True)
            sysmount.mount("overlay", merged, "overlay", 0,
                           f"lowerdir={lower},upperdir={upper},workdir={work}")
            try:
                hits += time_lookups(merged, [layers.PROBE])
                if round_no == 0:
                    misses = time_lookups(merged, [f"absent-{i}" for i in range(MISSES)])
            finally:
                sysmount.umount(merged, lazy=False)
                shutil.rmtree(base, ignore_errors=True)
        return {"lookup_deepest_us": statistics.median(hits),
                "lookup_missing_us": statistics.median(misses)}

    def measure(self, point: LayerPoint, rate_mbit: float, spec: InstanceSpec,
                save_raw: Callable[[str, str], None], deadline: float) -> list[Measurement]:
        meta: dict[str, Any] = {"layers": point.layers, "merged": point.merged,
                                "overlay_lowers": point.layers if not point.merged else 1,
                                "lookup": f"first stat at the root after a fresh overlay mount: "
                                          f"the probe (deepest layer, median of {MOUNTS} "
                                          f"mounts), {MISSES} absent names (the layers' own "
                                          "dentries warm)"}
        found = [measurement(f"first_{k}", v, "ms", meta)
                 for k, v in self.start(point, spec, deadline).items()]
        found += [measurement(k, v, "us", meta) for k, v in self.lookups(point).items()]
        return found

    def close(self) -> None:
        with contextlib.suppress(OSError):
            sysmount.unmount_all(self.workdir)
        cleanup(self.run_id)
        shutil.rmtree(self.workdir, ignore_errors=True)
