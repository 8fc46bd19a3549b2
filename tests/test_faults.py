"""The fault-injection matrix, for real: `bench run` is interrupted (SIGINT), terminated (SIGTERM)
or killed (SIGKILL) at named points (bench/core/faults.py) on every available tier; dockerd and
libvirtd die mid-run; a workload hangs; a tool is missing or vanishes; the results disk fills up.

After each fault: the samples taken so far parse; `bench cleanup` (or the start-up check of the
next `bench run`) leaves nothing behind (`leaks(run_id)` lists every kind of leftover, and fails
the test when it cannot look); and `bench run --resume` completes the plan.

The tests that kill a daemon kill a private one of their own (tests/daemons.py), never the
machine's dockerd or libvirtd.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from bench.core.image import Image
from bench.core.rundir import RunDir
from bench.kernel import cgroups, mountns, sysmount
from bench.tiers.ns import net as ns_net
from bench.tiers.ns.instance import CGROUP_ROOT
from bench.tiers.registry import TIERS
from bench.tune import catalog as catalog_mod
from bench.tune.sysfs import HostFs
from bench.tune.tuner import Tuner
from tests import daemons
from tests.parts import need, required_parts

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
BENCH = [sys.executable, "-m", "bench.cli"]
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
FAST_TIERS = ("host", "ns", "docker")


def need_tier(tier: str) -> None:
    availability = TIERS[tier]().available()
    need(tier, availability.ok, f"{availability.reason} {availability.fix}")


# -- what a run may leave behind ---------------------------------------------------------------

def _tunables() -> dict[str, str]:
    return {k: v for k, v in Tuner(catalog_mod.load(), HostFs("/")).snapshot().items()
            if not v.startswith(("unavailable", "unreadable"))}


def _opaque() -> set[int]:
    """Processes whose root even root may not read (the sandbox's own init, say)."""
    found = set()
    for pid in psutil.pids():
        try:
            os.readlink(f"/proc/{pid}/root")
        except PermissionError:
            found.add(pid)
        except OSError:
            pass
    return found


def _zram() -> set[str]:
    return {p.name for p in Path("/sys/block").glob("zram*")}


@dataclass
class Lab:
    """One test's private bench directories, and the host as it was before the fault."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    tunables: dict[str, str] = field(default_factory=dict)
    zram: set[str] = field(default_factory=set)  # zram devices as found
    zram_made: set[str] = field(default_factory=set)  # those a run's cache state listed
    opaque: set[int] = field(default_factory=_opaque)  # unreadable before the test began

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def work(self) -> Path:
        return Path(self.env.get("BENCH_WORK_DIR", self.root / "work"))

    @property
    def state(self) -> Path:
        return self.root / "tune-state"

    @property
    def mark(self) -> Path:
        return self.root / "fault.pid"

    def leaks(self, run_id: str) -> list[str]:
        return leaks(run_id, self)


def _lines(argv: list[str], env: dict[str, str] | None = None) -> list[str]:
    """The output lines of a listing command; a listing that fails fails the test (a probe that
    cannot look must not report "no leaks")."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"leak probe: {' '.join(argv)} could not run: {exc}", pytrace=False)
    if done.returncode != 0:
        pytest.fail(f"leak probe: {' '.join(argv)} exited {done.returncode}: {done.stderr}",
                    pytrace=False)
    return done.stdout.splitlines()


def _answers(argv: list[str], env: dict[str, str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=30, env=env).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _loops(run_id: str) -> list[str]:
    """Loop devices over a file whose path names the run (read from sysfs: not truncated)."""
    return [line for line in _lines(["losetup", "-l", "-n", "-O", "NAME,BACK-FILE"])
            if run_id in line]


def leaks(run_id: str, lab: Lab | None = None) -> list[str]:
    """Everything of the run still on the host: containers, domains, mounts, cgroups, processes,
    netns, veths and bridges, NAT rules, loop and zram devices, changed tunables, files."""
    found: list[str] = []
    env = lab.env if lab else dict(os.environ)
    work = (lab.work if lab else Path(env.get("BENCH_WORK_DIR", "/var/tmp/bench")))
    # the engine and the libvirt this lab's bench talks to; an engine that does not answer is
    # only acceptable where that part is not required (then nothing of it can have been made)
    docker = ["docker", "-H", env.get("BENCH_DOCKER_URL") or "unix:///var/run/docker.sock"]
    if shutil.which("docker") and (_answers([*docker, "version"], env)
                                   or "docker" in required_parts()):
        for kind in ("ps", "volume ls", "network ls"):
            argv = [*docker, *kind.split(), *(["-a"] if kind == "ps" else []), "-q",
                    "--filter", f"label=bench.run={run_id}"]
            found += [f"docker {kind}: {line}" for line in _lines(argv, env) if line.strip()]
    virsh = ["virsh", "-c", env.get("BENCH_LIBVIRT_URI") or "qemu:///system"]
    if shutil.which("virsh") and (_answers([*virsh, "version"], env)
                                  or "kvm" in required_parts()):
        for kind in ("list --all", "net-list --all"):
            found += [f"libvirt {kind}: {name}" for name in
                      _lines([*virsh, *kind.split(), "--name"], env)
                      if run_id in name or ns_net.tag(run_id) in name]
        for name in filter(None, map(str.strip, _lines([*virsh, "list", "--all", "--name"],
                                                        env))):
            xml = subprocess.run([*virsh, "dumpxml", name], capture_output=True, text=True,
                                 timeout=60, env=env)
            if xml.returncode != 0 and name in _lines([*virsh, "list", "--all", "--name"], env):
                pytest.fail(f"leak probe: virsh dumpxml {name} failed: {xml.stderr}",
                            pytrace=False)  # (a domain that ended meanwhile is no leftover)
            if run_id in xml.stdout:
                found.append(f"libvirt domain {name}")
    mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    found += [f"mount {line.split()[4]}" for line in mountinfo if run_id in line.split()[4]]
    found += [f"mount {p}" for p in sysmount.mounts_under(work)]
    for root in cgroups.detect().unique_roots:
        if (root / CGROUP_ROOT / run_id).exists():
            found.append(f"cgroup {root / CGROUP_ROOT / run_id}")
    opaque = lab.opaque if lab else _opaque()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid == os.getpid() or proc.pid in opaque:
            continue
        # a process that ends while we read it is gone: not a leftover, not a probe error; one
        # we cannot read (and could read, or did not exist, before) fails the probe
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess, FileNotFoundError,
                                 ProcessLookupError):
            cgroup = Path(f"/proc/{proc.pid}/cgroup").read_text()
            root = os.readlink(f"/proc/{proc.pid}/root")
            if run_id in cgroup or root.startswith(str(work)) or \
                    run_id in " ".join(proc.info["cmdline"] or []):
                found.append(f"process {proc.pid} {proc.info['cmdline']}")
    found += [f"netns {name}" for name in _lines(["ip", "netns", "list"])
              if run_id in name or ns_net.tag(run_id) in name]
    found += [f"link {name}" for _, name in ns_net._bench_links(run_id)]
    found += [f"iptables {table}: {line}" for table in ("nat", "filter")
              for line in _lines(["iptables", "-w", "5", "-t", table, "-S"])
              if line.startswith("-A ") and run_id in line]
    found += [f"loop {line}" for line in _loops(run_id)]
    if lab is not None:
        # (other people's zram devices may come and go meanwhile: only those the run made)
        found += [f"zram {name}" for name in sorted(_zram() & lab.zram_made)]
        now = _tunables()
        found += [f"tunable {k}: {v} -> {now.get(k)}" for k, v in lab.tunables.items()
                  if now.get(k) != v]
        found += [f"tune state {p.name}" for p in lab.state.glob(f"*{run_id}*")]
        found += [f"image staging {p}" for p in lab.root.glob("images/*.build-*")]
    if (work / run_id).exists():
        found.append(f"work directory {work / run_id}")
    return found


# -- running bench -----------------------------------------------------------------------------

@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    made = Lab(tmp_path)
    for path in (made.results, made.work, made.state):
        path.mkdir()
    made.env = {**os.environ, "BENCH_RESULTS_DIR": str(made.results),
                "BENCH_WORK_DIR": str(made.work), "BENCH_TUNE_STATE_DIR": str(made.state),
                "BENCH_FAULT_MARK": str(made.mark), "COLUMNS": "200"}
    made.tunables = _tunables()
    made.zram = _zram()
    yield made
    # whatever a failed test left: its runs' leftovers go, even if the assertions did not get
    # that far (pytest removes old tmp dirs, and with them the state that finds leftovers)
    runs = {p.name for base in (Path(made.env["BENCH_RESULTS_DIR"]), made.work)
            if base.is_dir() for p in base.iterdir() if p.is_dir()}
    for run_id in sorted(runs):
        if _maybe_leaks(made, run_id):
            bench(made, "cleanup", "--run", run_id)


def _maybe_leaks(lab: Lab, run_id: str) -> bool:
    """For a fixture's teardown, which only tidies up: a probe that cannot look (a private
    daemon a test killed is already gone) counts as a leak to clean, not as an error. The
    tests' own `leaks(...) == []` assertions still fail on a probe error."""
    try:
        return bool(lab.leaks(run_id))
    except pytest.fail.Exception:
        return True


def bench(lab: Lab, *args: str, timeout: float = 600,
          **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BENCH, *args], env={**lab.env, **env}, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


@contextlib.contextmanager
def paused_at(lab: Lab, scenario: Path, point: str, hit: int = 1, wait: float = 600,
              **env: str) -> Iterator[subprocess.Popen[str]]:
    """`bench run SCENARIO`, paused at the fault point; killed at the end whatever happens."""
    lab.mark.unlink(missing_ok=True)
    proc = subprocess.Popen([*BENCH, "run", str(scenario)], cwd=REPO, text=True,
                            env={**lab.env, "BENCH_FAULT_AT": point, "BENCH_FAULT_HIT": str(hit),
                                 "BENCH_FAULT_WAIT": str(wait), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not (lab.mark.exists() and lab.mark.read_text()):
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"bench run ended before {point}: {out[-2000:]} {err[-2000:]}")
            assert time.monotonic() < deadline, f"bench run never reached {point}"
            time.sleep(0.02)
        assert int(lab.mark.read_text()) == proc.pid
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def write_scenario(lab: Lab, data: dict[str, Any]) -> Path:
    path = lab.root / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def tiny(tier: str, name: str = "fault", **extra: Any) -> dict[str, Any]:
    """Two 1-second-ish runs: a sample is on disk when the second one starts."""
    return {"name": name, "tiers": [tier], "repetitions": 1, "warmup": 0,
            "workloads": [{"workload": "cpu.sysbench", "params": {"seconds": 1}},
                          {"workload": "memory", "params": {"size_mb": 8, "seconds": 0.3}}],
            **extra}


def the_run(lab: Lab) -> RunDir:
    (path,) = [p for p in lab.results.iterdir() if p.is_dir()]
    return RunDir(path)


def assert_samples_intact(run: RunDir) -> None:
    """Every line of samples.jsonl is a whole sample of a run the journal says went well."""
    lines = run.samples_path.read_text().splitlines() if run.samples_path.exists() else []
    assert all(json.loads(line)["run_id"] == run.run_id for line in lines)
    samples = run.samples()
    assert len(samples) == len(lines)
    ok = {r.key for r in run.records() if r.status == "ok"}
    assert {f"{s.cell.key}#{s.repetition}" for s in samples} <= ok


def assert_resume_completes(lab: Lab, run: RunDir, runs: int) -> subprocess.CompletedProcess[str]:
    done = bench(lab, "run", "--resume", run.run_id)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert run.manifest()["status"] == "complete"
    records = run.records()
    assert sorted(r.key for r in records) == sorted({r.key for r in records})
    assert len(records) == runs and all(r.status == "ok" for r in records), \
        [(r.key, r.error) for r in records]
    keys = [(s.cell.key, s.repetition, s.metric) for s in run.samples()]
    assert len(keys) == len(set(keys)) and keys
    assert lab.leaks(run.run_id) == []
    return done


def stop(proc: subprocess.Popen[str], sig: signal.Signals) -> tuple[int, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=180)
    if sig != signal.SIGKILL:
        assert "Traceback" not in out + err, out[-3000:] + err[-3000:]
    return proc.returncode, out + err


def after_fault(lab: Lab, sig: signal.Signals, code: int, output: str,
                via_cleanup: bool = True) -> RunDir:
    """The common checks after a signal: exit status, samples, leftovers removed."""
    run = the_run(lab)
    assert_samples_intact(run)
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
        if via_cleanup:
            done = bench(lab, "cleanup", "--run", run.run_id)
            assert done.returncode == 0, done.stdout + done.stderr
            assert lab.leaks(run.run_id) == []
    else:
        assert code == 130, output[-3000:]
        assert f"bench run --resume {run.run_id}" in output
        assert run.manifest()["status"] == "interrupted"
        assert lab.leaks(run.run_id) == []  # the run removed everything itself
    return run


# -- the matrix --------------------------------------------------------------------------------

# On the host, every signal during a workload and, at the earlier points, the kill and one
# clean stop. SIGINT and SIGTERM take one path (the runner turns SIGTERM into an interrupt), so
# the container tiers, whose runs cost far more, get one clean stop and one kill per point
# where they differ: what the tier must remove (each `bench` call costs seconds of imports).
MATRIX = [("workload.running", "SIGINT"), ("workload.running", "SIGTERM"),
          ("workload.running", "SIGKILL"), ("tier.prepared", "SIGTERM"),
          ("tier.prepared", "SIGKILL"), ("instance.started", "SIGINT"),
          ("instance.started", "SIGKILL")]
CONTAINER_MATRIX = [("workload.running", "SIGTERM"), ("workload.running", "SIGKILL"),
                    ("tier.prepared", "SIGTERM"), ("instance.started", "SIGKILL")]
CASES = [("host", point, sig) for point, sig in MATRIX] + \
    [(tier, point, sig) for tier in FAST_TIERS[1:] for point, sig in CONTAINER_MATRIX]


@pytest.mark.parametrize(("tier", "point", "sig"), CASES)
def test_signal_at_a_point_leaves_nothing_and_resume_completes(
        lab: Lab, bench_image: Image, tier: str, point: str, sig: str) -> None:
    need_tier(tier)
    scenario = write_scenario(lab, tiny(tier))
    hit = 2 if point == "workload.running" else 1  # the first run's samples are on disk
    with paused_at(lab, scenario, point, hit=hit) as proc:
        code, output = stop(proc, SIGNALS[sig])
    # a killed run at its last point is left for the next run's start-up check to clean
    via_cleanup = point != "workload.running"
    run = after_fault(lab, SIGNALS[sig], code, output, via_cleanup=via_cleanup)
    if hit == 2:
        assert run.samples(), "the first run's samples stay on disk"
    left = lab.leaks(run.run_id)
    if sig == "SIGKILL" and not via_cleanup:
        assert left, "a SIGKILLed run should leave something for the start-up check"
    done = assert_resume_completes(lab, run, runs=2)
    if left:
        assert "removed a leftover of a dead run" in done.stdout


@pytest.mark.parametrize("sig", list(SIGNALS))
def test_signal_during_the_image_build_leaves_no_staging(
        lab: Lab, bench_image: Image, sig: str) -> None:
    images = lab.root / "images"
    scenario = write_scenario(lab, tiny("host"))
    with paused_at(lab, scenario, "image.build", BENCH_IMAGE_DIR=str(images)) as proc:
        assert list(images.glob("*.build-*")), "the build's staging directory exists"
        code, output = stop(proc, SIGNALS[sig])
    assert code != 0
    assert not list(lab.results.iterdir()), "no run starts before its image exists"
    if sig == "SIGKILL":
        done = bench(lab, "cleanup", BENCH_IMAGE_DIR=str(images))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "removed image: staging directory" in done.stdout
    assert not list(images.glob("*.build-*")), output[-2000:]
    assert not [p for p in lab.work.iterdir() if p.is_dir()], "no work directory is left"


def sweep_of(target: int) -> dict[str, Any]:
    return tiny("host", name="tuned", workloads=[
        {"workload": "cpu.sysbench", "params": {"seconds": 1}}],
        sweep={"tunables": {"vm.dirty_background_ratio": [target]}, "baseline": False})


@pytest.mark.parametrize("sig", list(SIGNALS))
def test_signal_with_a_tunable_applied_puts_it_back(lab: Lab, bench_image: Image,
                                                    sig: str) -> None:
    original = lab.tunables["vm.dirty_background_ratio"]
    target = 3 if original != "3" else 4
    scenario = write_scenario(lab, sweep_of(target))
    with paused_at(lab, scenario, "tune.applied") as proc:
        assert Path("/proc/sys/vm/dirty_background_ratio").read_text().strip() == str(target)
        code, output = stop(proc, SIGNALS[sig])
    run = after_fault(lab, SIGNALS[sig], code, output)
    assert Path("/proc/sys/vm/dirty_background_ratio").read_text().strip() == original
    assert_resume_completes(lab, run, runs=1)


@pytest.mark.parametrize("sig", list(SIGNALS))
def test_signal_with_a_cache_device_built_removes_it(lab: Lab, bench_image: Image,
                                                     sig: str) -> None:
    data = tiny("host", name="cached", workloads=[
        {"workload": "disk.fio", "params": {"size_mb": 16, "runtime_s": 0.5, "rw": "randread"}}],
        sweep={"cache": ["none-slow", "none-fast"]})
    with paused_at(lab, write_scenario(lab, data), "cache.built") as proc:
        run_id = the_run(lab).run_id
        made = json.loads((lab.state / f"cache-{run_id}.json").read_text())["made"]
        lab.zram_made = {f"zram{m['id']}" for m in made if m["kind"] == "zram"}
        assert _loops(run_id) or (lab.zram_made and lab.zram_made <= _zram()), \
            "the slow or the fast device is built"
        code, output = stop(proc, SIGNALS[sig])
    run = after_fault(lab, SIGNALS[sig], code, output)
    assert_resume_completes(lab, run, runs=2)


# -- daemons, hangs, tools, disks --------------------------------------------------------------

def _pids(name: str) -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == name]


@pytest.fixture
def private_dockerd(lab: Lab) -> Iterator[daemons.Private]:
    """A dockerd of this test's own; bench (and the leak probe) talk to it only."""
    need("docker", shutil.which("dockerd") is not None, "dockerd is not installed")
    root = Path(tempfile.mkdtemp(prefix="bfd-", dir="/var/tmp"))
    try:
        with daemons.dockerd(root) as daemon:
            lab.env["BENCH_DOCKER_URL"] = daemon.url
            yield daemon
            # the lab's own teardown cleans the runs while the daemon still answers
            for run_id in sorted(p.name for p in lab.results.iterdir() if p.is_dir()):
                if lab.leaks(run_id):
                    bench(lab, "cleanup", "--run", run_id)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.part("docker")
def test_dockerd_dying_mid_run_is_recorded_and_cleaned_up(
        lab: Lab, bench_image: Image, private_dockerd: daemons.Private) -> None:
    machine = [pid for pid in _pids("dockerd") if pid != private_dockerd.pid]
    scenario = write_scenario(lab, tiny("docker"))
    with paused_at(lab, scenario, "workload.running", wait=2) as proc:
        label = f"label=bench.run={the_run(lab).run_id}"
        ours = _lines(["docker", "-H", private_dockerd.url, "ps", "-q", "--filter", label])
        assert ours and not _lines(["docker", "ps", "-q", "--filter", label]), \
            "the run's container is on the private engine, not on the machine's"
        private_dockerd.kill()
        out, err = proc.communicate(timeout=300)
    assert machine and set(machine) <= set(_pids("dockerd")), "the machine's dockerd lives on"
    assert "Traceback" not in out + err, out[-3000:] + err[-3000:]
    run = the_run(lab)
    failed = [r for r in run.records() if r.status != "ok"]
    assert failed, out[-3000:]
    assert_samples_intact(run)
    private_dockerd.start()  # the engine is back (its containers are still known to it)
    done = bench(lab, "cleanup", "--run", run.run_id)
    assert done.returncode == 0, done.stdout + done.stderr
    assert lab.leaks(run.run_id) == []
    # the plan is done (its failures are recorded); a new run on the engine works again
    again = bench(lab, "run", str(scenario))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]


