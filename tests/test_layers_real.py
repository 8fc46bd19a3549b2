"""Image layers for real: bench's registry (Debian's docker-registry on loopback, and a second
one in a network namespace behind tbf, over TLS), the Docker engine, overlayfs on the ns tier.
A few MiB of files and N in {1, 4, 16} keep it cheap; scenarios/layers.yaml has the full set."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.core import layers
from bench.core.image import Image
from bench.core.limits import Limits
from bench.kernel import sysmount
from bench.tiers.base import InstanceSpec, TierContext
from bench.tiers.docker import engine as docker_engine
from bench.tiers.docker import limited as limited_mod
from bench.tiers.docker import registry
from bench.tiers.docker.layers import DockerLayers
from bench.tiers.docker.tier import DockerTier
from bench.tiers.layered import LayerPoint
from bench.tiers.ns import layers as ns_layers
from bench.tiers.ns.tier import NsTier
from tests.parts import need

pytestmark = pytest.mark.integration
PART_FIXTURES = {"docker_lab": "registry"}  # tests on bench's registry and the engine
SIZE_MB = 4
POINTS = [LayerPoint(SIZE_MB, 1, False), LayerPoint(SIZE_MB, 4, False),
          LayerPoint(SIZE_MB, 16, False), LayerPoint(SIZE_MB, 16, True)]
IDS = [p.tag for p in POINTS]


@pytest.fixture(scope="module")
def docker_lab(bench_image: Image,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerLayers]:
    state = docker_engine.diagnose()
    need("docker", state.ok, state.reason)
    registry.ensure_running()
    up = registry.available()
    need("registry", up.ok, up.reason)
    run_id = f"test-layers-{secrets.token_hex(3)}"
    work = tmp_path_factory.mktemp("layers")
    tier = DockerTier()
    tier.prepare(TierContext(run_id, bench_image, work, work))
    lab: DockerLayers = tier.layer_lab()
    lab.blobs_before = registry.blob_digests()  # type: ignore[attr-defined]
    yield lab
    tier.finish()


@pytest.mark.parametrize("point", POINTS, ids=IDS)
def test_pulled_digest_is_the_pushed_one_with_n_balanced_layers(docker_lab: DockerLayers,
                                                                point: LayerPoint) -> None:
    built = docker_lab.source.build(point)
    pushed = docker_lab.push(point)
    assert pushed == built.digest  # what the registry answered to our PUT
    docker_lab.forget(point)
    pulled = docker_lab.pull(registry.address(), point, pushed)["inspect"]
    assert f"{registry.address()}/{docker_lab.repo}@{built.digest}" in pulled["RepoDigests"]
    n = 1 if point.merged else point.layers
    assert len(pulled["RootFS"]["Layers"]) == n
    sizes = [h["Size"] for h in docker_lab.engine.api.history(docker_lab.ref(
        registry.address(), point))]
    assert len(sizes) == n
    total = sum(sizes)
    assert all(abs(s - total / n) <= 0.2 * total / n for s in sizes), sizes


@pytest.mark.parametrize("point", POINTS, ids=IDS)
def test_every_layer_count_unpacks_to_the_same_tree(docker_lab: DockerLayers,
                                                    point: LayerPoint) -> None:
    ref = docker_lab.ref(registry.address(), point)
    docker_lab.push(point)
    docker_lab.forget(point)
    docker_lab.pull(registry.address(), point, docker_lab.pushed[point])
    assert export_hash(docker_lab, ref) == docker_lab.source.tree_hash(SIZE_MB)


def export_hash(lab: DockerLayers, ref: str) -> str:
    container = lab.engine.containers.create(ref, labels={"bench.run": lab.run_id})
    try:
        tar = Path(lab.workdir) / "export.tar"
        with open(tar, "wb") as out:
            for chunk in container.export():
                out.write(chunk)
        with open(tar, "rb") as data:
            found = layers.hash_tar_stream(data)
        tar.unlink()
        return found
    finally:
        container.remove(force=True)


def test_bench_image_squash_merges_a_pulled_image(docker_lab: DockerLayers) -> None:
    point = POINTS[2]
    docker_lab.forget(point)
    docker_lab.pull(registry.address(), point, docker_lab.push(point))
    source = docker_lab.ref(registry.address(), point)
    done = subprocess.run([sys.executable, "-m", "bench.cli", "image", "squash", source],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "16 layers merged into one" in done.stdout
    merged = docker_lab.engine.api.inspect_image(f"{source}-squashed")
    assert len(merged["RootFS"]["Layers"]) == 1
    assert export_hash(docker_lab, f"{source}-squashed") == docker_lab.source.tree_hash(SIZE_MB)


def test_limited_registry_is_shaped_and_trusted_through_certs_d(docker_lab: DockerLayers) -> None:
    point, rate = POINTS[0], 8.0
    limited = docker_lab.limited_registry(rate)
    assert (limited_mod.certs_d() / limited.addr / "ca.crt").exists()
    qdisc = subprocess.run(["tc", "-n", limited.ns, "qdisc", "show", "dev", limited.ns_if],
                           capture_output=True, text=True, check=True).stdout
    assert "tbf" in qdisc and "8Mbit" in qdisc
    assert "tbf" not in subprocess.run(["tc", "qdisc", "show", "dev", "lo"], capture_output=True,
                                       text=True, check=True).stdout
    digest = docker_lab.push(point)
    docker_lab.forget(point)
    seconds = docker_lab.pull(limited.addr, point, digest)["seconds"]  # checks the digest
    floor = docker_lab.source.build(point).compressed_bytes * 8 / (rate * 1e6)
    assert seconds >= 0.9 * floor, (seconds, floor)
    docker_lab.forget(point)


def test_a_measurement_has_pull_start_and_disk(docker_lab: DockerLayers) -> None:
    found = docker_lab.measure(POINTS[1], 50.0, InstanceSpec("layers", Limits()),
                               lambda *_: None, time.monotonic() + 120)
    metrics = {m.metric: m.value for m in found}
    assert {"pull_s", "first_start_ms", "image_size_MB", "pull_limited_s"} <= set(metrics)
    assert metrics["image_size_MB"] >= SIZE_MB * 2**20 / 1e6 * 0.95
    assert 0 < metrics.get("pull_extract_s", 0) < metrics["pull_s"]


def test_nothing_is_left_after_the_run(docker_lab: DockerLayers) -> None:
    run_id, tier = docker_lab.run_id, docker_lab.tier
    limited = docker_lab.limited_registry(50.0)  # started by an earlier test, or now
    addr, ns = limited.addr, limited.ns
    tier.finish()
    assert not (registry.repositories_dir() / "bench" / run_id).exists()
    assert registry.blob_digests() == docker_lab.blobs_before  # type: ignore[attr-defined]
    engine = docker_engine.connect(30)
    assert not engine.images.list(filters={"label": f"bench.run={run_id}"})
    assert not engine.containers.list(all=True, filters={"label": f"bench.run={run_id}"})
    assert not (limited_mod.certs_d() / addr).exists()
    assert not Path(f"/run/netns/{ns}").exists()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"brg{limited_mod.tag(run_id)}" not in links


@pytest.mark.part("ns")
def test_ns_overlay_of_n_layers(bench_image: Image, tmp_path: Path) -> None:
    run_id = f"test-nslayers-{secrets.token_hex(3)}"
    tier = NsTier()
    tier.prepare(TierContext(run_id, bench_image, tmp_path / "ns", tmp_path))
    try:
        lab = tier.layer_lab()
        spec = InstanceSpec("layers", Limits(), network="host")
        for point in POINTS[:3]:
            found = {m.metric for m in lab.measure(point, 0, spec, lambda *_: None,
                                                   time.monotonic() + 60)}
            assert {"first_start_ms", "lookup_deepest_us", "lookup_missing_us"} <= found
            merged = tmp_path / f"m{point.layers}"
            for d in ("u", "w", "m"):
                (merged / d).mkdir(parents=True)
            sysmount.mount("overlay", merged / "m", "overlay", 0,
                           f"lowerdir={lab.lower(point)},upperdir={merged}/u,workdir={merged}/w")
            try:
                assert layers.hash_dir(merged / "m") == lab.source.tree_hash(SIZE_MB)
            finally:
                sysmount.umount(merged / "m", lazy=False)
    finally:
        tier.finish()
    assert not sysmount.mounts_under(tmp_path)
    assert not ns_layers.link_dir(run_id).exists()


@pytest.mark.part("docker", "registry")
def test_cleanup_by_run_id_after_a_crash(bench_image: Image, tmp_path: Path) -> None:
    """A run killed mid-way leaves its repositories, namespace, veth and CA: `bench cleanup
    --run` (DockerTier.cleanup) removes them all, and nothing of other runs."""
    need("docker", docker_engine.diagnose().ok, docker_engine.diagnose().reason)
    need("registry", registry.available().ok, registry.available().reason)
    before = registry.blob_digests()
    run_id = f"test-crash-{secrets.token_hex(3)}"
    tier = DockerTier()
    tier.prepare(TierContext(run_id, bench_image, tmp_path / "docker", tmp_path))
    lab: DockerLayers = tier.layer_lab()
    lab.push(LayerPoint(1, 2, False))
    limited = lab.limited_registry(50.0)  # "killed" here: no finish, no close
    assert (registry.repositories_dir() / "bench" / run_id).exists()
    removed = DockerTier().cleanup(run_id)
    assert any("network namespace" in r for r in removed), removed
    assert any("certificate directory" in r for r in removed), removed
    assert not (registry.repositories_dir() / "bench" / run_id).exists()
    assert registry.blob_digests() == before
    assert not Path(f"/run/netns/{limited.ns}").exists()
    assert not (limited_mod.certs_d() / limited.addr).exists()
    if limited.proc is not None:
        limited.proc.wait(10)  # killed with its namespace
    lab.pushed.clear()
    lab.limited = None
    tier.finish()
