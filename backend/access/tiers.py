"""Quota tiers: the limits of each client, by the ``tier`` of its identity.

``default`` has the global settings (``REQUESTS_PER_SECOND`` / ``REQUESTS_BURST``,
``UPSTREAM_CALLS_PER_SECOND`` / ``UPSTREAM_BURST``, ``MAX_SUBSCRIPTIONS_PER_CALLER``);
``ACCESS_TIERS`` names others (or overrides ``default``), each field it leaves out keeping
the global value. A JWT's ``tier`` claim picks one; an unknown tier gets ``default``.

Owns the mapping from tier name to limits. Not: counting (``fairuse``, ``subscriptions``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

from limits import RateLimitItem, RateLimitItemPerSecond

from backend.settings import AccessTier, Settings

DEFAULT = "default"
T = TypeVar("T")


def burst_item(rate: float, burst: int, namespace: str) -> RateLimitItem:
    """``burst`` hits per the window in which ``rate`` per second adds up to ``burst``."""
    return RateLimitItemPerSecond(burst, max(1, math.ceil(burst / rate)), namespace)


@dataclass(frozen=True, slots=True)
class TierLimits:
    """What one client of a tier may do: requests, upstream history calls, subscriptions."""

    name: str
    requests: RateLimitItem
    upstream: RateLimitItem
    subscriptions: int


def tier_limits(name: str, tier: AccessTier, settings: Settings) -> TierLimits:
    """The limits of tier ``name``: its fields, else the global settings."""
    return TierLimits(
        name=name,
        requests=burst_item(
            pick(tier.requests_per_second, settings.REQUESTS_PER_SECOND),
            pick(tier.requests_burst, settings.REQUESTS_BURST),
            f"req:{name}",
        ),
        upstream=burst_item(
            pick(tier.upstream_calls_per_second, settings.UPSTREAM_CALLS_PER_SECOND),
            pick(tier.upstream_burst, settings.UPSTREAM_BURST),
            f"upstream:{name}",
        ),
        subscriptions=pick(tier.max_subscriptions, settings.MAX_SUBSCRIPTIONS_PER_CALLER),
    )


def pick(value: T | None, default: T) -> T:
    return default if value is None else value


class Tiers:
    """Every tier's limits, built once from the settings."""

    def __init__(self, settings: Settings) -> None:
        named = {DEFAULT: AccessTier(), **settings.ACCESS_TIERS}
        self.by_name = {name: tier_limits(name, tier, settings) for name, tier in named.items()}

    def of(self, tier: str) -> TierLimits:
        return self.by_name.get(tier) or self.by_name[DEFAULT]