@pytest.mark.parametrize("tier", FAST_TIERS)
def test_a_hanging_workload_is_killed_at_its_timeout(lab: Lab, bench_image: Image,
                                                     tier: str) -> None:
    need_tier(tier)
    data = tiny(tier, name="hang")
    data["workloads"][0] = {"workload": "cpu.sysbench", "params": {"seconds": 30},
                            "timeout_s": 2}
    started = time.monotonic()
    done = bench(lab, "run", str(write_scenario(lab, data)))
    assert time.monotonic() - started < 90
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = the_run(lab)
    assert sorted(r.status for r in run.records()) == ["ok", "timeout"]
    assert_samples_intact(run)
    assert [s.metric for s in run.samples()] == ["copy_MBps"]
    hung = subprocess.run(["pgrep", "-f", "sysbench cpu --threads=1 --time=30"],
                          capture_output=True, text=True, timeout=60)
    assert hung.returncode == 1, f"pgrep: {hung.returncode} {hung.stdout} {hung.stderr}"
    assert lab.leaks(run.run_id) == []


def test_preflight_refuses_an_image_without_the_tool(lab: Lab, bench_image: Image) -> None:
    images = lab.root / "images"
    fake = images / bench_image.hash
    (fake / "rootfs/usr/bin").mkdir(parents=True)
    shutil.copy(bench_image.path / "manifest.json", fake / "manifest.json")
    for tool in ("sysbench", "nproc"):
        (fake / "rootfs/usr/bin" / tool).touch()
    data = tiny("host", workloads=[{"workload": "cpu.sysbench", "params": {"seconds": 1}},
                                   {"workload": "disk.fio", "params": {"runtime_s": 1}}])
    done = bench(lab, "run", str(write_scenario(lab, data)), BENCH_IMAGE_DIR=str(images))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "lacks tools" in done.stdout and "disk.fio needs fio" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert not list(lab.results.iterdir()) and not [p for p in lab.work.iterdir() if p.is_dir()]


