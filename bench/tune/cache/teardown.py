"""Removing what a cache state file lists: after a run, and after a crash (`bench cleanup`)."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from bench.core import procs
from bench.core.errors import BenchError
from bench.kernel import sysmount
from bench.tune import journal as journal_mod
from bench.tune.cache.devices import _write, stop_bcache
from bench.tune.cache.probe import BLKIO
from bench.tune.cache.shell import LocalShell

CLEANUP_FIX = "see the error of each, fix its cause, then run `bench cleanup` again."


def failed_text(failed: list[str], removed: list[str]) -> str:
    done = f" (removed: {', '.join(removed)})" if removed else ""
    return f"Could not remove {len(failed)} cache device part(s): {'; '.join(failed)}{done}."


def _undo(state: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Remove what a state file lists, newest first; keep going past errors. Returns (what was
    removed, what could not be removed and why)."""
    removed: list[str] = []
    failed: list[str] = []
    for item in reversed(state.get("made", [])):
        kind = item["kind"]
        try:
            if kind == "mount":
                for point in sysmount.mounts_under(item["path"]):
                    try:
                        sysmount.umount(point, lazy=False)
                    except OSError:
                        sysmount.umount(point)  # busy: detach now, freed when released
                    removed.append(f"mount {point}")
            elif kind == "throttle":
                base = Path("/") / BLKIO
                for name in ("read_bps_device", "write_bps_device", "read_iops_device",
                             "write_iops_device"):
                    with contextlib.suppress(OSError):
                        _write(base / f"blkio.throttle.{name}", f"{item['majmin']} 0")
                removed.append(f"blkio throttle {item['majmin']}")
            elif kind == "bcache":
                stop_bcache(LocalShell(), item)
                removed.append(f"bcache {item['dev']}")
            elif kind == "dm":
                if _dm_exists(item["name"]):
                    procs.run(["dmsetup", "remove", "--retry", item["name"]], timeout=60)
                    removed.append(f"device-mapper {item['name']}")
            elif kind == "loop":
                if _loop_backs(item["dev"], item["file"]):
                    procs.run(["losetup", "-d", item["dev"]], timeout=60)
                    removed.append(f"loop {item['dev']} ({item['file']})")
            elif kind == "zram":
                if _remove_zram(int(item["id"])):
                    removed.append(f"zram{item['id']}")
            elif kind == "file":
                Path(item["path"]).unlink(missing_ok=True)
        except (BenchError, OSError) as exc:
            failed.append(f"{kind} {item}: {exc}")
    directory = state.get("dir")
    if directory and Path(directory).exists() and not sysmount.mounts_under(directory):
        shutil.rmtree(directory, ignore_errors=True)
    return removed, failed


def _remove_zram(number: int, timeout: float = 60.0) -> bool:
    """Reset and remove zramN; a lazily unmounted file system may hold it for a moment."""
    if not Path(f"/sys/block/zram{number}").exists():
        return False
    deadline = time.monotonic() + timeout
    while True:
        try:
            _write(f"/sys/block/zram{number}/reset", "1")
            _write("/sys/class/zram-control/hot_remove", str(number))
            return True
        except OSError as exc:
            if time.monotonic() > deadline:
                raise OSError(exc.errno, f"zram{number} stays busy: {exc.strerror}") from None
            time.sleep(0.1)


def _dm_exists(name: str) -> bool:
    """Is there a device-mapper device of this name (sysfs: works without udev)?"""
    for path in Path("/sys/block").glob("dm-*/dm/name"):
        with contextlib.suppress(OSError):
            if path.read_text().strip() == name:
                return True
    return False


def _loop_backs(dev: str, file: str) -> bool:
    """Is `dev` still the loop device over `file` (and not reused by someone else)?"""
    name = Path(dev).name
    try:
        backing = (Path("/sys/block") / name / "loop/backing_file").read_text().strip()
    except OSError:
        return False
    return backing.removesuffix(" (deleted)") == file


def cleanup(run_id: str | None, state_dir: Path | None = None) -> list[str]:
    """Remove cache devices that runs no longer alive left behind (`bench cleanup`)."""
    base = state_dir or journal_mod.state_dir()
    removed: list[str] = []
    failed: list[str] = []
    if not base.is_dir():
        return removed
    for path in sorted(base.glob(f"cache-{run_id or '*'}.json")):
        session = path.name[len("cache-"):-len(".json")]
        if journal_mod.is_live(session, base):
            continue
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            failed.append(f"{session}: unreadable state file {path}: {exc}")
            continue
        done, not_done = _undo(state)
        removed += [f"{session}: {what}" for what in done]
        failed += [f"{session}: {what}" for what in not_done]
        if not not_done:  # keep the list of what is left for the next `bench cleanup`
            path.unlink(missing_ok=True)
    if failed:
        raise BenchError(failed_text(failed, removed), CLEANUP_FIX)
    return removed
