"""Disk: fio on a scratch file, parsed from `--output-format=json`."""

from __future__ import annotations

import contextlib
import json
from typing import Any, ClassVar, Literal

from pydantic import Field

from bench.core.errors import BenchError, ParseError
from bench.core.samples import Measurement
from bench.workloads.base import Params, RunContext, Series, Workload

Pattern = Literal["read", "write", "randread", "randwrite"]


class FioParams(Params):
    rw: Pattern = "randread"
    direct: bool = True
    bs: str | None = Field(None, pattern=r"^\d+[kKmM]?$", description="default 1m seq, 4k rand")
    size_mb: int = Field(256, ge=1, le=1 << 20)
    runtime_s: float = Field(3.0, gt=0, le=3600)
    iodepth: int = Field(16, ge=1, le=1024)
    ioengine: Literal["libaio", "psync", "io_uring"] = "libaio"
    end_fsync: bool = True
    io_limit_mb: int | None = Field(None, ge=1, le=1 << 20, description=(
        "total MiB the job may move: it ends there or at runtime_s, whichever comes first"))
    rate_mb_s: int | None = Field(None, ge=1, le=1 << 20, description="bandwidth cap, MiB/s")

    @property
    def block_size(self) -> str:
        return self.bs or ("4k" if self.rw.startswith("rand") else "1m")


PERCENTILES = {"50.000000": "p50", "99.000000": "p99", "99.900000": "p99.9"}


def parse_fio_json(text: str, rw: str) -> list[Measurement]:
    """fio may print warnings before its JSON; parse from the first '{'."""
    start = text.find("{")
    try:
        data = json.loads(text[start:]) if start >= 0 else None
    except json.JSONDecodeError as exc:
        raise ParseError(f"fio output is not JSON: {exc}", "see raw/.") from exc
    if not data or not data.get("jobs"):
        raise ParseError("fio JSON has no jobs.", "see raw/.")
    job = data["jobs"][0]
    if job.get("error"):
        raise ParseError(f"fio job failed with error {job['error']}.", "see raw/.")
    side: dict[str, Any] = job["write" if "write" in rw else "read"]
    meta = {"fio_version": data.get("fio version"), "runtime_ms": side.get("runtime"),
            "io_MiB": side["io_bytes"] / (1 << 20) if "io_bytes" in side else None}
    found = [
        Measurement(metric="bandwidth_MBps", value=side["bw_bytes"] / 1e6, unit="MB/s",
                    direction="higher", metadata=meta),
        Measurement(metric="iops", value=side["iops"], unit="IO/s", direction="higher",
                    metadata=meta),
    ]
    clat = side.get("clat_ns") or {}
    if clat.get("mean") is not None:  # a metric fio did not report is absent, not 0
        found.append(Measurement(metric="clat_mean_us", value=clat["mean"] / 1e3,
                                 unit="us", direction="lower", metadata=meta))
    for key, label in PERCENTILES.items():
        value = clat.get("percentile", {}).get(key)
        if value is not None:
            found.append(Measurement(metric=f"clat_{label}_us", value=value / 1e3, unit="us",
                                     direction="lower", metadata=meta))
    return found


