"""Image layers: pull and start time against layer count, and what merging layers buys.

The same files (from the bench image, `size_mb` of them) in `layers` layers of about equal
size, or (`merged: true`) those layers squashed into one. On docker: a cold pull from bench's
loopback registry (download and extraction from the engine's progress stream), the first
container start after it, the disk the image takes, and (`rate_mbit` > 0) a pull from a
registry behind a link of that rate, paired in the same run. On ns: the start of a container
whose root is overlayfs over the N layers, and file lookups in the deepest layer. The tier
does the measuring (`Tier.layer_lab()`: bench/tiers/docker/layers.py, bench/tiers/ns/layers.py).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from bench.core.samples import Measurement
from bench.workloads.base import Params, RunContext, Workload


class LayerParams(Params):
    layers: int = Field(1, ge=1, le=64, description="layers the files are split into")
    merged: bool = Field(False, description="squash the N layers into one before pulling")
    size_mb: int = Field(128, ge=1, le=1024, description="MiB of files in the image")
    rate_mbit: float = Field(100.0, ge=0, le=10000,
                             description="rate of the limited link (0: no limited pull)")


class ImageLayers(Workload[LayerParams]):
    name = "image.layers"
    family = "image"
    headline = ("pull_s", "first_start_ms")
    description = "the same files in N layers: pull, first start, disk; merged beside it"
    params_model = LayerParams
    needs_instance = False
    not_on: ClassVar[dict[str, str]] = {
        "kvm": "a VM boots one disk image: it has no layers to pull or stack",
        "host": "the host tier runs the image's root directly (chroot): no layers"}

    def estimate_seconds(self, params: LayerParams) -> float:
        pulls = 2 if params.rate_mbit > 0 else 1
        limited = params.size_mb * 8 * 0.5 / params.rate_mbit if params.rate_mbit else 0
        return 1.0 + pulls * (params.size_mb / 40 + 0.05 * params.layers) + limited

    def instance_starts(self, params: LayerParams) -> int:
        return 1

    def run(self, ctx: RunContext, params: LayerParams) -> list[Measurement]:
        from bench.tiers.layered import LayerPoint

        lab = ctx.tier.layer_lab()
        point = LayerPoint(params.size_mb, params.layers, params.merged)
        found: list[Measurement] = lab.measure(point, params.rate_mbit,
                                               ctx.new_spec("layers", None), ctx.save_raw,
                                               ctx.deadline)
        return found
