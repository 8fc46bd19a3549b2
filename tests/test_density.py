"""Density's view of a tier's own processes: PSS, RSS labelled as a substitute, never a partial
sum (bench/tiers/base.py host_memory, bench/workloads/density.py)."""

from __future__ import annotations

import json
import os
import pwd
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from bench.core.errors import BenchError
from bench.core.image import Image
from bench.core.limits import Limits
from bench.tiers.base import HostMemory, InstanceSpec, TierContext, host_memory
from bench.tiers.host import HostTier
from bench.workloads.base import RunContext
from bench.workloads.density import DensityIdle


def test_pss_of_own_processes() -> None:
    used = host_memory([os.getpid(), 999_999_999])  # the second is gone: it holds nothing
    assert used.processes == 1
    assert used.pss is not None and 0 < used.pss <= used.rss


def test_an_unprivileged_reader_gets_rss_not_a_partial_sum() -> None:
    """As nobody, the PSS of root's processes (smaps_rollup) is unreadable, RSS (statm) is
    not: the reading says PSS is missing instead of summing the processes it could read."""
    daemons = [1, *(p.pid for p in psutil.process_iter(["name"])
                    if p.info["name"] in ("dockerd", "containerd"))]
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the reader: this interpreter, as nobody
        try:
            nobody = pwd.getpwnam("nobody")
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            used = host_memory(daemons)
            os.write(write, json.dumps([used.rss, used.pss]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(child, 0)
    rss, pss = json.loads(text)
    assert pss is None
    assert rss == pytest.approx(host_memory(daemons).rss, rel=0.2)


def test_a_process_that_cannot_be_read_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # what /proc mounted with hidepid does to root's view of another user's process (this
    # host's /proc has no hidepid, so the refusal is simulated)
    def refused(self: psutil.Process) -> None:
        raise psutil.AccessDenied(self.pid)

    monkeypatch.setattr(psutil.Process, "memory_info", refused)
    with pytest.raises(BenchError, match="would be too small"):
        host_memory([os.getpid()])


class _ReadsSupport(HostTier):
    """The host tier (real instances) with a given view of its support processes."""

    reading: HostMemory | BenchError | None = None

    def support_memory(self) -> HostMemory | None:
        if isinstance(self.reading, BenchError):
            raise self.reading
        return self.reading


@pytest.fixture(scope="module")
def tier(bench_image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_ReadsSupport]:
    work = tmp_path_factory.mktemp("density")
    host = _ReadsSupport()
    host.prepare(TierContext("test-density", bench_image, work, work))
    yield host
    host.finish()


def _density(tier: _ReadsSupport, raw: Path) -> dict[str, object]:
    def spec(role: str, command: list[str] | None) -> InstanceSpec:
        return InstanceSpec(role=role, limits=Limits(), command=command)

    ctx = RunContext(tier=tier, instance=None, peer=None, new_spec=spec,
                     deadline=time.monotonic() + 60, raw_dir=raw, run_key="t")
    params = DensityIdle().parse_params({"instances": 1, "settle_s": 0})
    return {m.metric: m for m in DensityIdle().run(ctx, params)}


def test_density_labels_rss_and_leaves_out_a_partial_sum(tier: _ReadsSupport,
                                                         tmp_path: Path) -> None:
    tier.reading = HostMemory(rss=50 << 20, pss=None, processes=3)
    found = _density(tier, tmp_path)
    assert "support_memory_per_instance_MB" not in found
    rss = found["support_rss_per_instance_MB"]
    assert rss.metadata["support_measure"].startswith("RSS (substituted")  # type: ignore[attr-defined]
    tier.reading = BenchError("Cannot read the memory of process 7", "fix")
    found = _density(tier, tmp_path)
    assert not {"support_memory_per_instance_MB", "support_rss_per_instance_MB"} & set(found)
    host_view = found["memory_per_instance_MB"]
    assert "process 7" in host_view.metadata["support_memory_omitted"]  # type: ignore[attr-defined]
