"""Fair use: what one client (and one address) may cost the server and its upstreams.

* connections per client and per address (counters; over the limit the upgrade gets 429);
* requests per second per client, with bursts (the ``limits`` library's moving window):
  an HTTP request over it gets 429 ``rate_limited`` with ``Retry-After``; a Tradiny socket's
  frame over it is answered ``error rate_limited`` with ``retry_after`` and not served
  (``frame_wait``, the hub's ``admit_frame``), other sockets' frames are read more slowly;
  logged once per interval per client;
* each client's limits are those of its quota tier (``tiers``);
* the **upstream budget**: every history call that reaches a provider is charged to the
  client whose request caused it (:data:`backend.access.identity.current`). A client may
  make ``UPSTREAM_CALLS_PER_SECOND`` on average (``UPSTREAM_BURST`` at once), and a
  provider's budget (``PROVIDER_CALLS_PER_SECOND``) is shared max-min fairly: once it is
  half used within the window, a client that already had its share waits. A refused call
  raises :class:`~backend.errors.RateLimited` with a retry time, so the request is answered
  from what the server knows plus ``error rate_limited``; answers from the cache are never
  refused. A refusal is logged once per interval per client, not per request.

Owns the counters. Not: who the caller is (``credentials``), nor where the checks are
applied (``guard``, and the hub's ``admit_fetch`` hook).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable

from limits import RateLimitItem
from limits.strategies import MovingWindowRateLimiter

from backend.access.identity import Identity, current
from backend.access.tiers import Tiers
from backend.errors import AccessDenied, RateLimited
from backend.model.bars import SeriesId
from backend.ratelimits import PrunedMemoryStorage
from backend.settings import Settings

logger = logging.getLogger(__name__)

TOO_MANY = 429
SHARE_WINDOW_SECONDS = 5.0
LOG_INTERVAL_SECONDS = 10.0


class ThrottledLog:
    """A warning per key at most once per ``interval``, with the count of those skipped."""

    def __init__(self, interval: float = LOG_INTERVAL_SECONDS) -> None:
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}

    def report(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last, skipped = self._last.get(key, (-math.inf, 0))
        if now - last < self.interval:
            self._last[key] = (last, skipped + 1)
            return
        if len(self._last) > 10_000:
            self._last.clear()
        self._last[key] = (now, 0)
        suffix = f" ({skipped} more since the last report)" if skipped else ""
        logger.warning(message + suffix, *args)


LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def keyed_by_address(identity: Identity) -> bool:
    """Limits keyed by a loopback address do not apply: that is the local user, or a reverse
    proxy on this machine that every remote client comes through (README, "Security")."""
    return identity.address in LOOPBACK and identity.client == identity.address


class Connections:
    """Open connections per client and per address (loopback exempt, see above)."""

    def __init__(self, per_client: int, per_address: int) -> None:
        self.per_client = per_client
        self.per_address = per_address
        self.clients: dict[str, int] = {}
        self.addresses: dict[str, int] = {}

    def open(self, identity: Identity) -> None:
        """Count a new connection; raise ``AccessDenied`` (429) over a limit."""
        address, client = identity.address, identity.client
        if address not in LOOPBACK and self.addresses.get(address, 0) >= self.per_address:
            raise AccessDenied(TOO_MANY, f"at most {self.per_address} connections per address")
        if client != address and self.clients.get(client, 0) >= self.per_client:
            raise AccessDenied(TOO_MANY, f"at most {self.per_client} connections per client")
        _add(self.addresses, identity.address, 1)
        _add(self.clients, identity.client, 1)

    def close(self, identity: Identity) -> None:
        _add(self.addresses, identity.address, -1)
        _add(self.clients, identity.client, -1)


def _add(counts: dict[str, int], key: str, delta: int) -> None:
    value = counts.get(key, 0) + delta
    if value > 0:
        counts[key] = value
    else:
        counts.pop(key, None)


class ProviderShare:
    """One provider's budget over a sliding window, shared max-min fairly by client."""

    def __init__(self, per_second: float, window: float = SHARE_WINDOW_SECONDS) -> None:
        self.capacity = per_second * window
        self.window = window
        self.calls: deque[tuple[float, str]] = deque()

    def admit(self, client: str, now: float) -> float | None:
        """None (and the call is counted) or the seconds until ``client`` may call again."""
        while self.calls and now - self.calls[0][0] >= self.window:
            self.calls.popleft()
        mine = [t for t, who in self.calls if who == client]
        users = {who for _, who in self.calls} | {client}
        share = self.capacity / len(users)
        total = len(self.calls)
        if total >= self.capacity or (len(mine) >= share and total >= self.capacity / 2):
            oldest = mine[0] if mine else self.calls[0][0]
            return max(0.1, oldest + self.window - now)
        self.calls.append((now, client))
        return None


