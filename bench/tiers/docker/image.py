"""The bench image in the engine: imported once per image hash as `bench-image:<hash>`."""

from __future__ import annotations

import contextlib
import fcntl
import subprocess
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from bench.core import image as image_mod
from bench.core.errors import BenchError
from bench.core.image import Image
from bench.core.lazy import lazy

if TYPE_CHECKING:
    import docker
    import requests
else:
    docker = lazy("docker")
    requests = lazy("requests")


HASH_LABEL = "bench.image.hash"
IMAGE_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "HOME=/root", "LANG=C.UTF-8", "TERM=dumb")


def import_image(engine: docker.DockerClient, img: Image, log: Any = None) -> tuple[str, bool]:
    """`bench-image:<hash>` on the engine, imported from the image's root if absent.

    Returns (image id, whether it was imported now). A lock keeps two bench processes on this
    host from importing the same image at once.
    """
    lock_path = image_mod.images_dir() / ".docker-import.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(docker.errors.ImageNotFound):
            found = engine.images.get(img.tag)
            if (found.labels or {}).get(HASH_LABEL) == img.hash:
                return str(found.id), False
        if log:
            log(f"docker: importing the bench image as {img.tag} ...")
        changes = [f"LABEL {HASH_LABEL}={img.hash}",
                   f"LABEL bench.core.image.suite={img.manifest['recipe']['suite']}",
                   "LABEL bench.managed=true",
                   *[f"ENV {pair}" for pair in IMAGE_ENV], "WORKDIR /"]
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "--xattrs", "-C", str(img.rootfs), "-c", "."],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        assert tar.stdout is not None
        out = tar.stdout

        def chunks() -> Iterator[bytes]:
            while block := out.read(1 << 20):
                yield block

        repository, tag = img.tag.split(":", 1)
        saved = engine.api.timeout
        engine.api.timeout = 1800
        try:
            result = engine.api.import_image_from_stream(
                chunks(), repository=repository, tag=tag, changes=changes)
        finally:
            engine.api.timeout = saved
            tar.stdout.close()
            _, err = tar.communicate()
        if tar.returncode != 0:
            raise BenchError(f"tar of {img.rootfs} failed ({tar.returncode}): "
                             f"{err.decode()[-300:]}",
                             "rebuild the image with `bench image build --force`.")
        if '"error"' in str(result):
            raise BenchError(f"The engine refused the bench image: {str(result)[-300:]}",
                             "see the engine's log (docker info, /var/log/bench-dockerd.log).")
        return str(engine.images.get(img.tag).id), True


