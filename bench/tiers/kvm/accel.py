"""Which accelerator the kvm tier uses: KVM when it can really boot a guest, TCG otherwise.

/dev/kvm alone proves nothing: on some hosts it is served by a paravirtual module (kvm_pvm) on
which a standard guest kernel hangs in early boot, burning a core. So KVM needs all of:
hardware virtualisation flags (vmx/svm) in /proc/cpuinfo, the kvm_intel or kvm_amd module,
/dev/kvm, and a boot probe (a real guest kernel, started with KVM, must reach the end of its
kernel init within a timeout; at the timeout it is destroyed). Anything less means TCG, with
the reason recorded in every sample's metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Accelerator = Literal["kvm", "tcg"]
Mode = Literal["auto", "kvm", "tcg"]
VENDOR_MODULES = {"vmx": "kvm_intel", "svm": "kvm_amd"}


@dataclass(frozen=True)
class Acceleration:
    accelerator: Accelerator
    reason: str
    checks: dict[str, Any] = field(default_factory=dict)

    @property
    def domain_type(self) -> Literal["kvm", "qemu"]:
        return "kvm" if self.accelerator == "kvm" else "qemu"

    @property
    def emulated(self) -> bool:
        return self.accelerator == "tcg"


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    text = cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def kvm_modules(sys_module: Path = Path("/sys/module")) -> list[str]:
    """The KVM modules the kernel has loaded (or built in), from /sys/module."""
    if not sys_module.is_dir():
        return []
    return sorted(p.name for p in sys_module.iterdir() if p.name.startswith("kvm"))


def host_checks(cpuinfo: str | None = None, sys_module: Path = Path("/sys/module"),
                dev_kvm: Path = Path("/dev/kvm")) -> tuple[str | None, dict[str, Any]]:
    """(why KVM cannot work here, or None if the host looks able; what was seen)."""
    flags = cpu_flags(cpuinfo) & set(VENDOR_MODULES)
    modules = kvm_modules(sys_module)
    seen: dict[str, Any] = {"cpu_flags": sorted(flags), "kvm_modules": modules,
                            "dev_kvm": dev_kvm.exists()}
    if not dev_kvm.exists():
        return "/dev/kvm does not exist (no KVM module is loaded).", seen
    if not flags:
        pvm = " (the kernel serves /dev/kvm with kvm_pvm, on which a standard guest hangs)" \
            if "kvm_pvm" in modules else ""
        return ("the CPU shows no hardware virtualisation flag (vmx or svm) in /proc/cpuinfo"
                f"{pvm}."), seen
    wanted = {VENDOR_MODULES[f] for f in flags}
    if not wanted & set(modules):
        return (f"the kernel has not loaded {' or '.join(sorted(wanted))}; /dev/kvm is served "
                f"by {', '.join(modules) or 'nothing'}."), seen
    return None, seen


def detect(mode: Mode, probe: Callable[[], tuple[bool, str]],
           cpuinfo: str | None = None, sys_module: Path = Path("/sys/module"),
           dev_kvm: Path = Path("/dev/kvm")) -> Acceleration:
    """Decide the accelerator. `probe` boots a guest with KVM under a timeout and says whether
    its kernel got through init (and what happened); it only runs when the host checks pass."""
    if mode == "tcg":
        return Acceleration("tcg", "TCG was asked for (BENCH_KVM_ACCEL=tcg).", {"mode": mode})
    problem, seen = host_checks(cpuinfo, sys_module, dev_kvm)
    seen["mode"] = mode
    if problem is None:
        booted, detail = probe()
        seen["probe"] = detail
        if booted:
            return Acceleration("kvm", f"KVM boot probe passed: {detail}", seen)
        problem = f"a guest kernel started with KVM did not boot: {detail}"
    return Acceleration("tcg", f"KVM is unusable here: {problem} Falling back to TCG "
                               "(emulation, several times slower).", seen)
