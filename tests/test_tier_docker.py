"""The docker tier for real: a real engine (dockerd started by `bench setup`), real containers,
real limits, real traffic. Only the engine-unreachable tests point at addresses where no
engine is."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.analysis.paired import check_ratio, paired_ratio
from bench.core.errors import CommandError
from bench.core.image import Image
from bench.core.limits import Limits
from bench.core.rundir import RunDir
from bench.tiers.base import Instance, InstanceSpec, TierContext
from bench.tiers.docker import agent as docker_agent
from bench.tiers.docker import engine as docker_engine
from bench.tiers.docker.image import import_image
from bench.tiers.docker.instance import DockerInstance
from bench.tiers.docker.tier import DockerTier
from bench.tiers.host import HostTier
from bench.workloads.base import RunContext
from bench.workloads.cpu_sysbench import parse_sysbench_cpu
from bench.workloads.density import DensityIdle, meminfo
from bench.workloads.disk_fio import Fio
from bench.workloads.net_iperf3 import Iperf3
from bench.workloads.net_sockperf import Sockperf
from bench.workloads.startup import Startup
from tests.parts import need

BENCH = [sys.executable, "-m", "bench.cli"]
FAMILIES = {"cpu", "memory", "disk", "network", "startup"}
MiB = 1 << 20
PART_FIXTURES = {"engine_up": "docker"}  # a test on the live engine counts for docker


# -- helpers -----------------------------------------------------------------------------------

def leftovers(run_id: str) -> list[str]:
    """What the engine still holds that carries this run's label."""
    engine = docker_engine.connect(30)
    label = {"label": f"bench.run={run_id}"}
    return ([f"container {c.name}" for c in engine.containers.list(all=True, filters=label)]
            + [f"network {n.name}" for n in engine.networks.list(filters=label)]
            + [f"volume {v.name}" for v in engine.volumes.list(filters=label)])


def new_run_id(what: str) -> str:
    return f"test-{what}-{secrets.token_hex(3)}"


def context(tier: Any, instance: Instance | None, peer: Instance | None, raw: Path,
            seconds: float = 120) -> RunContext:
    def spec(role: str, command: list[str] | None) -> InstanceSpec:
        return InstanceSpec(role=role, limits=Limits(), command=command)

    return RunContext(tier=tier, instance=instance, peer=peer, new_spec=spec,
                      deadline=time.monotonic() + seconds, raw_dir=raw, run_key="t")


def cgroup_file(instance: Any, controller: str, name: str) -> str:
    return Path(f"/sys/fs/cgroup/{controller}/docker/{instance.container.id}/{name}").read_text()


def cgroup_v1() -> bool:
    return Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()


