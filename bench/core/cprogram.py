"""bench's small C programs (bench/native/*.c) that run on the host, built with gcc on first use
into a cache directory keyed by the source's hash (`BENCH_CACHE_DIR`, default
/var/cache/bench). Static where the C library allows: no dynamic loader at each start."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from bench.core import procs
from bench.core.settings import settings


def source(file: str) -> bytes:
    return (resources.files("bench") / "native" / file).read_bytes()


def build(name: str, file: str) -> tuple[Path | None, str]:
    """The built program (compiled now if not cached) and a word on how, or (None, why not)."""
    code = source(file)
    digest = hashlib.sha256(code).hexdigest()[:16]
    target = settings().cache_dir / f"{Path(file).stem}-{digest}" / name
    if os.access(target, os.X_OK):
        return target, f"cached {target}"
    gcc = shutil.which("gcc")
    if gcc is None:
        return None, "gcc not found"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp, file)
        src.write_bytes(code)
        out = Path(tmp, name)
        for static in (["-static"], []):
            done = procs.run([gcc, "-O2", "-Wall", *static, "-o", str(out), str(src)],
                             timeout=120, check=False)
            if done.returncode == 0:
                break
        if done.returncode != 0:
            return None, f"gcc failed ({done.stderr.strip()[:300]})"
        os.replace(out, target)  # atomic: a concurrent build ends with the same file
    return target, f"built {target}"
