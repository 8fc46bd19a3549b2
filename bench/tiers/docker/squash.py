"""`bench image squash`: an image on the engine merged into one layer, the same files.

The engine saves the image (`docker save` format: manifest.json, the config, one tar per
layer), the layers are squashed (bench.core.oci.squash: whiteouts applied, the topmost version
of each path kept), and the result is loaded back with the old image's configuration over one
layer. Everything in between lives in a temporary directory.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from bench.core import oci
from bench.core.errors import BenchError


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        for chunk in iter(lambda: data.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def squash_image(engine: Any, source: str, target: str) -> dict[str, Any]:
    """Load `target`: `source` with its layers merged into one. Returns what was done."""
    from docker.errors import ImageNotFound

    try:
        image = engine.images.get(source)
    except ImageNotFound:
        raise BenchError(f"The engine has no image {source!r}.",
                         "pull or build it first (`docker images` lists what is there).") from None
    with tempfile.TemporaryDirectory(prefix="bench-squash-") as tmp:
        work = Path(tmp)
        saved = work / "saved.tar"
        with open(saved, "wb") as out:
            for chunk in image.save(named=False):
                out.write(chunk)
        unpacked = work / "saved"
        with tarfile.open(saved) as archive:  # the engine's own export
            archive.extractall(unpacked, filter="data")
        saved.unlink()
        manifest = json.loads((unpacked / "manifest.json").read_text())[0]
        config = json.loads((unpacked / manifest["Config"]).read_text())
        layers = [unpacked / name for name in manifest["Layers"]]
        out_dir = work / "out"
        layer = out_dir / "layer" / "layer.tar"
        layer.parent.mkdir(parents=True)
        with open(layer, "wb") as out:
            entries = oci.squash(layers, out)
        diff_id = f"sha256:{_sha256_file(layer)}"
        config["rootfs"] = {"type": "layers", "diff_ids": [diff_id]}
        config["history"] = [{"created": config.get("created", oci.EPOCH),
                              "created_by": f"bench image squash {source} ({len(layers)} "
                                            "layers merged)"}]
        body = json.dumps(config, sort_keys=True).encode()
        config_name = f"{hashlib.sha256(body).hexdigest()}.json"
        (out_dir / config_name).write_bytes(body)
        (out_dir / "manifest.json").write_text(json.dumps(
            [{"Config": config_name, "RepoTags": [target], "Layers": ["layer/layer.tar"]}]))
        bundle = work / "squashed.tar"
        with tarfile.open(bundle, "w") as archive:
            for name in ("manifest.json", config_name, "layer/layer.tar"):
                archive.add(out_dir / name, arcname=name)
        with open(bundle, "rb") as data:
            loaded = engine.images.load(data)
    return {"source": source, "target": target, "layers_before": len(layers),
            "entries": entries, "diff_id": diff_id, "image": loaded[0].id if loaded else ""}
