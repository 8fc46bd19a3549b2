"""`bench doctor` (what is ready, what is not, and the fix) and `bench setup` (make it ready)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from bench.core import image, procs
from bench.core.errors import BenchError
from bench.tiers.registry import TIERS
from bench.workloads import WORKLOADS

CORE_PACKAGES = ("mmdebstrap", "util-linux", "iproute2", "e2fsprogs", "procps")
IMAGE_PATHS = ("usr/bin", "usr/local/bin", "bin")


@dataclass(frozen=True)
class Check:
    kind: str  # tier | workload | core
    name: str
    ok: bool
    reason: str = ""
    fix: str = ""


def missing_packages(packages: list[str]) -> list[str]:
    """Packages not installed, per dpkg."""
    if not packages:
        return []
    done = procs.run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n", *packages],
                     check=False, timeout=60)
    installed = {line.split()[0] for line in done.stdout.splitlines()
                 if line.endswith(" installed")}
    return [p for p in packages if p not in installed]


def all_packages() -> list[str]:
    found = list(CORE_PACKAGES)
    for tier in TIERS.values():
        found += [p for p in tier.packages if p not in found]
    return found


def _in_image(rootfs: Path, tool: str) -> bool:
    return any((rootfs / d / tool).exists() for d in IMAGE_PATHS)


def checks() -> list[Check]:
    found = []
    if os.geteuid() != 0:
        found.append(Check("core", "root", False, "bench runs as root (chroot, mounts, cgroups).",
                           "run bench with sudo or as root."))
    else:
        found.append(Check("core", "root", True))
    if shutil.which("mmdebstrap") is None:
        found.append(Check("core", "mmdebstrap", False, "mmdebstrap is not installed.",
                           "run `bench setup`."))
    else:
        found.append(Check("core", "mmdebstrap", True))
    from bench.cli.doctor_cgroups import status as cgroup_status

    ok, found_cgroups, fix = cgroup_status()
    found.append(Check("core", "cgroups", ok, found_cgroups, fix))
    img = image.find()
    if img is None:
        found.append(Check("core", "bench image", False, "the bench image is not built.",
                           "run `bench image build` (or `bench setup`)."))
    else:
        found.append(Check("core", "bench image", True, f"{img.hash} at {img.path}"))
    for name, cls in TIERS.items():
        availability = cls().available()
        found.append(Check("tier", name, availability.ok, availability.reason, availability.fix))
    from bench.tiers.docker import registry  # image.layers pushes to it and pulls from it

    up = registry.available()
    found.append(Check("core", "registry", up.ok, up.reason or registry.address(), up.fix))
    for name, workload in WORKLOADS.items():
        if img is None:
            found.append(Check("workload", name, False, "needs the bench image.",
                               "run `bench image build`."))
            continue
        absent = [t for t in workload.tools if not _in_image(img.rootfs, t)]
        found.append(Check("workload", name, not absent,
                           f"missing in the image: {', '.join(absent)}" if absent else "",
                           "rebuild it: `bench image build --force`" if absent else ""))
    return found


def missing_required(found: list[Check], required: list[str]) -> list[Check]:
    """The checks named in `required` (tiers, workloads, core parts) that are not ready."""
    by_name = {c.name: c for c in found}
    unknown = [name for name in required if name not in by_name]
    if unknown:
        raise BenchError(f"bench doctor --require names unknown parts: {', '.join(unknown)}.",
                         f"name some of: {', '.join(by_name)}.")
    return [by_name[name] for name in required if not by_name[name].ok]


def preflight(workloads: list[str], img: image.Image) -> None:
    """Refuse to start a run that would fail half-way for a tool missing from the image."""
    missing = {name: [t for t in WORKLOADS[name].tools if not _in_image(img.rootfs, t)]
               for name in workloads}
    missing = {k: v for k, v in missing.items() if v}
    if missing:
        listing = "; ".join(f"{name} needs {', '.join(tools)}" for name, tools in missing.items())
        raise BenchError(f"The bench image {img.hash} lacks tools this scenario needs: {listing}.",
                         "rebuild the image with `bench image build --force`, "
                         "then check with `bench doctor`.")


def setup(log: object = print) -> None:
    """Install the Debian packages of every tier, start their daemons, build the image."""
    say = log if callable(log) else print
    missing = missing_packages(all_packages())
    if missing:
        say(f"installing Debian packages: {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        procs.run(["apt-get", "update", "-qq"], env=env, timeout=900)
        procs.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                  env=env, timeout=3600)
    else:
        say("Debian packages: all present")
    for name, cls in TIERS.items():
        for line in cls().ensure_running():
            say(f"{name}: {line}")
    image.build(log=say)