class FairUse:
    """The fair-use limits of one hub process."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        # per client: its request rate and upstream budget (idle clients are forgotten)
        self.memory = PrunedMemoryStorage()
        self.limiter = MovingWindowRateLimiter(self.memory)
        self.tiers = Tiers(settings)
        self.provider_rate = settings.PROVIDER_CALLS_PER_SECOND
        self.shares: dict[str, ProviderShare] = {}
        self.connections = Connections(
            settings.MAX_CONNECTIONS_PER_CLIENT, settings.MAX_CONNECTIONS_PER_ADDRESS
        )
        self.log = ThrottledLog()
        self.refused = 0

    def request_wait(self, identity: Identity) -> float:
        """0 when ``identity`` may make a request now (it is counted), else seconds to wait."""
        requests = self.tiers.of(identity.tier).requests
        if keyed_by_address(identity) or self.limiter.hit(requests, identity.client):
            return 0.0
        self.log.report(
            "requests:" + identity.client, "client %s: over the request rate", identity.client
        )
        return self._reset_in(requests, identity.client)

    def frame_wait(self) -> float:
        """``request_wait`` of the current caller (a socket's frame: ``hub.admit_frame``)."""
        return self.request_wait(current.get())

    async def pace(self, identity: Identity) -> None:
        """Wait until ``identity`` may make its next request (a socket's next frame)."""
        wait = self.request_wait(identity)
        while wait > 0:
            await asyncio.sleep(wait)
            wait = self.request_wait(identity)

    def admit_fetch(self, key: SeriesId) -> None:
        """Charge one upstream history call to the current caller, or raise ``RateLimited``.
        A caller known only by a loopback address has no budget of its own (as for every
        limit keyed by an address), but its calls still count in the provider's fair
        shares."""
        caller = current.get()
        upstream = self.tiers.of(caller.tier).upstream
        budgeted = not keyed_by_address(caller)
        if budgeted and not self.limiter.test(upstream, caller.budget_key):
            wait = self._reset_in(upstream, caller.budget_key)
            self._refuse(caller, key, wait, "its upstream budget")
        share = self.shares.setdefault(key.source, ProviderShare(self.provider_rate))
        wait_share = share.admit(caller.budget_key, self.clock())
        if wait_share is not None:
            self._refuse(caller, key, wait_share, f"its fair share of {key.source}")
        if budgeted:
            self.limiter.hit(upstream, caller.budget_key)

    def _refuse(self, caller: Identity, key: SeriesId, wait: float, what: str) -> None:
        self.refused += 1
        self.log.report(
            "upstream:" + caller.budget_key,
            "client %s used up %s (%s): history calls refused for %.1f s",
            caller.budget_key,
            what,
            key,
            wait,
        )
        raise RateLimited(
            f"{key.source}: too many history requests from this client; retry after {wait:.1f} s",
            retry_after=round(wait, 1),
        )

    def _reset_in(self, item: RateLimitItem, client: str) -> float:
        stats = self.limiter.get_window_stats(item, client)
        return max(0.1, round(stats.reset_time - time.time(), 1))
