"""The bench image: one root file system, built once with mmdebstrap, run by every tier.

The image is cached under the hash of its recipe (packages, suite, our native sources, the
pyperf version). Its manifest records the versions of everything inside.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import platform
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from bench.core import faults
from bench.core.errors import ImageError
from bench.core.procs import run
from bench.core.settings import settings

RECIPE_VERSION = 2  # bump when the build steps below change
PACKAGES = (
    "fio",
    "iperf3",
    "sysbench",
    "sockperf",
    "python3",
    "python3-psutil",
    "procps",
    "iproute2",
    "gcc",
    "libc6-dev",
)
PYPERF_VERSION = "2.11.0"
# sha256 of pyperf-2.11.0-py3-none-any.whl as PyPI lists it: pip refuses anything else
# (--require-hashes) and the wheel is checked again before it is unpacked into the image
PYPERF_WHEEL_SHA256 = "11c0034bb29a79796417a6e5a7852ff4814a33cce24aeb6d268676c3a52dfda6"
NATIVE_TOOLS = {"bench-memprobe": "memprobe.c", "bench-stamp": "stamp.c"}
PYBENCH_PATH = "/usr/local/share/bench/pybench.py"
TOOL_VERSION_ARGV = {
    "fio": ["fio", "--version"],
    "iperf3": ["iperf3", "--version"],
    "sysbench": ["sysbench", "--version"],
    "sockperf": ["sockperf", "--version"],
    "python3": ["python3", "--version"],
    "pyperf": ["python3", "-c", "import pyperf; print(pyperf.__version__)"],
}


def images_dir() -> Path:
    return settings().image_dir


def host_suite() -> str:
    """The host's Debian codename: the image uses the same release as the host's apt sources."""
    fields = dict(
        line.split("=", 1)
        for line in Path("/etc/os-release").read_text().splitlines()
        if "=" in line
    )
    codename = fields.get("VERSION_CODENAME", "").strip('"')
    if not codename:
        raise ImageError(
            "This host's /etc/os-release names no VERSION_CODENAME.",
            "build the image on a Debian (or derived) host with apt sources for its release.",
        )
    return codename


def host_sources(suite: str) -> list[Path]:
    """The host's apt source files for `suite`, given to mmdebstrap instead of a mirror address."""
    candidates = [Path("/etc/apt/sources.list")]
    candidates += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    candidates += sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    found = []
    for path in candidates:
        if not path.is_file():
            continue
        live = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        if any(suite in ln for ln in live):
            found.append(path)
    if not found:
        raise ImageError(
            f"No apt source of this host names the release '{suite}'.",
            "add the Debian archive for this release to /etc/apt/sources.list.d/.",
        )
    return found


def recipe() -> dict[str, Any]:
    native = resources.files("bench") / "native"
    sources = {
        name: hashlib.sha256((native / name).read_bytes()).hexdigest()
        for name in [*NATIVE_TOOLS.values(), "pybench.py"]
    }
    return {
        "recipe_version": RECIPE_VERSION,
        "suite": host_suite(),
        "arch": platform.machine(),
        "packages": sorted(PACKAGES),
        "pyperf": PYPERF_VERSION,
        "native_sources": sources,
    }


def recipe_hash(data: dict[str, Any]) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class Image:
    hash: str
    path: Path  # the directory holding rootfs/ and manifest.json

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    @property
    def manifest(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path / "manifest.json").read_text())
        return data

    @property
    def tag(self) -> str:
        return f"bench-image:{self.hash}"


def find() -> Image | None:
    """The image for the current recipe, if it has been built."""
    digest = recipe_hash(recipe())
    path = images_dir() / digest
    if (path / "manifest.json").is_file() and (path / "rootfs").is_dir():
        return Image(digest, path)
    return None


def require() -> Image:
    image = find()
    if image is None:
        raise ImageError(
            "The bench image for this version of bench has not been built.",
            "run `bench image build` (about a minute; `bench setup` does it too).",
        )
    return image


