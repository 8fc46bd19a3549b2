"""The tier registry: adding a tier is one line here plus its module and tests."""

from __future__ import annotations

from bench.tiers.base import Tier
from bench.tiers.docker.tier import DockerTier
from bench.tiers.host import HostTier
from bench.tiers.kvm.tier import KvmTier
from bench.tiers.ns.tier import NsTier

TIERS: dict[str, type[Tier]] = {
    HostTier.name: HostTier,
    NsTier.name: NsTier,
    DockerTier.name: DockerTier,
    KvmTier.name: KvmTier,
}


def get(name: str) -> Tier:
    return TIERS[name]()
