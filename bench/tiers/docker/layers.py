"""The image workload on the docker tier: pull, first start and disk use against layer count.

Each point's image is pushed once per run to bench's loopback registry (repository
`bench/<run id>/layers`, tag `<size>m-<N>[-merged]`). One measurement: remove the image
locally, pull it from the loopback registry (cold pull, warm registry) timing the engine's
progress stream, check the pulled digest is the pushed one, start a first container, read the
disk it takes, remove it; then (rate > 0) the same pull through the rate-limited registry.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from docker.errors import APIError, ImageNotFound, NotFound

from bench.core.errors import BenchError
from bench.core.samples import Measurement
from bench.tiers.base import InstanceSpec
from bench.tiers.docker import engine as engine_mod
from bench.tiers.docker import limited as limited_mod
from bench.tiers.docker import registry
from bench.tiers.layered import LayerLab, LayerPoint, LayerSource, measurement

if TYPE_CHECKING:
    from bench.tiers.docker.tier import DockerTier

MB = 1e6


def pull_phases(events: list[tuple[float, dict[str, Any]]]) -> dict[str, float]:
    """Download and extraction time from the engine's pull progress stream (seconds since the
    pull call): download = until the last layer's "Download complete"; extract = the sum over
    layers of first "Extracting" to "Pull complete" (the engine applies layers one by one)."""
    done: list[float] = []
    extracting: dict[str, float] = {}
    extract = 0.0
    for at, event in events:
        status, layer = str(event.get("status", "")), str(event.get("id", ""))
        if status == "Download complete":
            done.append(at)
        elif status == "Extracting":
            extracting.setdefault(layer, at)
        elif status == "Pull complete" and layer in extracting:
            extract += at - extracting[layer]
    found = {}
    if done:
        found["download_s"] = max(done)
    if extracting:
        found["extract_s"] = extract
    return found


def disk_bytes(paths: list[str]) -> int:
    """Blocks used under these directories (hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for top in paths:
        for base, dirs, files in os.walk(top):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    st = os.lstat(os.path.join(base, name))
                    if (st.st_dev, st.st_ino) not in seen:
                        seen.add((st.st_dev, st.st_ino))
                        total += st.st_blocks * 512
    return total


class DockerLayers(LayerLab):
    def __init__(self, tier: DockerTier) -> None:
        if engine_mod.is_remote():
            raise BenchError("The image workload pulls from bench's registry on this host, "
                             "which a remote engine cannot reach.",
                             "run it against the local engine (unset BENCH_DOCKER_URL).")
        self.tier = tier
        self.run_id = tier.ctx.run_id
        self.workdir = tier.ctx.workdir / "layers"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.source = LayerSource(tier.ctx.image.rootfs, tier.ctx.workdir.parent / "layer-blobs",
                                  {"bench.run": self.run_id})
        self.repo = f"bench/{self.run_id}/layers"
        self.loopback = registry.Client(registry.address())
        self.pushed: dict[LayerPoint, str] = {}
        self.limited: limited_mod.LimitedRegistry | None = None

    @property
    def engine(self) -> Any:
        return self.tier.engine

    def push(self, point: LayerPoint) -> str:
        """The point's image in the loopback registry (pushed on first use); its digest."""
        if point not in self.pushed:
            if not self.loopback.alive():
                registry.ensure_running()
            if not Path(registry.BINARY).exists():
                raise BenchError("Debian's docker-registry is not installed.", registry.FIX)
            built = self.source.build(point)
            self.pushed[point] = self.loopback.push(self.repo, point.tag, built,
                                                    self.source.blob_dir)
            if self.pushed[point] != built.digest:
                raise BenchError(f"The registry stored {self.repo}:{point.tag} as "
                                 f"{self.pushed[point]}, not {built.digest}.",
                                 "check the registry's log (/var/log/bench-registry.log).")
        return self.pushed[point]

    def ref(self, addr: str, point: LayerPoint) -> str:
        return f"{addr}/{self.repo}:{point.tag}"

    def forget(self, point: LayerPoint) -> None:
        """The point's image gone from the engine (both registries' names), and every other
        image of this run: layers of the same content would otherwise make a pull warm."""
        addrs = [registry.address()] + ([self.limited.addr] if self.limited else [])
        for addr in addrs:
            with contextlib.suppress(ImageNotFound, NotFound):
                self.engine.images.remove(self.ref(addr, point), force=True)
        for image in self.engine.images.list(filters={"label": f"bench.run={self.run_id}"}):
            with contextlib.suppress(ImageNotFound, NotFound):
                self.engine.images.remove(str(image.id), force=True)

    def pull(self, addr: str, point: LayerPoint, digest: str) -> dict[str, Any]:
        events: list[tuple[float, dict[str, Any]]] = []
        started = time.monotonic()
        try:
            for event in self.engine.api.pull(f"{addr}/{self.repo}", tag=point.tag,
                                              stream=True, decode=True):
                events.append((time.monotonic() - started, event))
                if "error" in event:
                    raise BenchError(f"Pulling {self.ref(addr, point)} failed: {event['error']}",
                                     "see the engine's log.")
        except APIError as exc:
            raise BenchError(f"Pulling {self.ref(addr, point)} failed: {exc}",
                             "see the engine's log.") from exc
        seconds = time.monotonic() - started
        got = self.engine.api.inspect_image(self.ref(addr, point))
        want = f"{addr}/{self.repo}@{digest}"
        if want not in (got.get("RepoDigests") or []):
            raise BenchError(f"The engine pulled {got.get('RepoDigests')} for "
                             f"{self.ref(addr, point)}, not {digest}.", "see the engine's log.")
        return {"seconds": seconds, **pull_phases(events), "inspect": got,
                "events": len(events)}

    def first_start(self, ref: str, deadline: float) -> dict[str, float]:
        labels = {"bench.run": self.run_id, "bench.role": "layers"}
        started = time.monotonic()
        container = self.engine.containers.create(ref, labels=labels, network_mode="none")
        try:
            created = time.monotonic()
            container.start()
            running = time.monotonic()
            status = container.wait(timeout=max(deadline - time.monotonic(), 1))
            exited = time.monotonic()
        finally:
            with contextlib.suppress(NotFound):
                container.remove(force=True)
        if status.get("StatusCode") != 0:
            raise BenchError(f"The probe in {ref} exited with {status}.", "see raw/.")
        return {"create_ms": (created - started) * 1e3, "start_ms": (running - started) * 1e3,
                "exit_ms": (exited - started) * 1e3}

    def measure(self, point: LayerPoint, rate_mbit: float, spec: InstanceSpec,
                save_raw: Callable[[str, str], None], deadline: float) -> list[Measurement]:
        digest = self.push(point)
        built = self.source.build(point)
        self.forget(point)
        cold = self.pull(registry.address(), point, digest)
        start = self.first_start(self.ref(registry.address(), point), deadline)
        graph = cold["inspect"].get("GraphDriver", {}).get("Data", {}) or {}
        dirs = [d for d in str(graph.get("LowerDir", "")).split(":") if d]
        dirs += [graph["UpperDir"]] if graph.get("UpperDir") else []
        disk = disk_bytes(dirs)
        self.forget(point)
        meta: dict[str, Any] = {"layers": point.layers, "merged": point.merged,
                                "image_layers": len(cold["inspect"]["RootFS"]["Layers"]),
                                "digest": digest, "compressed_MB": built.compressed_bytes / MB,
                                "registry": registry.address(), "pull_events": cold["events"]}
        found = [measurement("pull_s", cold["seconds"], "s", meta)]
        found += [measurement(f"pull_{k}", cold[k], "s", meta)
                  for k in ("download_s", "extract_s") if k in cold]
        found += [measurement(f"first_{k}", v, "ms", meta) for k, v in start.items()]
        found.append(measurement("image_size_MB", cold["inspect"]["Size"] / MB, "MB", meta))
        if disk:
            found.append(measurement("disk_MB", disk / MB, "MB", meta))
        if rate_mbit > 0:
            limited = self.limited_registry(rate_mbit)
            slow = self.pull(limited.addr, point, digest)
            self.forget(point)
            lmeta = meta | {"registry": limited.addr, "rate_mbit": rate_mbit,
                            "link": "veth into a bench network namespace, tbf on its egress, "
                                    "TLS", "pull_events": slow["events"]}
            found.append(measurement("pull_limited_s", slow["seconds"], "s", lmeta))
            found += [measurement(f"pull_limited_{k}", slow[k], "s", lmeta)
                      for k in ("download_s", "extract_s") if k in slow]
        return found

    def limited_registry(self, rate_mbit: float) -> limited_mod.LimitedRegistry:
        if self.limited is None:
            self.limited = limited_mod.LimitedRegistry(self.run_id, self.workdir, rate_mbit)
            self.limited.start()
        elif self.limited.rate_mbit != rate_mbit:
            self.limited.set_rate(rate_mbit)
        return self.limited

    def close(self) -> None:
        for point in list(self.pushed):
            with contextlib.suppress(Exception):
                self.forget(point)
        if self.limited is not None:
            self.limited.stop()
            self.limited = None
        if self.pushed:
            registry.remove_run(self.run_id)
            self.pushed.clear()
