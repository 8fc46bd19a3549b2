"""Isolation switches, the pure parts: new limits on cgroup v1 and v2 (set, switched, read
back), time to effect from a series, scenario validation, the VM's boot-time XML.
The live switches on every tier are in tests/test_switches_live.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.core.errors import ParseError, ScenarioError
from bench.core.limits import Limits
from bench.kernel import cgroupread, cgroups
from bench.kernel.cgroups import Cgroup
from bench.run import cpushare, scenario, switches
from bench.run.switches import SwitchEvent, level, time_to_effect
from bench.tiers.kvm import domxml
from bench.tiers.kvm.domxml import DomainConfig
from bench.tiers.registry import TIERS
from bench.workloads import WORKLOADS
from bench.workloads.base import Series
from bench.workloads.cpu_sysbench import parse_sysbench_intervals
from bench.workloads.disk_fio import parse_fio_log
from bench.workloads.net_iperf3 import parse_iperf3_intervals
from tests.test_cgroups import MiB, v1_tree, v2_tree

FIO_METRICS = WORKLOADS["disk.fio"].series_metric or {}


def test_iops_limits_on_v2_are_set_switched_and_read_back(tmp_path: Path) -> None:
    h, parent = v2_tree(tmp_path)
    limits = Limits(io_read_iops=500, io_write_iops=300, io_read_bps=20 * MiB)
    group = Cgroup(h, "bench-ns/run-1/main-1", cgroups.controllers_for(limits))
    group.make(limits, io_device="254:0")
    io_max = parent / "main-1" / "io.max"
    assert io_max.read_text() == f"254:0 rbps={20 * MiB} riops=500 wiops=300"
    (parent / "main-1" / "cpu.max").write_text("max 100000")
    (parent / "main-1" / "memory.max").write_text("max")
    cgroupread.update(group, Limits(cpus=1.5, io_read_iops=2000), io_device="254:0")
    assert io_max.read_text() == "254:0 riops=2000"  # the kernel merges keys; a file does not
    io_max.write_text(f"254:0 rbps={20 * MiB} wbps=max riops=2000 wiops=300\n")
    assert cgroupread.read_limits(group, "254:0") == {
        "cpus": 1.5, "memory_mb": None, "io_read_bps": 20 * MiB, "io_write_bps": None,
        "io_read_iops": 2000, "io_write_iops": 300}


def test_v1_memory_switch_writes_memsw_first_when_growing(tmp_path: Path) -> None:
    h, roots = v1_tree(tmp_path)
    limits = Limits(memory_mb=256, io_read_iops=100)
    group = Cgroup(h, "bench-ns/run-1/main-1", cgroups.controllers_for(limits))
    group.make(limits, io_device="8:0")
    blkio = roots["blkio"] / "bench-ns/run-1/main-1"
    assert (blkio / "blkio.throttle.read_iops_device").read_text() == "8:0 100"
    grow = [p.name for p, _ in cgroupread.update(group, Limits(memory_mb=1024))]
    assert grow == ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]
    shrink = [p.name for p, _ in cgroupread.update(group, Limits(memory_mb=256))]
    assert shrink == ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
    assert cgroupread.read_limits(group, "8:0")["io_read_iops"] == 100
    assert cgroupread.read_limits(group, "8:0")["memory_mb"] == 256


def test_time_to_effect_needs_three_steady_seconds_within_five_percent() -> None:
    points = [(float(t), v) for t, v in enumerate(
        [20, 20, 20, 20, 20, 110, 200, 180, 199, 201, 200, 200, 200], 1)]
    # switched at 5.2 s: the second ending at 7 is the first of three within 5% of 200?
    # 7 -> 200 ok, 8 -> 180 (10% off) breaks it, 9, 10, 11 -> steady: effect by 9 s
    assert level(points, 5.2, 13) == 200
    assert time_to_effect(points, 5.2, 200, 13) == pytest.approx(9 - 5.2)
    assert time_to_effect(points, 5.2, 400, 13) is None  # never reached: not reported as 0
    assert time_to_effect(points, 5.2, 200, 9.5) is None  # the next switch came first
    # the second ending at 11 straddles a switch at 10.6: it belongs to neither level
    assert time_to_effect(points, 5.2, 200, 10.6) is None
    assert level(points, 0, 6.6) == 20  # not the second ending at 7 (110, 200)
    assert level(points, 0, 5.2) == 20


def test_a_cpu_switch_counted_by_the_host_expects_the_quota_itself() -> None:
    share = [0.1] * 6 + [0.195, 0.2, 0.2, 0.2, 0.2, 0.2]
    series = Series({cpushare.METRIC: [(float(t), v) for t, v in enumerate(share, 1)]},
                    {cpushare.METRIC: "CPU"})
    events = [_event(1, 6.0, {"cpus": 0.2})]
    switches._effects(events, series, {"cpus": cpushare.METRIC}, Limits(cpus=0.1))
    effect = events[0].effects[0]
    assert (effect.level_before, effect.level_after, effect.expected_after) == (0.1, 0.2, 0.2)
    assert effect.matches_limit and effect.time_to_effect_s == 1.0


def _event(index: int, at: float, set_: dict[str, object], live: bool = True) -> SwitchEvent:
    changes = [{"limit": k, "value": v, "live": live, "how": "x"} for k, v in set_.items()]
    return SwitchEvent(index, at, at, set_, 0.001,
                       [{"role": "main", "live": live, "changes": changes}])


def test_effects_use_the_segment_of_the_same_limit_and_never_fake_a_not_live_one() -> None:
    disk = [20.0] * 5 + [205.0] * 10 + [20.5] * 6
    series = Series({"bandwidth_MBps": [(float(t), v) for t, v in enumerate(disk, 1)]},
                    {"bandwidth_MBps": "MB/s"})
    events = [_event(1, 5.0, {"io_read_bps": 200 * 1000**2}),
              _event(2, 10.0, {"cpus": 1.0}),  # another limit: the disk level goes on
              _event(3, 15.0, {"io_read_bps": 20 * 1000**2})]
    switches._effects(events, series, FIO_METRICS, Limits(io_read_bps=20 * 1000**2))
    up = events[0].effects[0]
    assert (up.level_before, up.level_after, up.expected_after) == (20.0, 205.0, 200.0)
    assert up.time_to_effect_s == 1.0 and up.matches_limit is True
    assert not events[1].effects  # fio's series does not follow the CPU
    assert events[2].effects[0].level_after == 20.5 and events[2].effects[0].matches_limit
    frozen = [_event(1, 5.0, {"io_read_bps": 200 * 1000**2}, live=False)]
    switches._effects(frozen, series, FIO_METRICS, Limits(io_read_bps=20 * 1000**2))
    assert frozen[0].effects[0].time_to_effect_s is None
    assert "not live" in frozen[0].effects[0].note


def test_series_parsers_on_tool_output() -> None:
    sysbench = ("[ 1s ] thds: 2 eps: 941.12 lat (ms,95%): 2.30\n"
                "[ 2s ] thds: 2 eps: 1880.50 lat (ms,95%): 1.10\n")
    assert parse_sysbench_intervals(sysbench) == [(1.0, 941.12), (2.0, 1880.5)]
    fio = "1000, 20480, 0, 1048576, 0\n2000, 204800, 0, 1048576, 0\n"
    assert parse_fio_log(fio, 1024 / 1e6) == [(1.0, pytest.approx(20.97152)),
                                               (2.0, pytest.approx(209.7152))]
    received = ('{"intervals": [{"sum": {"end": 1.0, "seconds": 1.0, "bits_per_second": 9.5e7}},'
                ' {"sum": {"end": 1.1, "seconds": 0.1, "bits_per_second": 1e6}}]}')
    sent = '{"sum": {"end": 1.0, "seconds": 1.0, "bits_per_second": 2e8}}'
    iperf = f'{{"intervals": [{sent}], "server_output_json": {received}}}'
    # the receiver's side (the server's, or the client's with -R); a stub interval is dropped
    assert parse_iperf3_intervals(iperf) == [(1.0, 95.0)]
    assert parse_iperf3_intervals(received, reverse=True) == [(1.0, 95.0)]
    with pytest.raises(ParseError, match="server output"):
        parse_iperf3_intervals('{"intervals": []}')


SWITCHED = """
name: s
tiers: [ns, docker]
limits: {cpus: 0.5, net_mbit: 100}
switches:
  - at_s: 4
    set: {cpus: 1.5, net_mbit: 400}