def fio_argv(params: FioParams, scratch: str) -> list[str]:
    """The fio command line of one run (bench selftest measures limits with the same one)."""
    # Reads get a file of their own, which fio lays out with real data. A file a write job
    # left behind is only partly written (fio allocates it whole, writes what the runtime
    # allows): reading its unwritten extents returns zeros without any disk I/O, so a read
    # limit would seem not to hold (1.5x the limit under io_write_bps, when the write job
    # wrote half the file before the read job read it).
    # The runtime goes in milliseconds: fio reads a bare "0.5" as neither 0.5 s nor an error
    # (57 ms in one run, a whole-file pass of 41 s in another).
    kind = "write" if "write" in params.rw else "read"
    argv = [
        "fio", "--name=bench",
        f"--filename={scratch}/bench-fio-{kind}-{params.size_mb}m.dat",
        f"--rw={params.rw}", f"--bs={params.block_size}", f"--direct={int(params.direct)}",
        f"--size={params.size_mb}m", f"--runtime={round(params.runtime_s * 1000)}ms",
        f"--ioengine={params.ioengine}", f"--iodepth={params.iodepth}",
        "--invalidate=1", "--output-format=json",
    ]
    # time_based loops over the file until the runtime ends, whatever io_size says; without
    # it, fio wraps around the file until io_size bytes are moved or the runtime ends.
    argv.append("--time_based" if params.io_limit_mb is None else
                f"--io_size={params.io_limit_mb}m")
    if params.rate_mb_s is not None:
        argv.append(f"--rate={params.rate_mb_s}m")  # fio's default kb_base: m is MiB
    if "write" in params.rw and params.end_fsync:
        argv.append("--end_fsync=1")
    return argv


def parse_fio_log(text: str, scale: float) -> list[tuple[float, float]]:
    """A fio bw/iops log averaged per second (`--log_avg_msec=1000`): lines of
    `msec, value, direction, bs, offset`; returns (seconds, value x scale)."""
    points = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) >= 2 and fields[0].isdigit():
            points.append((int(fields[0]) / 1e3, float(fields[1]) * scale))
    return points


class Fio(Workload[FioParams]):
    name = "disk.fio"
    family = "disk"
    headline = ("bandwidth_MBps", "iops", "clat_p99_us")
    description = "fio: sequential MB/s, random IOPS and latency percentiles; direct or buffered"
    params_model = FioParams
    tools = ("fio",)
    series_metric: ClassVar[dict[str, str] | None] = {
        "io_read_bps": "bandwidth_MBps", "io_write_bps": "bandwidth_MBps",
        "io_read_iops": "iops", "io_write_iops": "iops"}

    def estimate_seconds(self, params: FioParams) -> float:
        return params.runtime_s + 0.5 + params.size_mb / 500

    def run(self, ctx: RunContext, params: FioParams) -> list[Measurement]:
        return self._run(ctx, params, [])

    def before_series(self, ctx: RunContext, params: FioParams) -> None:
        self._run(ctx, params, ["--create_only=1"], keep=False)

    def run_series(self, ctx: RunContext, params: FioParams) -> Series:
        log = f"{ctx.main().scratch_dir()}/bench-fio-log"
        found = self._run(ctx, params, [f"--write_bw_log={log}", f"--write_iops_log={log}",
                                        "--log_avg_msec=1000", "--per_job_logs=0"])
        points, units = {}, {"bandwidth_MBps": "MB/s", "iops": "IO/s"}
        for metric, kind, scale in (("bandwidth_MBps", "bw", 1024 / 1e6), ("iops", "iops", 1.0)):
            text = ctx.main().read_file(f"{log}_{kind}.log").decode(errors="replace")
            ctx.save_raw(f"fio_{kind}.log", text)
            points[metric] = parse_fio_log(text, scale)
        with contextlib.suppress(BenchError):
            ctx.main().exec(["rm", "-f", f"{log}_bw.log", f"{log}_iops.log"], timeout=30)
        runtime = found[0].metadata.get("runtime_ms")
        return Series(points, units, found, runtime / 1e3 if runtime else None)

    def _run(self, ctx: RunContext, params: FioParams, extra: list[str],
             keep: bool = True) -> list[Measurement]:
        instance = ctx.main()
        scratch = instance.scratch_dir()
        argv = [*fio_argv(params, scratch), *extra]
        done = instance.exec(ctx.tool(argv), timeout=ctx.remaining())
        if not keep:
            return []
        ctx.save_raw("fio.json", done.stdout)
        found = parse_fio_json(done.stdout, params.rw)
        for m in found:
            m.metadata.update({"bs": params.block_size, "direct": params.direct,
                               "page_cache": "bypassed" if params.direct else "used"})
        return found
