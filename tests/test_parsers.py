"""Parsers on real tool output captured on this machine (tests/data/, see its README)."""

from __future__ import annotations

import json

import pytest

from bench.core.errors import ParseError
from bench.workloads.cpu_pyperf import parse_pyperf_json
from bench.workloads.cpu_sysbench import parse_sysbench_cpu
from bench.workloads.disk_fio import parse_fio_json
from bench.workloads.memory import parse_memprobe
from bench.workloads.net_iperf3 import parse_iperf3_json
from bench.workloads.net_sockperf import parse_sockperf_log
from bench.workloads.startup import parse_stamp
from tests.conftest import data


def by_metric(found: list) -> dict:  # type: ignore[type-arg]
    return {m.metric: m for m in found}


def test_sysbench_one_and_two_threads() -> None:
    one = by_metric(parse_sysbench_cpu(data("sysbench-cpu-1thread.txt")))
    two = by_metric(parse_sysbench_cpu(data("sysbench-cpu-2threads.txt")))
    assert two["events_per_s"].value == 5681.90
    assert two["events_per_s"].metadata["threads"] == 2
    assert two["latency_p95_ms"].value == 0.44
    assert one["events_per_s"].metadata["threads"] == 1
    assert one["events_per_s"].direction == "higher"
    assert one["events_per_s"].value == 4319.03


def test_sysbench_garbage_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="events per second"):
        parse_sysbench_cpu("FATAL: unknown test 'cpux'")


def test_fio_random_read_direct() -> None:
    text = data("fio-randread-direct.json")
    raw = json.loads(text)["jobs"][0]["read"]
    found = by_metric(parse_fio_json(text, "randread"))
    assert found["iops"].value == pytest.approx(raw["iops"])
    assert found["bandwidth_MBps"].value == pytest.approx(raw["bw_bytes"] / 1e6)
    p99_ns = raw["clat_ns"]["percentile"]["99.000000"]
    assert found["clat_p99_us"].value == pytest.approx(p99_ns / 1e3)
    assert found["clat_p50_us"].value <= found["clat_p99_us"].value <= found["clat_p99.9_us"].value
    assert found["clat_p99_us"].direction == "lower"


def test_fio_write_side_is_read_for_writes() -> None:
    text = data("fio-randwrite-buffered.json")
    raw = json.loads(text)["jobs"][0]
    found = by_metric(parse_fio_json(text, "randwrite"))
    assert raw["read"]["iops"] == 0
    assert found["iops"].value == pytest.approx(raw["write"]["iops"])
    # and the raw numbers agree with each other: IOs done over the job's runtime
    assert found["iops"].value == pytest.approx(
        raw["write"]["total_ios"] / (raw["write"]["runtime"] / 1000), rel=0.02)


def test_fio_sequential_read_with_a_warning_before_the_json() -> None:
    text = "fio: some warning printed before the JSON\n" + data("fio-read-direct.json")
    found = by_metric(parse_fio_json(text, "read"))
    assert found["bandwidth_MBps"].value > 50
    assert found["bandwidth_MBps"].unit == "MB/s"


def test_fio_not_json() -> None:
    with pytest.raises(ParseError):
        parse_fio_json("fio: failed to open file", "read")


def test_iperf3_throughput() -> None:
    text = data("iperf3-tcp.json")
    raw = json.loads(text)["end"]
    found = by_metric(parse_iperf3_json(text))
    bits = raw["sum_received"]["bits_per_second"]
    assert found["throughput_Gbps"].value == pytest.approx(bits / 1e9)
    assert found["retransmits"].value == raw["sum_sent"]["retransmits"]


def test_iperf3_error_json_is_reported() -> None:
    # iperf3 3.12 exits 0 when it cannot connect; the error is only in the JSON
    with pytest.raises(ParseError, match="Connection refused"):
        parse_iperf3_json(data("iperf3-refused.json"))


def test_sockperf_full_log_percentiles() -> None:
    text = data("sockperf-fulllog.csv")
    found = by_metric(parse_sockperf_log(text))
    rows = [line.split(",") for line in text.splitlines() if line[:1].isdigit()]
    assert found["rtt_p50_us"].metadata["observations"] == len(rows)
    # sockperf's own latency column is half the round trip
    halves = sorted(float(r[3]) for r in rows)
    assert found["rtt_p50_us"].value == pytest.approx(2 * halves[len(halves) // 2], rel=0.02)
    assert found["rtt_p50_us"].value < found["rtt_p99_us"].value < found["rtt_p99.9_us"].value


def test_sockperf_without_rows() -> None:
    with pytest.raises(ParseError):
        parse_sockperf_log("sockperf: ERROR: Can`t connect socket (errno=111 Connection refused)")


def test_pyperf_suite() -> None:
    text = data("pyperf-pymix.json")
    (found,) = parse_pyperf_json(text)
    values = [v for run in json.loads(text)["benchmarks"][0]["runs"] for v in run.get("values", [])]
    assert found.metric == "time_per_call_us"
    assert min(values) * 1e6 <= found.value <= max(values) * 1e6
    assert found.metadata["values"] == len(values)


def test_pyperf_garbage() -> None:
    with pytest.raises(ParseError):
        parse_pyperf_json("{}")


def test_memprobe_both_modes() -> None:
    (bw,) = parse_memprobe(data("memprobe-bandwidth.json"))
    (lat,) = parse_memprobe(data("memprobe-latency.json"))
    assert bw.metric == "copy_MBps" and bw.value > 100 and bw.direction == "higher"
    assert lat.metric == "load_latency_ns" and 1 < lat.value < 10_000 and lat.direction == "lower"


def test_stamp() -> None:
    stamp = parse_stamp(data("stamp.json"))
    assert stamp == json.loads(data("stamp.json"))["monotonic_ns"] / 1e9
    with pytest.raises(ParseError):
        parse_stamp("exec failed")


def test_metrics_a_tool_did_not_report_are_absent_not_zero() -> None:
    fio = json.loads(data("fio-randread-direct.json"))
    del fio["jobs"][0]["read"]["clat_ns"]["mean"]
    found = by_metric(parse_fio_json(json.dumps(fio), "randread"))
    assert "clat_mean_us" not in found
    assert found["iops"].value > 0
    iperf = json.loads(data("iperf3-tcp.json"))
    del iperf["end"]["sum_sent"]["retransmits"]  # what iperf3 prints where it cannot count them
    found = by_metric(parse_iperf3_json(json.dumps(iperf)))
    assert "retransmits" not in found
    assert found["throughput_Gbps"].value > 0
