"""A mount namespace of bench's own, kept alive by a small holder process.

The host tier's chroot needs /proc, /sys, /dev, a tmpfs and the scratch directory mounted
under the bench image's root. Made in the machine's mount namespace, those mounts show in
everyone's /proc/mounts, and a second /sys/fs/cgroup confuses programs that walk the mount
table (libvirt finds a domain's cgroups that way as it starts it, and its live CPU switch,
`virDomainSetSchedulerParameters`, then writes under the chroot's read-only /sys).

So a holder (`python -S`, a few MB) unshares its mount namespace (CLONE_NEWNS only: the pid,
net, uts, ipc and cgroup namespaces stay the host's), turns mount propagation to slave
(nothing it mounts reaches the host), makes the mounts, pivots into the new root and drops
the old one (its namespace holds only the root's mounts: it pins no other file system), says
"ready" and waits. Commands enter it with setns(2) (bench-mntexec, bench/native/mntexec.c,
static; `nsenter` without gcc; `enter` in a forked child) and stay bench's children, in
bench's session and cgroup: only the mount table differs. The namespace and its mounts
vanish when the holder dies: when bench closes its stdin, when bench dies (PDEATHSIG, or
stdin at EOF), or when `kill_holders` finds it left over (its command line names the root).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.kernel import linuxns, sysmount

MARKER = "bench-mount-holder"
START_TIMEOUT = 30.0
BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
        "from bench.kernel.mountns import hold; hold(sys.argv[3:])")


def _apply(root: str, mount: dict[str, Any]) -> None:
    target = Path(root) / mount["target"].lstrip("/")
    if mount.get("bind"):
        sysmount.bind(mount["source"], target, readonly=bool(mount.get("readonly")))
    else:
        sysmount.mount(mount["source"], target, mount["fstype"], int(mount.get("flags", 0)),
                       mount.get("data"))


def _pivot(root: str) -> str:
    """Make `root` the namespace's root, as runc does (pivot_root(".", ".") needs no directory
    for the old root in a read-only image). Where pivot_root is refused (a root that is not
    attached to a parent mount), a chroot: then the namespace still holds copies of the host's
    mounts. Returns which of the two it was."""
    old = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    new = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fchdir(new)
        try:
            linuxns.pivot_root(".", ".")
        except OSError:
            os.chroot(".")
            return "chroot"
        os.fchdir(old)  # the old root, stacked on the new one: detach it
        sysmount.umount(".", lazy=True)
        return "pivot_root"
    finally:
        os.chdir("/")
        os.close(old)
        os.close(new)


def hold(args: list[str]) -> None:
    """The holder's body: args are the bench PID, the root and the mounts (JSON)."""
    linuxns.die_with_parent(signal.SIGKILL)
    parent, root, plan = int(args[0]), args[1], json.loads(args[2])
    if os.getppid() != parent:  # bench died before the line above
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # bench decides when the namespace goes
    try:
        linuxns.unshare(linuxns.CLONE_NEWNS)
        sysmount.mount("none", "/", None, sysmount.MS_REC | sysmount.MS_SLAVE)
        for mount in plan:
            _apply(root, mount)
        how = _pivot(root)
    except OSError as exc:
        print(f"error {exc}", flush=True)
        return
    print(f"ready {how}", flush=True)
    sys.stdin.buffer.read()  # until bench closes it (or dies)