workloads:
  - workload: cpu.sysbench
    params: {seconds: 8}
"""


def error_of(text: str) -> str:
    with pytest.raises(ScenarioError) as info:
        scenario.parse(text, "s.yaml")
    return str(info.value)


def test_switch_scenarios_are_validated_with_clear_errors() -> None:
    parsed = scenario.parse(SWITCHED, "s.yaml")
    assert switches.ceiling(parsed.limits, parsed.switches) == Limits(cpus=1.5, net_mbit=400)
    assert "limits.net_mbit: an egress rate needs network: bridge" in error_of(
        SWITCHED + "network: host\n")
    assert "switches[0].set.net_mbit" in error_of(
        SWITCHED.replace("limits: {cpus: 0.5, net_mbit: 100}", "limits: {cpus: 0.5}")
        + "network: host\n")
    assert "'host' has no limits and takes no switches" in error_of(
        SWITCHED.replace("[ns, docker]", "[host, ns]"))
    assert "reports no time series" in error_of(
        SWITCHED.replace("cpu.sysbench", "network.sockperf").replace("{seconds: 8}", "{}"))
    assert "list them in time order" in error_of(SWITCHED.replace(
        "workloads:", "  - at_s: 3\n    set: {cpus: 0.5}\nworkloads:"))
    assert "switches[0].set.cpuz: unknown key" in error_of(SWITCHED.replace("{cpus: 1.5,",
                                                                            "{cpuz: 1.5,"))
    shipped = scenario.load("switches")[0]
    assert shipped.switches and all(TIERS[t].live_switches for t in shipped.tiers)


def test_the_host_tier_takes_no_switches() -> None:
    assert not TIERS["host"].live_switches
    assert TIERS["ns"].live_switches >= {"cpus", "memory_mb", "io_read_bps", "io_read_iops",
                                         "net_mbit"}


def test_a_switchable_guest_boots_with_headroom_and_a_balloon(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    cfg = DomainConfig(name="g", domain_type="qemu", run_id="r", role="main", vcpus=2,
                       memory_mb=256, memory_max_mb=1024, kernel=tmp_path / "k",
                       initrd=tmp_path / "i", cmdline="", console_log=tmp_path / "c",
                       scratch_disk=tmp_path / "s", cpu_quota=0.5, io_read_iops=300,
                       io_write_iops=200, network="n", net_kbytes=12207)
    dom = ET.fromstring(domxml.domain_xml(cfg))
    assert dom.findtext("memory") == "1024" and dom.findtext("currentMemory") == "256"
    assert dom.find("devices/memballoon").get("model") == "virtio"  # type: ignore[union-attr]
    assert dom.findtext("cputune/quota") == "25000"  # 0.5 CPU over 2 vCPU threads
    assert dom.findtext("devices/disk/iotune/read_iops_sec") == "300"
    assert dom.findtext("devices/disk/iotune/write_iops_sec") == "200"
    out = dom.find("devices/interface/bandwidth/outbound")
    assert out is not None and out.get("average") == "12207"


def switch_record() -> dict[str, Any]:
    """One switch run as bench/run/switches.py writes it: a live change and one not live."""
    change = {"limit": "io_read_bps", "value": 200, "live": True, "how": "<b>cgroup</b>"}
    frozen = {"limit": "cpus", "value": 4, "live": False, "how": "more CPUs than the 2 vCPUs"}
    record = {
        "tier": "ns<script>", "workload": "disk.fio", "metrics": {"bandwidth_MBps": "MB/s"},
        "points": {"bandwidth_MBps": [[1.0, 20.0], [2.0, 200.0]]}, "skipped": [],
        "switches": [{"index": 1, "at_s": 1.0, "called_s": 1.0, "set": {"io_read_bps": 200},
                      "latency_s": 0.001, "memory": None,
                      "instances": [{"role": "main", "live": False,
                                     "changes": [change, frozen]}],
                      "effects": [{"limit": "io_read_bps", "old": 20, "new": 200,
                                   "metric": "bandwidth_MBps", "level_before": 20.0,
                                   "level_after": 200.0, "expected_after": 200.0,
                                   "time_to_effect_s": None, "note": "not reached"}]}]}
    return record


def test_report_section_shows_each_switch_and_escapes_what_it_shows(tmp_path: Path) -> None:
    from bench.report import switches as report_switches
    from bench.report.page import Page

    (tmp_path / "switches.jsonl").write_text(json.dumps(switch_record()) + "\n{cut short")
    page = Page("t")
    report_switches.section(page, "run-1", tmp_path)
    (_, title, body), = page.sections
    assert "run-1" in title and page.figures == 1
    assert "<script>" not in body.split("data-figure")[0] and "ns&lt;script&gt;" in body
    assert "&lt;b&gt;cgroup&lt;/b&gt;" in body and "not reached" in body
    assert "NO (more CPUs than the 2 vCPUs)" in body  # a switch that was not live is shown
    empty = Page("t")
    report_switches.section(empty, "run-2", tmp_path / "none")
    assert not empty.sections


def test_the_summary_prints_the_time_to_effect_table(tmp_path: Path) -> None:
    from rich.console import Console

    from bench.analysis import switch_table

    record = switch_record()
    record["switches"][0]["effects"][0] |= {"time_to_effect_s": 1.5, "note": ""}
    (tmp_path / "switches.jsonl").write_text(json.dumps(record) + "\n")
    console = Console(record=True, width=400)
    switch_table.print_table(tmp_path, console)
    lines = [line for line in console.export_text().splitlines() if "ns<script>" in line]
    assert len(lines) == 2, console.export_text()
    assert "20 → 200" in lines[0] and "1.5" in lines[0].split()[-2:]
    assert "NO (more CPUs than the 2 vCPUs)" in lines[1] and "not live" in lines[1]
    quiet = Console(record=True)
    switch_table.print_table(tmp_path / "none", quiet)  # a run without switches: nothing
    assert quiet.export_text() == ""
