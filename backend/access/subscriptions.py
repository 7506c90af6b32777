"""Subscriptions per client across its connections (``MAX_SUBSCRIPTIONS_PER_CALLER``, or
its tier's ``max_subscriptions``).

A client is a key's or token's subject, else the address (loopback exempt, as for every
address-keyed limit: README, "Security"). The hub asks before it streams a new series to a
connection (``hub.admit_subscription``, called in that connection's task, so the caller is
:data:`~backend.access.identity.current`). The counts are the hub's own: this remembers
which hub connections each client has and asks ``count`` (a connection's subscriptions)
for the total, so an unsubscribe or a closed socket frees its slots with no bookkeeping
here.

Owns the client -> connections map. Not: the per-connection limit (the hub's).
"""

from __future__ import annotations

from collections.abc import Callable

from backend.access.fairuse import keyed_by_address
from backend.access.identity import current
from backend.access.tiers import Tiers

MAX_CLIENTS_REMEMBERED = 10_000


class SubscriptionQuota:
    """Counts a client's subscriptions over all its connections."""

    def __init__(self, tiers: Tiers) -> None:
        self.tiers = tiers
        self.count: Callable[[int], int] = lambda connection: 0  # set by the app (the hub's)
        self.connections: dict[str, set[int]] = {}

    def admit(self, connection: int) -> str | None:
        """None when the current caller may add one subscription on hub ``connection``,
        else why not (the ``limit_reached`` message)."""
        caller = current.get()
        if keyed_by_address(caller):
            return None
        if len(self.connections) > MAX_CLIENTS_REMEMBERED:
            self._forget_idle()
        held = {c for c in self.connections.get(caller.client, ()) if self.count(c) > 0}
        held.add(connection)
        self.connections[caller.client] = held
        limit = self.tiers.of(caller.tier).subscriptions
        if sum(self.count(c) for c in held) < limit:
            return None
        return f"at most {limit} subscriptions per client across its connections"

    def _forget_idle(self) -> None:
        for client, held in list(self.connections.items()):
            if not any(self.count(c) > 0 for c in held):
                del self.connections[client]