def test_a_tool_vanishing_mid_run_is_a_recorded_failure(lab: Lab, bench_image: Image) -> None:
    scenario = write_scenario(lab, tiny("host"))
    blank = lab.root / "blank"
    blank.write_text("")
    with paused_at(lab, scenario, "workload.running", wait=2) as proc:
        (holder,) = mountns.holders(lab.work / the_run(lab).run_id)
        # sysbench is gone: an empty, non-executable file bound over it in the tier's mount
        # namespace (the holder's: gone with it)
        mountns.bind_into(holder, blank, "/usr/bin/sysbench")
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    run = the_run(lab)
    by_status = {r.status: r for r in run.records()}
    assert set(by_status) == {"ok", "failed"}, [r.error for r in run.records()]
    assert "sysbench" in by_status["failed"].error
    assert_samples_intact(run)
    assert lab.leaks(run.run_id) == []


def test_results_disk_full_stops_cleanly_and_resume_finishes(lab: Lab,
                                                             bench_image: Image) -> None:
    small = lab.root / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "bench-full", str(small)],
                   check=True)
    try:
        lab.env["BENCH_RESULTS_DIR"] = str(small)
        data = tiny("host", name="full", repetitions=4)  # more than a page's slack of lines
        data["workloads"].append({"workload": "startup.noop"})
        filler = small / "filler"
        with paused_at(lab, write_scenario(lab, data), "workload.running", hit=2,
                       wait=2) as proc:
            with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as fh:
                while fh.write(b"\0" * 4096):
                    pass
            out, err = proc.communicate(timeout=120)
        output = " ".join((out + err).split())  # as one line: the console wraps it
        run = RunDir(next(p for p in small.iterdir() if p.is_dir()))
        assert proc.returncode == 2, output[-3000:]
        assert "Traceback" not in output
        assert f"results directory {run.path}" in output
        assert "ran out of space" in output and "No space left on device" in output
        assert f"bench run --resume {run.run_id}" in output
        assert_samples_intact(run)
        assert len(run.samples()) >= 1, "the first run's sample stays"
        assert run.manifest()["status"] == "running"  # the last manifest that fitted
        assert lab.leaks(run.run_id) == []
        filler.unlink()
        assert_resume_completes(lab, run, runs=12)
    finally:
        subprocess.run(["umount", str(small)], check=False)


