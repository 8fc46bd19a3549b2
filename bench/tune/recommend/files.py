"""The files a recommendation leaves for ops: a TuneD profile, a sysctl.d file, a udev rule for
per-device values, the rollback script, and the evidence (recommendation.json and .md)."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from bench.tune import catalog as catalog_mod
from bench.tune.catalog import Catalog, Tunable
from bench.tune.recommend.analysis import Recommendation
from bench.tune.recommend.present import markdown
from bench.tune.tuner import key_text

STOCK_PROFILE = "throughput-performance"


def _sysctl_name(tunable: Tunable) -> str:
    return tunable.path.removeprefix("/proc/sys/").replace("/", ".")


def write_files(rec: Recommendation, out: Path, include: str = STOCK_PROFILE) -> list[Path]:
    """The TuneD profile, a sysctl.d file, a udev rule (per-device values) and the rollback
    script; plus recommendation.json and recommendation.md. Returns the paths written."""
    catalog = catalog_mod.load()
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    head = (f"# Written by `bench tune recommend {rec.run_id}` ({stamp} UTC) for host "
            f"{rec.host}.\n# Only settings that beat the current ones on some workload and tier "
            "and hurt none\n# (corrected p < {alpha}); see recommendation.md for the evidence.\n"
            ).replace("{alpha}", f"{rec.alpha:g}")
    sysctl, vm, disk, sysfs = [], [], [], []
    udev = []
    for name, value in rec.apply.items():
        t = catalog.get(name)
        text = t.render(value)
        if t.tuned == "sysctl":
            sysctl.append(f"{_sysctl_name(t)} = {text}")
        elif t.tuned.startswith("vm."):
            vm.append(f"{t.tuned[3:]}={text}")
        elif t.per_device and rec.device:
            attr = t.path.split("{device}/", 1)[1]
            udev.append(f'ACTION=="add|change", KERNEL=="{rec.device}", ATTR{{{attr}}}="{text}"')
            if t.tuned.startswith("disk."):
                disk.append(f"{t.tuned[5:]}={text}")
            else:
                sysfs.append(f"{t.path.replace('{device}', rec.device)}={text}")
    nothing = "" if rec.apply else "# No setting beat the current ones: nothing to apply.\n"
    profile_dir = out / f"bench-{rec.run_id}"
    profile_dir.mkdir(exist_ok=True)
    tuned = [head + nothing, "[main]", f"summary=bench: settings that beat the current ones "
             f"(run {rec.run_id})", f"include={include}", ""]
    if sysctl:
        tuned += ["[sysctl]", *(line.replace(" = ", "=") for line in sysctl), ""]
    if vm:
        tuned += ["[vm]", *vm, ""]
    if disk:
        tuned += ["[disk]", f"devices={rec.device}", *disk, ""]
    if sysfs:
        tuned += ["[sysfs]", *sysfs, ""]
    paths = {
        "tuned": profile_dir / "tuned.conf",
        "sysctl": out / f"90-bench-{rec.run_id}.conf",
        "udev": out / f"60-bench-{rec.run_id}.rules",
        "rollback": out / "rollback.sh",
        "json": out / "recommendation.json",
        "md": out / "recommendation.md",
    }
    paths["tuned"].write_text("\n".join(tuned))
    paths["sysctl"].write_text(head + nothing + "# Install: cp this file /etc/sysctl.d/ && "
                               "sysctl --system\n" + "".join(f"{line}\n" for line in sysctl))
    paths["udev"].write_text(head + "# Install: cp this file /etc/udev/rules.d/ && udevadm "
                             "trigger --subsystem-match=block\n"
                             + "".join(f"{line}\n" for line in udev))
    paths["rollback"].write_text(_rollback(rec, catalog, paths))
    paths["rollback"].chmod(0o755)
    paths["json"].write_text(rec.model_dump_json(indent=2))
    paths["md"].write_text(markdown(rec))
    return list(paths.values())


def _rollback(rec: Recommendation, catalog: Catalog, paths: dict[str, Path]) -> str:
    lines = [
        "#!/bin/sh",
        f"# Roll back what `bench tune recommend {rec.run_id}` recommends: write back the values",
        f"# the run's manifest recorded on {rec.host} before the run, and remove the installed",
        "# sysctl.d file and udev rule. (If you switched TuneD profiles, switch back with",
        "# `tuned-adm profile <your previous profile>`.)",
        "# ROOT (default empty) prefixes every path: ROOT=/some/tree ./rollback.sh rehearses it.",
        "set -eu",
        'root="${ROOT:-}"',
        'put() { printf %s "$2" > "$root$1" && echo "restored $1 = $2"; }',
        f'rm -f "$root"/etc/sysctl.d/{shlex.quote(paths["sysctl"].name)} '
        f'"$root"/etc/udev/rules.d/{shlex.quote(paths["udev"].name)}',
    ]
    done: set[str] = set()
    for name in rec.apply:
        t = catalog.get(name)
        members = [t]
        if t.counterpart:
            members.append(catalog.get(t.counterpart))
        if t.counterpart and name in done:
            continue
        if t.counterpart:
            # write back the member that was active (non-zero); the kernel zeroes the other
            bytes_t = next(m for m in members if m.zero_means_unset)
            ratio_t = next(m for m in members if not m.zero_means_unset)
            found_bytes = rec.as_found.get(bytes_t.name, "0")
            members = [bytes_t if found_bytes not in ("0", "") and
                       not found_bytes.startswith("un") else ratio_t]
            done.update({bytes_t.name, ratio_t.name})
        for m in members:
            key = key_text(m.name, rec.device if m.per_device else None)
            value = rec.as_found.get(key, "")
            if not value or value.startswith(("unavailable", "unreadable")):
                lines.append(f"# {key}: no value recorded as found; left alone")
                continue
            path = m.path.replace("{device}", rec.device or "")
            lines.append(f"put {shlex.quote(path)} {shlex.quote(value)}")
    if not rec.apply:
        lines.append("echo 'nothing was recommended; nothing to roll back'")
    return "\n".join(lines) + "\n"


