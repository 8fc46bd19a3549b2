"""The workload registry: adding a workload is one line here plus its module and tests."""

from __future__ import annotations

from typing import Any

from bench.workloads.base import Workload
from bench.workloads.cpu_pyperf import PyperfMicro
from bench.workloads.cpu_sysbench import SysbenchCpu
from bench.workloads.density import DensityIdle
from bench.workloads.disk_fio import Fio
from bench.workloads.image_layers import ImageLayers
from bench.workloads.isolation import common as isolation_common
from bench.workloads.isolation.accounting import Accounting
from bench.workloads.isolation.containment import Containment
from bench.workloads.isolation.interference import Interference
from bench.workloads.isolation.visibility import Visibility
from bench.workloads.memory import Memory
from bench.workloads.net_iperf3 import Iperf3
from bench.workloads.net_sockperf import Sockperf
from bench.workloads.startup import Startup

WORKLOADS: dict[str, Workload[Any]] = {
    w.name: w
    for w in (SysbenchCpu(), PyperfMicro(), Memory(), Fio(), Iperf3(), Sockperf(), Startup(),
              DensityIdle(), ImageLayers(), Visibility(), Containment(), Interference(),
              Accounting())
}

isolation_common.use_registry(WORKLOADS)  # victims and antagonists are workloads too

# workload name -> its headline metrics, for readers of stored runs (analysis, history)
HEADLINE: dict[str, tuple[str, ...]] = {name: w.headline for name, w in WORKLOADS.items()
                                        if w.headline}