# -- kvm (few cases: guests boot slowly under TCG) ---------------------------------------------

@pytest.fixture
def kvm_lab(lab: Lab) -> Iterator[Lab]:
    """QEMU runs unprivileged: the guests' disks go to a work directory it can reach (pytest's
    directories are private)."""
    need_tier("kvm")
    work = Path(tempfile.mkdtemp(prefix="bench-faults-", dir="/var/tmp"))
    work.chmod(0o711)
    lab.env["BENCH_WORK_DIR"] = str(work)
    yield lab
    for run_id in sorted(p.name for p in (*lab.results.iterdir(), *work.iterdir()) if p.is_dir()):
        if _maybe_leaks(lab, run_id):
            bench(lab, "cleanup", "--run", run_id)
    shutil.rmtree(work, ignore_errors=True)


@pytest.mark.part("kvm")
def test_kvm_sigkill_with_guests_up_leaves_no_domain(kvm_lab: Lab, bench_image: Image) -> None:
    # one workload: the resume boots one guest, not two (a TCG boot is 30 s or more)
    scenario = write_scenario(kvm_lab, tiny("kvm", workloads=[
        {"workload": "cpu.sysbench", "params": {"seconds": 1}}]))
    with paused_at(kvm_lab, scenario, "instance.started") as proc:
        code, output = stop(proc, signal.SIGKILL)
    run = after_fault(kvm_lab, signal.SIGKILL, code, output)
    assert_resume_completes(kvm_lab, run, runs=1)


