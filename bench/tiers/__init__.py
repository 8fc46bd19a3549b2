"""The tier registry: adding a tier is one line here plus its module and tests."""

from __future__ import annotations

from bench.tiers.base import Tier
from bench.tiers.host import HostTier

TIERS: dict[str, type[Tier]] = {
    HostTier.name: HostTier,
}


def get(name: str) -> Tier:
    return TIERS[name]()
