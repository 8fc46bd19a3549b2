"""`bench run` for real on the host tier: the whole path from a scenario to samples on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench.core.image import Image
from bench.core.rundir import RunDir
from bench.core.settings import settings
from bench.kernel import mountns, sysmount
from bench.run import scenario

pytestmark = [pytest.mark.integration, pytest.mark.part("host")]
BENCH = [sys.executable, "-m", "bench.cli"]
FAMILIES = {"cpu", "memory", "disk", "network", "startup"}


def bench(*args: str, env: dict[str, str],
          timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BENCH, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def env_for(results: Path) -> dict[str, str]:
    return {**os.environ, "BENCH_RESULTS_DIR": str(results), "COLUMNS": "200"}


def only_run(results: Path) -> RunDir:
    (path,) = [p for p in results.iterdir() if p.is_dir()]
    return RunDir(path)


def write_scenario(tmp_path: Path, data: dict) -> Path:  # type: ignore[type-arg]
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_quick_scenario_host_part(tmp_path: Path, results_dir: Path, bench_image: Image) -> None:
    quick = yaml.safe_load(scenario.resolve_path("quick").read_text())
    quick["tiers"] = ["host"]
    # every workload and parameter of quick; one repetition and no warm-up (time: the warm-ups
    # are half the runs; tests/test_compare.py's real runs check that they are not kept)
    quick["repetitions"], quick["warmup"] = 1, 0
    done = bench("run", str(write_scenario(tmp_path, quick)), env=env_for(results_dir))
    assert done.returncode == 0, done.stderr + done.stdout
    run = only_run(results_dir)
    samples = run.samples()
    from bench.workloads import WORKLOADS

    families = {WORKLOADS[s.cell.workload].family for s in samples}
    assert families == FAMILIES
    records = run.records()
    bad = [(r.key, r.status, r.error, r.stderr[-500:]) for r in records if r.status != "ok"]
    assert records and not bad, bad
    manifest = run.manifest()
    assert manifest["status"] == "complete"
    assert manifest["image"]["hash"] == bench_image.hash
    assert "fio" in manifest["image"]["tools"] and manifest["image"]["packages"]["fio"]
    for key in ("kernel", "cpu_model", "governor", "thp", "sysctls"):
        assert key in manifest["host"]
    assert manifest["host"]["sysctls"]["vm.dirty_ratio"].isdigit()
    assert "cpu.sysbench" in manifest["scenario"]["text"]
    # raw tool output is kept next to the samples, named after the cell
    raw = {p.name for p in run.raw.iterdir()}
    assert any(name.startswith("host.disk.fio.") and name.endswith(".fio.json") for name in raw)
    fio = next(s for s in samples if s.cell.workload == "disk.fio")
    assert fio.metadata["scratch_fs"] and fio.metadata["scratch_device"]
    net = next(s for s in samples if s.cell.workload == "network.iperf3")
    assert net.metadata["network_path"] == "loopback"
    # the summary table is printed with a median and CI per cell
    assert "median" in done.stdout and "events_per_s" in done.stdout
    assert "first_instruction_ms" in done.stdout
    # where the time went: one line at the end, the same phases in the manifest
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("time ") and "prepare host" in last and "runs host" in last, last
    phases = manifest["phases_s"]
    assert phases["runs host"] > 0 and phases["total"] >= phases["runs host"]
    # nothing of the run stays mounted
    assert not sysmount.mounts_under(settings().work_dir / run.run_id)


SMALL = {
    "name": "small",
    "tiers": ["host"],
    "repetitions": 3,
    "warmup": 0,
    "workloads": [
        {"workload": "cpu.sysbench", "params": {"seconds": 1}, "matrix": {"threads": [1, 0]}},
        {"workload": "memory", "params": {"size_mb": 16, "seconds": 0.3}},
        {"workload": "startup.noop"},
    ],
}


def test_sigint_keeps_samples_and_resume_completes(tmp_path: Path, results_dir: Path,
                                                    bench_image: Image) -> None:
    path = write_scenario(tmp_path, SMALL)
    proc = subprocess.Popen([*BENCH, "run", str(path)], env=env_for(results_dir),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    samples_file = None
    while time.monotonic() < deadline:
        found = list(results_dir.glob("*/samples.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 3:
            samples_file = found[0]
            break
        time.sleep(0.05)
    assert samples_file is not None, "no samples appeared"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "--resume" in out
    run = only_run(results_dir)
    assert run.manifest()["status"] == "interrupted"
    taken = run.samples()
    assert taken, "samples taken before the interrupt must stay on disk"
    total = 3 * (2 + 1 + 1)
    assert len(run.records()) < total
    assert not sysmount.mounts_under(settings().work_dir / run.run_id)

    done = bench("run", "--resume", run.run_id, env=env_for(results_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    assert run.manifest()["status"] == "complete"
    records = run.records()
    assert sorted(r.key for r in records) == sorted({r.key for r in records})  # no run twice
    assert len(records) == total
    assert all(r.status == "ok" for r in records), [r.error for r in records]
    keys = [(s.cell.key, s.repetition, s.metric) for s in run.samples()]
    assert len(keys) == len(set(keys)), "resume must not duplicate samples"
    assert {(s.cell.key, s.repetition, s.metric) for s in taken} <= set(keys)


def test_failing_and_hanging_runs_are_recorded_and_the_plan_goes_on(
        tmp_path: Path, results_dir: Path, bench_image: Image) -> None:
    data = {
        "name": "faulty",
        "tiers": ["host"],
        "repetitions": 1,
        "warmup": 0,
        "workloads": [
            # two 64 GiB buffers cannot be allocated on a test host: the tool fails
            {"workload": "memory", "params": {"size_mb": 65536, "seconds": 0.2}},
            # runs 30 s but may take 2 s: killed at its timeout
            {"workload": "cpu.sysbench", "params": {"seconds": 30}, "timeout_s": 2},
            {"workload": "memory", "params": {"size_mb": 8, "seconds": 0.2}},
        ],
    }
    started = time.monotonic()
    done = bench("run", str(write_scenario(tmp_path, data)), env=env_for(results_dir))
    assert time.monotonic() - started < 60
    assert done.returncode == 0, done.stdout + done.stderr
    run = only_run(results_dir)
    by_status = {r.status: r for r in run.records()}
    assert set(by_status) == {"ok", "failed", "timeout"}
    assert "allocate" in by_status["failed"].stderr
    assert "timeout" in by_status["timeout"].error
    assert "2 run(s) failed" in done.stdout
    assert [s.metric for s in run.samples()] == ["copy_MBps"]
    leftover = subprocess.run(["pgrep", "-f", "sysbench cpu --threads=1 --time=30"],
                              capture_output=True, text=True)
    assert leftover.stdout == "", "the timed-out tool must be killed"


def test_dry_run_prints_the_plan(results_dir: Path) -> None:
    done = bench("run", "quick", "--dry-run", env=env_for(results_dir))
    assert done.returncode == 0, done.stderr
    assert "cells" in done.stdout and "estimated" in done.stdout and "disk.fio" in done.stdout
    assert not any(results_dir.iterdir()), "a dry run writes nothing"


def test_broken_scenario_is_one_clear_error(tmp_path: Path, results_dir: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: b\ntiers: [host]\n"
                    "workloads:\n  - workload: disk.fio\n    params: {rw: up}\n")
    done = bench("run", str(path), env=env_for(results_dir))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr + done.stdout
    assert "workloads[0].params.rw" in done.stdout and "'randread'" in done.stdout
    assert "fix:" in done.stdout


def test_samples_file_loads_into_pandas_rows(results_dir: Path, tmp_path: Path,
                                             bench_image: Image) -> None:
    data = dict(SMALL, repetitions=1, workloads=[SMALL["workloads"][1]])  # type: ignore[call-overload]
    done = bench("run", str(write_scenario(tmp_path, data)), env=env_for(results_dir))
    assert done.returncode == 0, done.stdout
    run = only_run(results_dir)
    lines = run.samples_path.read_text().splitlines()
    row = json.loads(lines[0])
    assert row["v"] == 1 and row["metric"] == "copy_MBps" and row["unit"] == "MB/s"
    tidy = run.samples()[0].tidy()
    assert tidy["tier"] == "host" and tidy["param.size_mb"] == 16


def test_doctor_and_list(results_dir: Path, bench_image: Image) -> None:
    done = bench("doctor", env=env_for(results_dir))
    assert done.returncode == 0, done.stderr
    from bench.tiers.registry import TIERS
    from bench.workloads import WORKLOADS

    for name in [*TIERS, *WORKLOADS]:
        assert name in done.stdout
    host_row = next(line for line in done.stdout.splitlines() if " host " in line)
    assert "yes" in host_row
    listed = bench("list", env=env_for(results_dir))
    assert "quick" in listed.stdout and "full" in listed.stdout and "disk.fio" in listed.stdout


def test_preflight_names_a_tool_missing_from_the_image(tmp_path: Path, bench_image: Image) -> None:
    from bench.cli import doctor
    from bench.core.errors import BenchError

    fake = Image("fakehash", tmp_path)
    (tmp_path / "rootfs/usr/bin").mkdir(parents=True)
    for tool in ("sysbench", "nproc"):
        (tmp_path / "rootfs/usr/bin" / tool).touch()
    doctor.preflight(["cpu.sysbench"], fake)  # everything it needs is there
    with pytest.raises(BenchError, match=r"disk\.fio needs fio"):
        doctor.preflight(["cpu.sysbench", "disk.fio"], fake)


def test_a_second_run_refuses_while_one_holds_the_host(tmp_path: Path, results_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.core import hostlock

    monkeypatch.setenv("BENCH_LOCK_PATH", str(tmp_path / "bench.lock"))
    env = env_for(results_dir)
    with hostlock.hold("first-run"):
        done = bench("run", str(write_scenario(tmp_path, SMALL)), env=env)
    assert done.returncode == 2
    assert "Another bench run holds this host (run first-run" in done.stdout
    assert "--wait" in done.stdout
    assert not any(results_dir.iterdir())


def test_sigkill_leaves_no_mount_and_no_holder(tmp_path: Path, results_dir: Path,
                                               bench_image: Image) -> None:
    """The host tier's mounts live in a namespace whose holder dies with bench: a SIGKILLed
    run leaves none in the machine's table, and `bench cleanup` has no mount to remove."""
    proc = subprocess.Popen([*BENCH, "run", str(write_scenario(tmp_path, SMALL))],
                            env=env_for(results_dir), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(results_dir.glob("*/samples.jsonl")):
        assert proc.poll() is None, "bench run ended before it took a sample"
        time.sleep(0.05)
    work = settings().work_dir / only_run(results_dir).run_id
    (holder,) = mountns.holders(work)  # the tier is up: its holder is there
    proc.kill()
    proc.wait()
    run = only_run(results_dir)
    deadline = time.monotonic() + 10  # PDEATHSIG: the kernel kills the holder as bench exits
    while time.monotonic() < deadline and os.path.exists(f"/proc/{holder}"):
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{holder}") and mountns.holders(work) == []
    assert not sysmount.mounts_under(work)
    assert not [line for line in Path("/proc/self/mounts").read_text().splitlines()
                if run.run_id in line]
    done = bench("cleanup", "--run", run.run_id, env=env_for(results_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "host: mount" not in done.stdout
    assert not work.exists()
    assert run.samples(), "samples taken before the kill stay readable"