@pytest.fixture
def private_libvirtd(kvm_lab: Lab) -> Iterator[daemons.Private]:
    """A libvirtd of this test's own (own namespace, state and socket); bench and the leak
    probe talk to it only."""
    root = Path(tempfile.mkdtemp(prefix="bfl-", dir="/var/tmp"))
    try:
        with daemons.libvirtd(root) as daemon:
            kvm_lab.env["BENCH_LIBVIRT_URI"] = daemon.url
            yield daemon
            for run_id in sorted(p.name for p in kvm_lab.results.iterdir() if p.is_dir()):
                if kvm_lab.leaks(run_id):
                    bench(kvm_lab, "cleanup", "--run", run_id)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.part("kvm")
def test_libvirtd_dying_mid_run_is_recorded_and_cleaned_up(
        kvm_lab: Lab, bench_image: Image, private_libvirtd: daemons.Private) -> None:
    machine = [pid for pid in _pids("libvirtd") if pid != private_libvirtd.pid]
    scenario = write_scenario(kvm_lab, tiny("kvm"))
    with paused_at(kvm_lab, scenario, "workload.running", wait=2) as proc:
        run_id = the_run(kvm_lab).run_id
        ours = _lines(["virsh", "-c", private_libvirtd.url, "list", "--name"])
        theirs = _lines(["virsh", "-c", "qemu:///system", "list", "--name"])
        assert any(run_id in name for name in ours), "the guest runs under the private libvirtd"
        assert not any(run_id in name for name in theirs), "and not under the machine's"
        private_libvirtd.kill()
        out, err = proc.communicate(timeout=600)
    assert machine and set(machine) <= set(_pids("libvirtd")), "the machine's libvirtd lives on"
    assert "Traceback" not in out + err, out[-3000:] + err[-3000:]
    run = the_run(kvm_lab)
    assert [r for r in run.records() if r.status != "ok"], out[-3000:]
    assert_samples_intact(run)
    private_libvirtd.start()  # back, it finds the guest QEMU still runs
    done = bench(kvm_lab, "cleanup", "--run", run.run_id)
    assert done.returncode == 0, done.stdout + done.stderr
    assert kvm_lab.leaks(run.run_id) == []


