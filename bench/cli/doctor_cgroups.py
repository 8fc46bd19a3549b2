"""`bench doctor` on cgroups: which version, which controllers bench's subtrees get, and what
to do when bench runs in a systemd unit that was not delegated its cgroup subtree."""

from __future__ import annotations

import os
from pathlib import Path

from bench.kernel import cgroups

SUBTREES = ("bench-ns", cgroups.ROOT_NAME)  # the ns tier's groups, selftest's groups


def _words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def v2_status(root: Path, self_cgroup: str,
              writable: bool | None = None) -> tuple[bool, str, str]:
    """(ok, what was found, the fix) for a cgroup v2 tree at `root`; `self_cgroup` is the text
    of /proc/self/cgroup; `writable`: may bench make groups under the root (None: look)."""
    available = _words(root / "cgroup.controllers")
    enabled = _words(root / "cgroup.subtree_control")
    missing = [c for c in cgroups.V2_CONTROLLERS if c not in available]
    parts = [f"cgroup v2 at {root}; controllers available: {' '.join(available) or 'none'}; "
             f"enabled for children of the root: {' '.join(enabled) or 'none'}"]
    for name in SUBTREES:
        if (root / name).is_dir():
            parts.append(f"enabled in {root / name} (bench's subtree): "
                         f"{' '.join(_words(root / name / 'cgroup.subtree_control')) or 'none'}")
    own = next((line.split("::", 1)[1] for line in self_cgroup.splitlines()
                if line.startswith("0::")), "/")
    parts.append(f"bench runs in {own}")
    fix = ""
    if missing:
        fix = (f"the kernel or the init system keeps {', '.join(missing)} off the v2 tree "
               "(bound to a v1 hierarchy?): boot with systemd.unified_cgroup_hierarchy=1 and "
               "cgroup_no_v1=all.")
    if writable is None:
        writable = os.access(root / "cgroup.subtree_control", os.W_OK) and \
            os.access(root, os.W_OK)
    if not writable:
        unit = next((p for p in reversed(own.split("/")) if p.endswith((".service", ".scope"))),
                    "")
        where = f"the systemd unit {unit}" if unit else f"the cgroup {own}"
        fix = (f"bench cannot make groups under {root}: it runs in {where} without delegation. "
               "Run it as root in a delegated scope: `systemd-run --scope -p Delegate=yes "
               "bench ...`, or add Delegate=yes (and User=root) to the unit.")
    return not fix, "; ".join(parts), fix


def status() -> tuple[bool, str, str]:
    try:
        found = cgroups.detect()
    except cgroups.CgroupError as exc:
        return False, exc.cause, exc.fix
    if found.version == 1:
        return True, "cgroup v1: " + ", ".join(f"{c} at {p}" for c, p in
                                                sorted(found.roots.items())), ""
    return v2_status(found.unique_roots[0], Path("/proc/self/cgroup").read_text())