class MountHolder:
    """bench's handle on a holder: `argv` and `enter` run commands inside its namespace.
    Make it from a thread that lives as long as it (PDEATHSIG fires when the creating thread
    ends): bench's main thread."""

    def __init__(self, root: Path, mounts: list[dict[str, Any]]) -> None:
        package_parent = str(Path(__file__).resolve().parents[2])
        self.root = root
        # its own process group (a Ctrl-C at the terminal is bench's to handle), bench's
        # session; its stdin is a pipe only bench holds: EOF when bench is gone
        self.proc = subprocess.Popen(
            [sys.executable, "-S", "-c", BOOT, package_parent, MARKER, str(os.getpid()),
             str(root), json.dumps(mounts)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            process_group=0, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
        line = self.proc.stdout.readline().decode(errors="replace").strip() if ready else ""
        if not line.startswith("ready "):
            self.proc.kill()
            rest = self.proc.stdout.read().decode(errors="replace").strip()
            self.stop()
            raise OSError(f"the mount namespace holder for {root} failed: "
                          f"{line or f'no answer in {START_TIMEOUT:g} s'} {rest[-2000:]}".strip())
        self.how = line.split()[1]
        self.pid = self.proc.pid
        from bench.core import cprogram  # (not in the holder: it would slow its start)

        self.helper, built = cprogram.build("bench-mntexec", "mntexec.c")
        self.entry = "bench-mntexec" if self.helper is not None else f"nsenter ({built})"

    @property
    def root_path(self) -> Path:
        """The namespace's root as seen from the host (through the holder's /proc entry)."""
        return Path(f"/proc/{self.pid}/root")

    def argv(self, argv: list[str]) -> list[str]:
        """argv run inside: the helper joins the mount namespace, takes the holder's root and
        "/" as working directory, and execs argv (one exec more, as chroot(8) was)."""
        if self.helper is not None:
            return [str(self.helper), str(self.pid), *argv]
        nsenter = shutil.which("nsenter") or "/usr/bin/nsenter"
        return [nsenter, f"--target={self.pid}", "--mount", "--root", "--wd", "--", *argv]

    def enter(self) -> None:
        """For a forked child (a preexec): what `argv` does, in this process."""
        enter(self.pid)

    def stop(self) -> None:
        """The namespace and every mount in it go with the holder."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def enter(holder: int) -> None:
    """Join the holder's mount namespace and take its root (a single-threaded process only)."""
    root = os.open(f"/proc/{holder}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    ns = os.open(f"/proc/{holder}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        linuxns.setns(ns, linuxns.CLONE_NEWNS)
        os.fchdir(root)
        os.chroot(".")
        os.chdir("/")
    finally:
        os.close(ns)
        os.close(root)


def _inside(holder: int, call: Callable[[], None]) -> None:
    """Run `call` in a forked child that entered the holder's namespace (setns needs a
    single-threaded process); its error comes back through a pipe."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        code = 0
        try:
            os.close(read)
            enter(holder)
            call()
        except BaseException as exc:  # everything goes back to bench
            os.write(write, str(exc).encode()[:4000])
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        said = pipe.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) != 0:
        raise OSError(said or f"the child that entered holder {holder}'s namespace failed")


def bind_into(holder: int, source: Path | str, target: str) -> None:
    """Bind `source` (a path of the host's mount table) on `target` inside the namespace:
    a detached copy of its mounts, moved in (a bind cannot cross namespaces)."""
    tree = sysmount.clone_tree(source)
    try:
        _inside(holder, lambda: sysmount.attach(tree, target))
    finally:
        os.close(tree)


def unmount_in(holder: int, target: str) -> None:
    """Unmount the top mount on `target` inside the namespace (what `bind_into` put there)."""
    def unmount() -> None:
        try:
            sysmount.umount(target, lazy=False)
        except OSError:
            sysmount.umount(target)

    _inside(holder, unmount)


def holders(under: Path | str) -> list[int]:
    """PIDs of holders whose root is at or below `under` (any bench's: found by command line)."""
    prefix = str(under).rstrip("/")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        at = args.index(MARKER.encode()) if MARKER.encode() in args else len(args)
        root = os.fsdecode(args[at + 2]) if at + 2 < len(args) else ""
        if root and (root == prefix or root.startswith(prefix + "/")):
            found.append(int(entry.name))
    return found


def kill_holders(under: Path | str) -> list[str]:
    killed = []
    for pid in holders(under):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed.append(f"mount namespace holder {pid}")
    return killed
