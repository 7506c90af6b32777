"""Subscriptions per client across its connections (``MAX_SUBSCRIPTIONS_PER_CALLER``, or
its tier's ``max_subscriptions``).

A client is a key's or token's subject, else the address (loopback exempt, as for every
address-keyed limit: README, "Security"). The hub asks before it streams a new series to a
connection (``hub.admit_subscription``, called in that connection's task, so the caller is
:data:`~backend.access.identity.current`). The counts are the hub's own: this remembers
which hub connections each client has and asks ``count`` (a connection's subscriptions)
for the total, so an unsubscribe or a closed socket frees its slots with no bookkeeping
here. Asking costs one look-up: each client has an upper bound of its subscriptions (the
total at the last count, plus what a connection held when it was first seen, plus one per
admission since), and its connections are counted (and the closed ones forgotten) only
when that bound reaches the limit or the connections remembered have doubled since.
Counting at every admission cost a sum over all the client's connections: quadratic in the
connections behind one address (a NAT, or the connection benchmark's few loopback
addresses); 5,000 of them took seconds to subscribe.
"""

from __future__ import annotations

from collections.abc import Callable

from backend.access.fairuse import keyed_by_address
from backend.access.identity import current
from backend.access.tiers import Tiers

MAX_CLIENTS_REMEMBERED = 10_000
MIN_RECOUNT = 64  # connections of one client remembered before the first count


class SubscriptionQuota:
    """Counts a client's subscriptions over all its connections."""

    def __init__(self, tiers: Tiers) -> None:
        self.tiers = tiers
        self.count: Callable[[int], int] = lambda connection: 0  # set by the app (the hub's)
        self.connections: dict[str, set[int]] = {}
        # per client, at least its subscriptions: exact at its last count, +1 per admission
        self.bounds: dict[str, int] = {}
        self.recount_at: dict[str, int] = {}  # per client: count when it has this many

    def admit(self, connection: int) -> str | None:
        """None when the current caller may add one subscription on hub ``connection``,
        else why not (the ``limit_reached`` message)."""
        caller = current.get()
        if keyed_by_address(caller):
            return None
        if len(self.connections) > MAX_CLIENTS_REMEMBERED:
            self._forget_idle()
        client = caller.client
        held = self.connections.setdefault(client, set())
        bound = self.bounds.get(client, 0)
        if connection not in held:  # a connection new to this client brings what it holds
            held.add(connection)
            bound += self.count(connection)
        limit = self.tiers.of(caller.tier).subscriptions
        if bound >= limit or len(held) >= self.recount_at.get(client, MIN_RECOUNT):
            # count: what was unsubscribed or closed since is still in the bound and held
            held = {c for c in held if self.count(c) > 0}
            held.add(connection)
            self.connections[client] = held
            self.recount_at[client] = max(MIN_RECOUNT, 2 * len(held))
            bound = sum(self.count(c) for c in held)
            if bound >= limit:
                self.bounds[client] = bound
                return f"at most {limit} subscriptions per client across its connections"
        self.bounds[client] = bound + 1
        return None

    def limit(self) -> int | None:
        """The current caller's limit of subscriptions (its tier's), or None for a caller
        limited by address whose address is exempt (loopback)."""
        caller = current.get()
        if keyed_by_address(caller):
            return None
        return self.tiers.of(caller.tier).subscriptions

    def _forget_idle(self) -> None:
        for client, held in list(self.connections.items()):
            if not any(self.count(c) > 0 for c in held):
                del self.connections[client]
                self.bounds.pop(client, None)
                self.recount_at.pop(client, None)
