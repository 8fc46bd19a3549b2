"""The Settings model behind bench.core.settings (kept apart: pydantic-settings takes ~80 ms to
import, and most modules only need the `settings()` call, not the class at import time)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = "BENCH_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True)

    # where things live
    results_dir: Path = Field(Path("results"), description="run directories (results/<run-id>/)")
    work_dir: Path = Field(Path("/var/tmp/bench"),
                           description="run-scoped scratch: overlays, disks, sockets")
    lock_path: Path | None = Field(None, description="the host lock (default: WORK_DIR/.lock)")
    image_dir: Path = Field(Path("/var/lib/bench/images"), description="built bench images")
    guest_dir: Path = Field(Path("/var/lib/bench/guests"), description="built kvm guests")
    cache_dir: Path = Field(Path("/var/cache/bench"), description="compiled bench-nsinit")
    tune_state_dir: Path = Field(Path("/var/lib/bench/tune"),
                                 description="tuning journals and cache devices")
    scenario_dir: Path | None = Field(None, description="shipped scenarios (default: packaged)")
    sysfs_root: Path = Field(Path("/"), description="root that /proc/sys and /sys are read and "
                             "written under (a fake tree for tests)")
    history_url: str | None = Field(None, description="history database (SQLAlchemy URL; "
                                    "default sqlite:///RESULTS_DIR/history.db)")
    # tiers
    docker_url: str | None = Field(None, description="Docker engine (default: DOCKER_HOST, "
                                   "else the local socket)")
    ns_caps: str = Field("", description="capabilities the ns tier keeps (NAME,... or all; "
                         "default Docker's set)")
    ns_runtime: Literal["", "native", "python"] = Field(
        "", description="python: the ns tier's Python runtime instead of bench-nsinit")
    ns_seccomp: Literal["docker", "none"] = Field(
        "docker", description="the ns tier's seccomp filter: Docker's default profile, or none")
    registry_addr: str = Field("127.0.0.1:5310", description="bench's image registry (loopback; "
                               "`bench setup` starts it)")
    registry_dir: Path = Field(Path("/var/lib/bench/registry"),
                               description="the registry's configuration and storage")
    docker_certs_d: Path = Field(Path("/etc/docker/certs.d"), description="the engine's "
                                 "per-registry CA directories (the rate-limited registry's CA)")
    libvirt_uri: str = Field("qemu:///system", description="libvirt connection of the kvm tier")
    kvm_accel: Literal["auto", "kvm", "tcg"] = Field(
        "auto", description="auto: KVM if a guest boots with it, else TCG; kvm: or fail")
    kvm_boot_timeout: float = Field(120.0, gt=0, description="s from start to a ready agent")
    kvm_probe_timeout: float = Field(20.0, gt=0, description="s for the KVM boot probe")
    kvm_shutdown: Literal["clean", "destroy"] = Field(
        "clean", description="how start-up instances end: systemctl poweroff, or destroy")
    kvm_shutdown_timeout: float = Field(30.0, gt=0, description="s before a guest is destroyed")
    kvm_disk_cache: Literal["none", "writethrough", "writeback", "directsync", "unsafe"] = Field(
        "none", description="QEMU cache mode of the guests' disks (recorded in samples)")
    kvm_scratch_mb: int = Field(4096, gt=0, description="size of a guest's /scratch disk")
    kvm_memory_mb: int = Field(1024, ge=128, description="guest RAM without a memory limit")
    kvm_cmdline_extra: str = Field("", description="appended to the guest kernel command line")
    kvm_lock_dir: Path = Field(Path("/run/lock/bench-kvm"), description="per-run kvm locks")
    # tests only: fault injection (inert unless FAULT_AT is set)
    fault_at: str | None = Field(None, description="tests: pause a run at this named point")
    fault_hit: int = Field(1, ge=1, description="tests: at the N-th time the point is reached")
    fault_mark: Path | None = Field(None, description="tests: the paused run writes its pid here")
    fault_wait: float = Field(600.0, ge=0, description="tests: seconds to pause")

    @property
    def host_lock(self) -> Path:
        return self.lock_path or self.work_dir / ".lock"
