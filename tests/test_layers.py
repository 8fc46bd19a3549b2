"""N-layer images without an engine: the file set, the split, the tars, squash and tree hashes;
the plan leaving the image workload out where a tier has no layers."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from bench.core import layers, oci
from bench.core.errors import BenchError
from bench.run import plan as planning
from bench.run import scenario as scenario_mod


def make_tree(root: Path, files: int = 400) -> None:
    """A small root: nested directories, files of varied sizes, symlinks, a setuid file."""
    for i in range(files):
        path = root / f"usr/d{i % 7}/s{i % 3}/f{i:04d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(500 + (i * 7919) % 6000))
    (root / "usr/big").write_bytes(b"x" * 10**6)  # larger than any layer: left out
    (root / "bin").symlink_to("usr/d1")
    (root / "usr/d2/suid").write_bytes(b"#!")
    (root / "usr/d2/suid").chmod(0o4755)
    (root / "proc").mkdir()
    (root / "etc").mkdir()
    (root / "etc/hosts").write_text("engine-owned\n")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    make_tree(root)
    return root


def test_probe_program_runs_and_exits_zero(tmp_path: Path) -> None:
    if os.uname().machine not in ("x86_64", "aarch64"):
        pytest.skip("no probe code for this machine")
    probe = tmp_path / "probe"
    probe.write_bytes(layers.probe_program())
    probe.chmod(0o755)
    assert subprocess.run([str(probe)], check=False).returncode == 0
    assert len(probe.read_bytes()) < 200


def test_select_keeps_files_small_enough_for_every_split(tree: Path) -> None:
    entries = layers.select(tree, 1_000_000, 16)
    paths = {e.path for e in entries}
    assert "usr/big" not in paths and "etc/hosts" not in paths  # too big / engine-owned
    assert {layers.PROBE, "proc", "dev", "bin", "usr/d2/suid"} <= paths
    assert max(e.weight for e in entries) <= 1_000_000 // (layers.BALANCE * 16)
    assert [e.path.split("/") for e in entries] == sorted(e.path.split("/") for e in entries)


@pytest.mark.parametrize("n", [1, 2, 4, 16])
def test_split_gives_n_layers_within_20_percent(tree: Path, n: int) -> None:
    entries = layers.select(tree, 1_000_000, 16)
    parts = layers.split(entries, n)
    sizes = [sum(e.weight for e in part) for part in parts]
    total = sum(sizes)
    assert len(parts) == n and sum(len(p) for p in parts) == len(entries)
    assert all(abs(s - total / n) <= 0.2 * total / n for s in sizes), sizes


def test_too_many_layers_for_the_set_is_a_clear_error(tree: Path) -> None:
    with pytest.raises(BenchError, match="less than"):
        layers.select(tree, 50_000_000, 64)


def build(tree: Path, n: int, out: Path) -> oci.BuiltImage:
    entries = layers.select(tree, 1_000_000, 16)
    dirs = {e.path: e for e in entries if e.kind == "dir"}
    blobs = [oci.gzip_blob(lambda f, p=p: layers.write_layer(p, dirs, f), out)  # type: ignore[misc]
             for p in layers.split(entries, n)]
    return oci.BuiltImage(blobs, oci.image_config(blobs, ["/" + layers.PROBE], {}))


def unpack_all(blobs: list[Path], into: Path) -> str:
    into.mkdir()
    for blob in blobs:
        with tarfile.open(blob, "r:gz") as archive:
            archive.extractall(into, numeric_owner=True, filter="fully_trusted")
    return layers.hash_dir(into)


@pytest.mark.parametrize("n", [1, 4, 16])
def test_every_split_unpacks_to_the_same_tree(tree: Path, tmp_path: Path, n: int) -> None:
    expected = layers.hash_entries(layers.select(tree, 1_000_000, 16))
    image = build(tree, n, tmp_path / "blobs")
    assert len(image.layers) == n
    assert unpack_all([b.path for b in image.layers], tmp_path / "out") == expected
    merged = tmp_path / "merged.tar"
    with open(merged, "wb") as out:
        oci.squash([b.path for b in image.layers], out)
    with open(merged, "rb") as data:
        assert layers.hash_tar_stream(data) == expected


def test_builds_are_deterministic(tree: Path, tmp_path: Path) -> None:
    first, again = build(tree, 4, tmp_path / "a"), build(tree, 4, tmp_path / "b")
    assert first.digest == again.digest
    assert [b.digest for b in first.layers] == [b.digest for b in again.layers]
    manifest = __import__("json").loads(first.manifest)
    assert [x["digest"] for x in manifest["layers"]] == [b.digest for b in first.layers]


def tar_of(members: dict[str, bytes | None], path: Path) -> Path:
    """A layer tar: None makes a directory."""
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def test_squash_applies_whiteouts_and_keeps_the_topmost(tmp_path: Path) -> None:
    bottom = tar_of({"a": None, "a/keep": b"1", "a/gone": b"2", "o": None, "o/old": b"3",
                     "f": b"old"}, tmp_path / "0.tar")
    top = tar_of({"a": None, "a/.wh.gone": b"", "o": None, "o/.wh..wh..opq": b"",
                  "o/new": b"4", "f": b"new"}, tmp_path / "1.tar")
    out = io.BytesIO()
    oci.squash([bottom, top], out)
    out.seek(0)
    with tarfile.open(fileobj=out) as merged:
        files = {m.name: merged.extractfile(m).read()  # type: ignore[union-attr]
                 for m in merged.getmembers() if m.isfile()}
    assert files == {"a/keep": b"1", "o/new": b"4", "f": b"new"}


def test_kvm_and_host_take_no_part_and_say_why() -> None:
    parsed = scenario_mod.parse(
        "name: t\ntiers: [host, docker, ns, kvm]\nworkloads:\n"
        "  - workload: image.layers\n    matrix: {layers: [1, 4]}\n", "t.yaml")
    plan = planning.expand(parsed, ["host", "docker", "ns", "kvm"])
    assert {c.cell.tier for c in plan.cells} == {"docker", "ns"}
    assert "no layers" in plan.skipped_cells["kvm/image.layers"]
    assert "host/image.layers" in plan.skipped_cells


def layer_run(results: Path) -> Path:
    """A constructed run of image.layers on docker: pull time grows with N for the layered
    image (0.5 s + 0.1 s per layer above one) and stays at 0.5 s merged; start time stays."""
    import json

    import numpy as np

    from bench.core.samples import FORMAT_VERSION, Cell
    from tests.synthetic import HOSTILE, Spec, manifest

    rng = np.random.default_rng(3)
    path = results / "layers-run"
    (path / "raw").mkdir(parents=True)
    head = manifest(Spec("layers-run", tiers=("docker",)))
    head["skipped_cells"] = {"kvm/image.layers": "a VM has no layers " + HOSTILE}
    (path / "manifest.json").write_text(json.dumps(head))
    with open(path / "samples.jsonl", "w") as out:
        for n in (1, 4, 16, 64):
            for merged in (False, True):
                cell = Cell(tier="docker", workload="image.layers",
                            params={"layers": n, "merged": merged, "size_mb": 4})
                for rep in range(6):
                    noise = float(np.exp(rng.normal(0, 0.01)))
                    for metric, unit, value in (
                            ("pull_s", "s", 0.5 if merged else 0.5 + 0.1 * (n - 1)),
                            ("first_start_ms", "ms", 200.0)):
                        out.write(json.dumps({
                            "v": FORMAT_VERSION, "run_id": "layers-run",
                            "cell": cell.model_dump(), "repetition": rep, "metric": metric,
                            "value": value * noise, "unit": unit, "direction": "lower",
                            "timestamp": 1.0, "metadata": {}}) + "\n")
    return path


def test_report_shows_layer_counts_and_when_merging_pays_off(tmp_path: Path) -> None:
    from bench.analysis.frame import load
    from bench.report import layers as section
    from bench.report.build import Report
    from bench.report.page import Page

    run = load(layer_run(tmp_path))
    page = Page("t", "t")
    section.section(Report([run], page))
    html = "".join(str(body) for _, _, body in page.sections)
    assert "pull_s: merging pays off from 4 layers on" in html  # 0.9 s vs 0.5 s
    assert "(at 64 layers: 6.78 -&gt; 0.5" in html
    assert "first_start_ms: merging did not pay off" in html
    assert "16 merged into 1" in html
    assert "<script>alert(1)" not in html and "kvm takes no part" in html
    empty = Page("t", "t")
    section.section(Report([], empty))
    assert not empty.sections