@pytest.mark.part("kvm")
def test_a_guest_that_never_gets_ready_is_a_recorded_failure(kvm_lab: Lab,
                                                             bench_image: Image) -> None:
    data = tiny("kvm", workloads=[{"workload": "cpu.sysbench", "params": {"seconds": 1}}])
    done = bench(kvm_lab, "run", str(write_scenario(kvm_lab, data)), BENCH_KVM_BOOT_TIMEOUT="2")
    assert "Traceback" not in done.stdout + done.stderr
    run = the_run(kvm_lab)
    (record,) = run.records()
    assert record.status != "ok" and "boot timeout" in record.error, record.error
    assert kvm_lab.leaks(run.run_id) == []


def test_leaks_sees_what_a_killed_run_left(lab: Lab, bench_image: Image) -> None:
    """The leak check itself can fail: after SIGKILL, before cleanup, it lists the leftovers."""
    with paused_at(lab, write_scenario(lab, tiny("host")), "instance.started") as proc:
        stop(proc, signal.SIGKILL)
    run_id = the_run(lab).run_id
    left = lab.leaks(run_id)
    # (the host tier's mounts went with its holder: a mount namespace of bench's own)
    assert any(x.startswith("work directory") for x in left), left
    assert not any(x.startswith("mount ") for x in left), left
    assert bench(lab, "cleanup", "--run", run_id).returncode == 0
    assert lab.leaks(run_id) == []


def test_every_fault_point_is_placed_once() -> None:
    from bench.core import faults

    source = "".join(p.read_text() for p in (REPO / "bench").rglob("*.py"))
    for name in faults.POINTS:
        assert source.count(f'faults.point("{name}")') == 1, name