def bench(*args: str, env: dict[str, str],
          timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BENCH, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


# -- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine_up() -> None:
    state = docker_engine.diagnose()
    need("docker", state.ok, f"the Docker engine is unreachable: {state.reason} Fix: {state.fix}")


@pytest.fixture(scope="module")
def tier(engine_up: None, bench_image: Image,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerTier]:
    run_id = new_run_id("docker")
    work = tmp_path_factory.mktemp("docker")
    docker_tier = DockerTier()
    docker_tier.prepare(TierContext(run_id, bench_image, work, work))
    yield docker_tier
    docker_tier.finish()
    assert not leftovers(run_id)


@pytest.fixture(scope="module")
def host(bench_image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostTier]:
    work = tmp_path_factory.mktemp("host")
    host_tier = HostTier()
    host_tier.prepare(TierContext(new_run_id("host"), bench_image, work, work))
    yield host_tier
    host_tier.finish()


@pytest.fixture
def started(tier: DockerTier) -> Iterator[list[Instance]]:
    """Instances a test starts; stopped after it whatever happens."""
    instances: list[Instance] = []
    yield instances
    for instance in instances:
        instance.stop()


def sysbench_events(instance: Instance, seconds: int = 1) -> float:
    done = instance.exec(["sysbench", "cpu", "--threads=1", f"--time={seconds:g}",
                          "--cpu-max-prime=10000", "run"], timeout=60)
    return parse_sysbench_cpu(done.stdout)[0].value


# -- the whole path: `bench run` on the docker tier --------------------------------------------

EVERY_FAMILY = {
    "name": "docker-families",
    "tiers": ["docker"],
    "require_all_tiers": True,
    "repetitions": 1,
    "warmup": 0,
    "limits": {"cpus": 2, "memory_mb": 1024, "pids": 1024},
    "workloads": [
        {"workload": "cpu.sysbench", "params": {"seconds": 1}},
        {"workload": "cpu.pyperf", "params": {"processes": 1, "values": 2, "warmups": 1,
                                              "loops": 500}},
        {"workload": "memory", "params": {"size_mb": 16, "seconds": 0.3},
         "matrix": {"test": ["bandwidth", "latency"]}},
        {"workload": "disk.fio", "params": {"size_mb": 16, "runtime_s": 0.5},
         "matrix": {"rw": ["read", "randwrite"]}},
        {"workload": "network.iperf3", "params": {"seconds": 1}},
        {"workload": "network.sockperf", "params": {"seconds": 1}},
        {"workload": "startup.noop", "repetitions": 3, "matrix": {"cold": [False, True]}},
    ],
}


def test_bench_run_measures_every_family_in_docker(tmp_path: Path, results_dir: Path,
                                                    engine_up: None, bench_image: Image) -> None:
    path = tmp_path / "docker-families.yaml"
    path.write_text(yaml.safe_dump(EVERY_FAMILY))
    env = {**os.environ, "BENCH_RESULTS_DIR": str(results_dir), "COLUMNS": "200"}
    done = bench("run", "--wait", str(path), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    (run_path,) = [p for p in results_dir.iterdir() if p.is_dir()]
    run = RunDir(run_path)
    records = run.records()
    assert records and all(r.status == "ok" for r in records), [r.error for r in records]
    samples = run.samples()
    from bench.workloads import WORKLOADS

    assert {WORKLOADS[s.cell.workload].family for s in samples} == FAMILIES
    assert {s.cell.tier for s in samples} == {"docker"}
    tier_meta = run.manifest()["tier_metadata"]["docker"]
    assert tier_meta["storage_driver"] and tier_meta["server_version"]
    fio = next(s for s in samples if s.cell.workload == "disk.fio")
    assert fio.metadata["scratch_fs"] == "overlay" and fio.metadata["scratch_device"]
    iperf = next(s for s in samples if s.metric == "throughput_Gbps")
    assert iperf.metadata["network_path"] == "veth+bridge" and iperf.value > 0.1
    # start-up: our marks and the engine's stamps on one clock, in the order they happen
    startups = [s for s in samples if s.metric == "first_instruction_ms"]
    assert len(startups) == 6
    for sample in startups:
        p = sample.metadata["phases_ms"]
        assert p["create"] == 0 < p["created"] <= p["start_call"] < p["first_instruction"]
        assert p["first_instruction"] < p["exit"] <= p["exit_seen"] < p["removed"]
        # the engine's StartedAt falls inside our start call
        assert p["start_call"] < p["started"] <= p["start_returned"] + 1, p
        cold = sample.cell.params["cold"]
        assert sample.metadata["start"] == ("cold" if cold else "warm")
        if not cold:  # ... right after runc started the process (cold, loading it takes longer)
            assert abs(p["started"] - p["first_instruction"]) < 50, p
    assert {"phase_created_ms", "phase_started_ms"} <= {s.metric for s in samples}
    assert "docker" in done.stdout and "first_instruction_ms" in done.stdout
    assert not leftovers(run.run_id), "a finished run leaves nothing on the engine"


def test_scenario_keys_network_host_and_scratch_bind(tmp_path: Path, results_dir: Path,
                                                     engine_up: None, bench_image: Image) -> None:
    data = {**EVERY_FAMILY, "name": "docker-hostnet", "network": "host", "scratch": "bind",
            "workloads": [{"workload": "disk.fio", "params": {"size_mb": 16, "runtime_s": 1}},
                          {"workload": "network.iperf3", "params": {"seconds": 1}}]}
    path = tmp_path / "docker-hostnet.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {**os.environ, "BENCH_RESULTS_DIR": str(results_dir)}
    done = bench("run", "--wait", str(path), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    (run_path,) = [p for p in results_dir.iterdir() if p.is_dir()]
    samples = RunDir(run_path).samples()
    fio = next(s for s in samples if s.cell.workload == "disk.fio")
    assert fio.metadata["scratch_mode"] == "bind" and fio.metadata["scratch_fs"] != "overlay"
    iperf = next(s for s in samples if s.metric == "throughput_Gbps")
    assert iperf.metadata["network_path"] == "host" and iperf.value > 0.1
    assert not leftovers(RunDir(run_path).run_id)


# -- limits ------------------------------------------------------------------------------------

def test_half_a_cpu_halves_sysbench(tier: DockerTier, started: list[Instance]) -> None:
    half = tier.start(InstanceSpec("cpu-half", Limits(cpus=0.5)))
    free = tier.start(InstanceSpec("cpu-free", Limits()))
    started += [half, free]
    assert half.container.attrs["HostConfig"]["NanoCpus"] == 500_000_000
    # interleaved pairs (ABBA), a ratio per pair; one bounded retry, reported
    check = check_ratio(lambda: paired_ratio(lambda: sysbench_events(half),
                                             lambda: sysbench_events(free), pairs=5), 0.5, 0.10)
    print(check.describe())
    assert check.ok, check.describe()


def test_memory_limit_is_enforced_by_the_oom_killer(tier: DockerTier,
                                                    started: list[Instance]) -> None:
    small = tier.start(InstanceSpec("mem-64m", Limits(memory_mb=64)))
    started.append(small)
    small.exec(["python3", "-c", "b = b'x' * (16 << 20)"], timeout=30)  # fits: runs
    with pytest.raises(CommandError) as killed:
        small.exec(["python3", "-c", "b = b'x' * (256 << 20)"], timeout=30)
    assert killed.value.returncode == 137  # SIGKILL from the OOM killer
    if cgroup_v1():
        assert int(cgroup_file(small, "memory", "memory.limit_in_bytes")) == 64 * MiB
        oom = dict(line.split() for line in
                   cgroup_file(small, "memory", "memory.oom_control").splitlines())
        assert int(oom["oom_kill"]) >= 1
    # a command instance over its limit: the engine reports the OOM kill
    hog = tier.start(InstanceSpec("mem-hog", Limits(memory_mb=64),
                                  command=["python3", "-c", "b = b'x' * (256 << 20)"]))
    started.append(hog)
    assert hog.wait(60) == 137
    assert hog.metadata()["oom_killed"] is True


def test_cpuset_and_pids_limits(tier: DockerTier, started: list[Instance]) -> None:
    pinned = tier.start(InstanceSpec("pinned", Limits(cpuset="0", pids=32)))
    started.append(pinned)
    assert pinned.exec(["nproc"], timeout=10).stdout.strip() == "1"
    script = ("import subprocess\n"
              "ps = [subprocess.Popen(['sleep', '5']) for _ in range(64)]\n")
    with pytest.raises(CommandError) as refused:
        pinned.exec(["python3", "-c", script], timeout=30)
    assert "Resource temporarily unavailable" in refused.value.stderr
    if cgroup_v1():
        assert cgroup_file(pinned, "pids", "pids.max").strip() == "32"
        assert cgroup_file(pinned, "cpuset", "cpuset.cpus").strip() == "0"


@pytest.mark.parametrize(("scratch", "direction"), [("overlay", "read"), ("bind", "write")])
def test_block_io_throttle_on_the_scratch_device(tier: DockerTier, started: list[Instance],
                                                 tmp_path: Path, scratch: str,
                                                 direction: str) -> None:
    rate = 20 * MiB
    limits = Limits(io_read_bps=rate) if direction == "read" else Limits(io_write_bps=rate)
    box = tier.start(InstanceSpec(f"io-{direction}", limits, scratch=scratch))
    started.append(box)
    if scratch == "bind":
        mounts = {m["Destination"]: m["Type"] for m in box.container.attrs["Mounts"]}
        assert mounts["/scratch"] == "volume"
    params = Fio().parse_params({"rw": direction, "direct": True, "bs": "1m", "size_mb": 64,
                                 "runtime_s": 3, "iodepth": 4})
    found = Fio().run(context(tier, box, None, tmp_path), params)
    mbps = next(m.value for m in found if m.metric == "bandwidth_MBps")
    assert mbps == pytest.approx(rate / 1e6, rel=0.15)
    assert box.metadata()["scratch_mode"] == scratch


# -- network: host <-> container, in bridge and host mode ---------------------------------------

@pytest.mark.parametrize("network", ["bridge", "host"])
def test_network_throughput_host_to_container(tier: DockerTier, host: HostTier,
                                              started: list[Instance], tmp_path: Path,
                                              network: str) -> None:
    box = tier.start(InstanceSpec(f"net-{network}", Limits(), network=network))
    started.append(box)
    address = box.address()
    if network == "bridge":
        assert address.split(".")[0] in ("172", "192", "10") and address != "127.0.0.1"
    else:
        assert address == "127.0.0.1"
    client = host.start(InstanceSpec("client", Limits()))
    try:
        for reverse in (False, True):  # host -> container, then container -> host
            params = Iperf3().parse_params({"seconds": 1, "reverse": reverse})
            ctx = context(host, client, box, tmp_path)
            found = Iperf3().run(ctx, params)
            gbps = next(m.value for m in found if m.metric == "throughput_Gbps")
            assert gbps > 0.3, (network, reverse, gbps)
            raw = (tmp_path / ctx.raw_files[-1]).read_text()
            assert f'"remote_host":\t"{address}"' in raw or f'"remote_host": "{address}"' in raw
        rtt = Sockperf().run(context(host, client, box, tmp_path),
                             Sockperf().parse_params({"seconds": 1}))
        by_metric = {m.metric: m.value for m in rtt}
        # a round trip through loopback or a veth on one host: microseconds, not milliseconds
        assert 1 < by_metric["rtt_p50_us"] < 5000, by_metric
        assert by_metric["rtt_p50_us"] <= by_metric.get("rtt_p99_us", float("inf")), by_metric
    finally:
        client.stop()
    assert box.metadata()["network_mode"] == network


# -- density -------------------------------------------------------------------------------------

def test_density_measures_memory_per_idle_container(tier: DockerTier, tmp_path: Path) -> None:
    params = DensityIdle().parse_params({"instances": 4, "settle_s": 0.5})
    found = {m.metric: m for m in DensityIdle().run(context(tier, None, None, tmp_path), params)}
    assert set(found) == {"memory_per_instance_MB", "cgroup_memory_per_instance_MB",
                          "support_memory_per_instance_MB"}
    assert found["support_memory_per_instance_MB"].metadata["support_measure"] == "PSS"
    # an idle container: docker-init and `sleep`, charged a few hundred KB to a few MB
    assert 0.05 < found["cgroup_memory_per_instance_MB"].value < 16
    # one containerd-shim per container: a few MB of the engine's own memory each
    assert 1 < found["support_memory_per_instance_MB"].value < 32
    assert found["memory_per_instance_MB"].metadata["instances"] == 4
    assert not [c for c in leftovers(tier.ctx.run_id) if "-density-" in c]


def test_meminfo_reads_bytes() -> None:
    parsed = meminfo("MemTotal:       24684084 kB\nMemAvailable:   100 kB\nHugePages_Total: 0\n")
    assert parsed == {"MemTotal": 24684084 * 1024, "MemAvailable": 102400, "HugePages_Total": 0}


# -- start-up, image, cleanup, errors ------------------------------------------------------------

def test_startup_phases_from_engine_stamps(tier: DockerTier, tmp_path: Path) -> None:
    found = Startup().run(context(tier, None, None, tmp_path),
                          Startup().parse_params({}))
    meta = found[0].metadata
    p = meta["phases_ms"]
    order = ["create", "created", "start_call", "first_instruction", "exit", "exit_seen",
             "removed"]
    assert [p[k] for k in order] == sorted(p[k] for k in order), p
    assert p["start_call"] < p["started"] <= p["start_returned"] + 1, p
    assert meta["start"] == "warm" and meta["network_path"] == "veth+bridge"
    assert not [c for c in leftovers(tier.ctx.run_id) if "-startup-" in c]


@pytest.fixture
def relay(engine_up: None) -> Iterator[str]:
    """The local engine's socket relayed on loopback TCP: the engine as bench reaches a remote
    one (tcp://...), whose clock bench must not take for its own."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(docker_engine.DEFAULT_SOCKET)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    server.close()


def test_a_remote_engine_omits_the_phases_on_its_clock(
        relay: str, bench_image: Image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_DOCKER_URL", relay)
    run_id = new_run_id("remote")
    remote = DockerTier()
    remote.prepare(TierContext(run_id, bench_image, tmp_path, tmp_path))
    try:
        found = {m.metric: m for m in Startup().run(context(remote, None, None, tmp_path),
                                                     Startup().parse_params({}))}
        box = remote.start(InstanceSpec("main", Limits()))  # its exec: the engine's own
        try:
            assert box.exec(["echo", "hi"], timeout=30).stdout == "hi\n"
            assert box.metadata()["exec_path"].startswith("docker exec (the engine is on "
                                                          "another host")
        finally:
            box.stop()
    finally:
        remote.finish()
    assert "first_instruction_ms" not in found and "exit_ms" not in found
    meta = found["total_ms"].metadata
    assert set(meta["phases_omitted"]) == {"first_instruction", "started", "exit"}
    assert all("another host" in why for why in meta["phases_omitted"].values())
    phases = meta["phases_ms"]
    assert not set(phases) & set(meta["phases_omitted"])
    order = ["create", "created", "start_call", "start_returned", "exit_seen", "removed"]
    assert [phases[k] for k in order] == sorted(phases.values()), phases
    assert not leftovers(run_id)


def test_image_is_imported_once_and_labelled(tier: DockerTier, bench_image: Image) -> None:
    image_id, imported = import_image(tier.engine, bench_image)
    assert not imported and image_id == tier.image_id
    labels = tier.engine.images.get(bench_image.tag).labels
    assert labels["bench.image.hash"] == bench_image.hash


def test_cleanup_removes_what_a_killed_run_left(engine_up: None, bench_image: Image,
                                                tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.core import hostlock

    run_id = new_run_id("crash")
    monkeypatch.setenv("BENCH_WORK_DIR", str(tmp_path / "work"))
    hostlock.RunLock(run_id).release(remove=False)  # the work directory of a run that died
    crashed = DockerTier()
    work = tmp_path / "work" / run_id / "docker"
    crashed.prepare(TierContext(run_id, bench_image, work, tmp_path))
    main = crashed.start(InstanceSpec("main", Limits(), scratch="bind"))
    crashed.start(InstanceSpec("startup", Limits(), command=["sleep", "60"]))
    assert isinstance(main, DockerInstance) and main.agent is not None
    # the run dies here: nothing is stopped, nothing finished
    left = leftovers(run_id)
    assert len(left) == 4, left  # two containers, the run's network, a scratch volume
    env = {**os.environ, "BENCH_LOCK_PATH": str(tmp_path / "lock"), "COLUMNS": "500"}
    done = bench("cleanup", "--run", run_id, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    for thing in left:
        assert f"docker: {thing}" in done.stdout
    assert f"docker: agent directory {work / docker_agent.BASE_NAME}" in done.stdout
    assert not leftovers(run_id) and not main.agent.directory.exists()


def test_finish_removes_everything_and_is_idempotent(engine_up: None, bench_image: Image,
                                                     tmp_path: Path) -> None:
    run_id = new_run_id("finish")
    short = DockerTier()
    short.prepare(TierContext(run_id, bench_image, tmp_path, tmp_path))
    box = short.start(InstanceSpec("main", Limits(), scratch="bind"))
    box.exec(["true"], timeout=10)
    box.stop()
    box.stop()
    short.finish()
    short.finish()
    assert not leftovers(run_id)
    assert not (tmp_path / docker_agent.BASE_NAME).exists()


# -- exec: through the container's own process (bench-agent), else `docker exec` ---------------

# what a command holds from the engine, read by the command itself
PROBE = r"""
import json, os, resource
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
keep = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp",
        "Seccomp_filters", "Uid", "Gid", "Groups")
try:
    label = open("/proc/self/attr/current").read().strip()
except OSError as exc:
    label = f"errno {exc.errno}"
print(json.dumps({
    "status": {k: status[k].strip() for k in keep if k in status},
    "cgroup": open("/proc/self/cgroup").read(),
    "ns": {n: os.readlink("/proc/self/ns/" + n) for n in sorted(os.listdir("/proc/self/ns"))},
    "lsm": label, "env": dict(os.environ), "cwd": os.getcwd(), "umask": os.umask(0o022),
    "own_session": os.getsid(0) == os.getpid(),
    "oom_score_adj": open("/proc/self/oom_score_adj").read().strip(),
    "rlimits": {n: resource.getrlimit(getattr(resource, n))
                for n in dir(resource) if n.startswith("RLIMIT_")},
}))
"""


def test_exec_through_the_agent_holds_what_docker_exec_gives(tier: DockerTier,
                                                            started: list[Instance]) -> None:
    """The agent's commands and `docker exec`'s, in the same container, hold the same
    capabilities, seccomp filter, no_new_privs, LSM label, cgroup, namespaces, ids, env and
    working directory; and the agent's directory goes with the container."""
    box = tier.start(InstanceSpec("agent", Limits(cpus=1, memory_mb=256, pids=64)))
    started.append(box)
    assert box.agent is not None, box.metadata()
    assert box.metadata()["exec_path"] == docker_agent.EXEC_PATH
    argv = ["python3", "-c", PROBE]
    mine = json.loads(box.exec(argv, timeout=30).stdout)
    done = box.container.exec_run(argv, demux=True)
    assert done.exit_code == 0, done.output
    theirs = json.loads(done.output[0])
    assert mine == theirs
    # ... and that is the container's, not the host's
    assert mine["ns"]["mnt"] != os.readlink("/proc/self/ns/mnt")
    assert box.container.id in mine["cgroup"]
    assert mine["status"]["Seccomp"] == "2" and mine["status"]["CapBnd"] != "000001ffffffffff"
    directory = box.agent.directory
    assert (directory / docker_agent.SOCKET_NAME).exists()
    box.stop()
    assert not directory.exists()


def test_exec_timeout_kills_the_command(tier: DockerTier, started: list[Instance]) -> None:
    from bench.core.errors import CommandTimeout

    box = tier.start(InstanceSpec("timeout", Limits()))
    started.append(box)
    assert box.agent is not None, box.metadata()
    began = time.monotonic()
    with pytest.raises(CommandTimeout):  # its process group goes: the background sleep too
        box.exec(["sh", "-c", "sleep 30 & sleep 31"], timeout=1)
    assert time.monotonic() - began < 10
    left = box.exec(["ps", "-eo", "args"], timeout=10).stdout
    assert "sleep 3" not in left, left
    with pytest.raises(CommandError) as failed:
        box.exec(["sh", "-c", "echo out; echo why >&2; exit 3"], timeout=10)
    assert failed.value.returncode == 3 and failed.value.stderr == "why\n"
    with pytest.raises(CommandError) as missing:
        box.exec(["no-such-program"], timeout=10)
    assert missing.value.returncode == 127 and "no-such-program" in missing.value.stderr


def test_exec_falls_back_to_docker_exec_if_the_agent_does_not_answer(
        tier: DockerTier, started: list[Instance], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docker_agent, "COMMAND", ["sleep", "infinity"])  # never answers
    monkeypatch.setattr(docker_agent, "READY_TIMEOUT_S", 0.3)
    box = tier.start(InstanceSpec("no-agent", Limits()))
    started.append(box)
    assert box.agent is None
    assert box.metadata()["exec_path"].startswith("docker exec (bench's agent did not come up")
    assert box.exec(["echo", "hi"], timeout=30).stdout == "hi\n"
    assert box.container.attrs["Config"]["Cmd"] == ["sleep", "infinity"]


def test_background_server_is_stopped(tier: DockerTier, started: list[Instance]) -> None:
    box = tier.start(InstanceSpec("bg", Limits()))
    started.append(box)
    server = box.spawn(["iperf3", "-s", "-p", "5999"])
    deadline = time.monotonic() + 10
    while "iperf3 -s" not in box.exec(["ps", "-eo", "args"], timeout=10).stdout:
        assert time.monotonic() < deadline, "the server never started"
        time.sleep(0.1)
    said = server.stop()
    assert "Server listening on 5999" in said
    assert "iperf3 -s" not in box.exec(["ps", "-eo", "args"], timeout=10).stdout


def test_ensure_running_leaves_a_running_engine_alone(engine_up: None) -> None:
    assert "already running" in DockerTier().ensure_running()[0]


def test_unreachable_engine_says_why_and_how_to_fix(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "docker.sock"
    monkeypatch.setenv("BENCH_DOCKER_URL", f"unix://{path}")
    missing = DockerTier().available()
    assert not missing.ok
    assert f"No Docker socket at {path}" in missing.reason
    assert "BENCH_DOCKER_URL" in missing.fix and "bench setup" in missing.fix
    # a socket left by a daemon that died: nobody listens on it
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()
    stale = DockerTier().available()
    assert not stale.ok and "Nothing answers" in stale.reason and "bench setup" in stale.fix
    # a remote engine that is not there (nothing listens on the discard port of loopback)
    monkeypatch.setenv("BENCH_DOCKER_URL", "tcp://127.0.0.1:9")
    remote = DockerTier().available()
    assert not remote.ok and "127.0.0.1:9 does not answer" in remote.reason
    assert "BENCH_DOCKER_URL" in remote.fix
    # the user sees it in `bench doctor`, and a run that needs docker stops with it
    env = {**os.environ, "BENCH_DOCKER_URL": f"unix://{tmp_path}/absent.sock", "COLUMNS": "250"}
    doctor = bench("doctor", env=env)
    row = next(line for line in doctor.stdout.splitlines() if " docker " in line)
    assert " no " in row and "No Docker socket at" in row
    scenario = tmp_path / "docker-only.yaml"
    one_workload = {**EVERY_FAMILY, "workloads": EVERY_FAMILY["workloads"][:1]}
    scenario.write_text(yaml.safe_dump(one_workload))
    run = bench("run", str(scenario), env={**env, "BENCH_RESULTS_DIR": str(tmp_path / "r"),
                                           "BENCH_LOCK_PATH": str(tmp_path / "lock")})
    assert run.returncode == 2 and "Traceback" not in run.stdout + run.stderr
    assert "docker" in run.stdout and "No Docker socket at" in run.stdout
    assert "fix:" in run.stdout


# -- the engine's clock ----------------------------------------------------------------------------

def test_engine_time_stamps_parse_to_nanoseconds() -> None:
    assert docker_engine.parse_engine_time("1970-01-01T00:00:01.000000001Z") == pytest.approx(
        1.000000001, abs=1e-9)
    assert docker_engine.parse_engine_time("2024-05-01T12:00:00.5+02:00") == pytest.approx(
        1714557600.5)
    assert docker_engine.parse_engine_time("0001-01-01T00:00:00Z") is None
    with pytest.raises(ValueError):
        docker_engine.parse_engine_time("yesterday")


def test_engine_stamps_land_on_our_monotonic_clock() -> None:
    before = time.monotonic()
    wall = time.time()
    whole = int(wall)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + \
        f".{int((wall - whole) * 1e9):09d}Z"
    converted = docker_engine.to_monotonic(stamp)
    assert converted is not None and abs(converted - before) < 0.01


def test_facts_the_engine_does_not_report_are_unknown(tmp_path: Path) -> None:
    class Silent:  # an engine whose `info` and `version` leave the fields out
        def info(self) -> dict[str, Any]:
            return {"DockerRootDir": str(tmp_path)}

        def version(self) -> dict[str, Any]:
            return {}

    facts = docker_engine.engine_facts(Silent())  # type: ignore[arg-type]
    assert facts["storage_driver"] == "unknown" and facts["server_version"] == "unknown"
    docker_tier = DockerTier()
    docker_tier._facts = {"docker_root": str(tmp_path)}  # prepare() never asked the engine
    assert docker_tier.scratch_facts("overlay")["storage_driver"] == "unknown"
    assert "overlay2" not in str(docker_tier.metadata())