@contextlib.contextmanager
def _build_lock(wait: bool = True) -> Iterator[bool]:
    """Held while an image is built; with wait=False, yields False if a build is running."""
    images_dir().mkdir(parents=True, exist_ok=True)
    with open(images_dir() / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True


def _remove_staging() -> list[str]:
    """With the build lock held: the staging directories of builds that were killed."""
    removed = []
    for staging in sorted(images_dir().glob("*.build-*")):
        shutil.rmtree(staging, ignore_errors=True)
        removed.append(f"staging directory {staging}")
    return removed


def remove_dead_builds() -> list[str]:
    """What killed image builds left (`bench cleanup`); nothing while a build is running."""
    if not images_dir().is_dir():
        return []
    with _build_lock(wait=False) as held:
        return _remove_staging() if held else []


def build(force: bool = False, log: Any = print) -> Image:
    """Build the image for the current recipe (or return the cached one)."""
    if shutil.which("mmdebstrap") is None:
        raise ImageError(
            "mmdebstrap is not installed; it builds the bench image.",
            "run `bench setup` (or `apt-get install mmdebstrap`).",
        )
    data = recipe()
    digest = recipe_hash(data)
    final = images_dir() / digest
    with _build_lock():
        if not force and (final / "manifest.json").is_file():
            return Image(digest, final)
        _remove_staging()
        staging = Path(tempfile.mkdtemp(prefix=f"{digest}.build-", dir=images_dir()))
        try:
            faults.point("image.build")
            started = time.monotonic()
            rootfs = staging / "rootfs"
            log(f"building bench image {digest} with mmdebstrap ({data['suite']}) ...")
            run(
                [
                    "mmdebstrap",
                    "--variant=apt",
                    "--include=" + ",".join(sorted(PACKAGES)),
                    data["suite"],
                    str(rootfs),
                    *[str(p) for p in host_sources(data["suite"])],
                ],
                timeout=1800,
            )
            _install_native(rootfs)
            _install_pyperf(rootfs)
            manifest = _manifest(rootfs, data, digest, time.monotonic() - started)
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    log(f"bench image {digest} ready at {final}")
    return Image(digest, final)


def _install_native(rootfs: Path) -> None:
    native = resources.files("bench") / "native"
    src_dir = rootfs / "usr/local/src/bench"
    src_dir.mkdir(parents=True, exist_ok=True)
    for binary, source in NATIVE_TOOLS.items():
        (src_dir / source).write_bytes((native / source).read_bytes())
        run(
            ["chroot", str(rootfs), "gcc", "-O2", "-Wall", "-o",
             f"/usr/local/bin/{binary}", f"/usr/local/src/bench/{source}"],
            timeout=300,
        )
    (rootfs / "scratch").mkdir(exist_ok=True)  # disk workloads' mount point on every tier
    share = rootfs / PYBENCH_PATH.lstrip("/")
    share.parent.mkdir(parents=True, exist_ok=True)
    share.write_bytes((native / "pybench.py").read_bytes())


def _install_pyperf(rootfs: Path) -> None:
    """pyperf is only on PyPI: fetch its (pure-Python) wheel with pip and unpack it in the image."""
    with tempfile.TemporaryDirectory() as tmp:
        pinned = Path(tmp) / "requirements.txt"
        pinned.write_text(f"pyperf=={PYPERF_VERSION} --hash=sha256:{PYPERF_WHEEL_SHA256}\n")
        run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--require-hashes", "-d", str(Path(tmp) / "wheels"), "-r", str(pinned)],
            timeout=600,
        )
        wheel = verified_wheel(Path(tmp) / "wheels")
        pythons = sorted((rootfs / "usr/lib").glob("python3.*[0-9]"))
        if not pythons:
            raise ImageError("The image has no python3.",
                             "rebuild it with `bench image build --force`.")
        site = rootfs / "usr/local/lib" / pythons[-1].name / "dist-packages"
        site.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(site)


def verified_wheel(directory: Path) -> Path:
    """The one pyperf wheel in `directory`, if its sha256 is the pinned one; else ImageError."""
    wheels = sorted(directory.glob("pyperf-*.whl"))
    if len(wheels) != 1:
        raise ImageError(f"Expected one pyperf wheel in {directory}, found {len(wheels)}.",
                         "check pip's index configuration, then `bench image build --force`.")
    digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
    if digest != PYPERF_WHEEL_SHA256:
        raise ImageError(f"{wheels[0].name} has sha256 {digest}, not the pinned "
                         f"{PYPERF_WHEEL_SHA256}; it is not the wheel PyPI publishes.",
                         "check pip's index and proxy configuration (something served another "
                         "file), then `bench image build --force`.")
    return wheels[0]


def _manifest(rootfs: Path, data: dict[str, Any], digest: str, seconds: float) -> dict[str, Any]:
    listing = run(
        ["chroot", str(rootfs), "dpkg-query", "-W", "-f", "${Package}\t${Version}\n"], timeout=60
    ).stdout
    packages = dict(line.split("\t", 1) for line in listing.splitlines() if "\t" in line)
    tools = {}
    for name, argv in TOOL_VERSION_ARGV.items():
        done = run(["chroot", str(rootfs), *argv], timeout=60, check=False)
        text = (done.stdout or done.stderr).strip().splitlines()
        tools[name] = text[0] if text else "unknown"
    size = int(run(["du", "-sb", str(rootfs)], timeout=600).stdout.split()[0])
    return {
        "hash": digest,
        "recipe": data,
        "built_at": time.time(),
        "build_seconds": round(seconds, 1),
        "size_bytes": size,
        "tools": tools,
        "packages": packages,
    }
