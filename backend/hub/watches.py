"""Keys kept streaming for clients that poll instead of subscribing.

The TradingView Charting Library's UDF adapter (and OpenBB's charts, which use it) never
subscribe: they ask ``/udf/history`` "until now" every ten seconds. Without a subscriber the
cache of such a key is not live, so every poll past the planner's one-second freshness was
a provider history call (one per poll per chart: an upstream's rate budget spent on polls).

A poll of a key "until now" (:meth:`Watches.touch`) makes the provider stream the key for
:data:`WATCH_SECONDS` after the poll, under the subscriber id :data:`WATCHER`: the cache is
live and the next polls are answered from it, moving with the stream. When the polls stop,
the watch ends and the upstream stops after its usual linger. At most :data:`MAX_WATCHED`
keys are watched at once; a poll past that is served as before (from a history call).
A poll whose answer was refused (the fair-use budget) or failed ends the watch it started
(:meth:`Watches.drop`): it keeps no stream for a minute. A client with a subscription limit
(its tier's ``max_subscriptions``; README, "Security") starts at most that many watches:
a client limited to 50 streamed series had 1,000 by polling.

Owns the watch timers. Not: the registry (``subscriptions``), the streams (``upstream``).
"""

from __future__ import annotations

import logging
from functools import partial

from backend.hub.subscriptions import Subscriptions
from backend.hub.upstream import CallLater, Cancellable, Upstream, loop_call_later
from backend.model.bars import SeriesId

logger = logging.getLogger(__name__)

WATCHER = -1  # the subscriber id of the polled keys (hub clients count from 1, alerts are 0)
WATCH_SECONDS = 60.0  # a key stays streamed this long after its last poll (polls: every 10 s)
MAX_WATCHED = 1_000


class Watches:
    """The polled keys and the timer that ends each one's watch."""

    def __init__(
        self,
        subs: Subscriptions,
        upstream: Upstream,
        seconds: float = WATCH_SECONDS,
        limit: int = MAX_WATCHED,
        call_later: CallLater = loop_call_later,
    ) -> None:
        self.subs = subs
        self.upstream = upstream
        self.seconds = seconds
        self.limit = limit
        self.call_later = call_later
        self._timers: dict[SeriesId, Cancellable] = {}
        self._starters: dict[SeriesId, str] = {}  # the client whose poll started each watch
        self._started: dict[str, int] = {}  # per client: the watches it started
        self._full_logged = False

    def __len__(self) -> int:
        return len(self._timers)

    def renew(self, key: SeriesId) -> bool:
        """``key`` was polled "until now": when it is watched, keep it streamed ``seconds``
        from now (True); else False and nothing changes."""
        timer = self._timers.pop(key, None)
        if timer is None:
            return False
        timer.cancel()
        self._timers[key] = self.call_later(self.seconds, partial(self._expire, key))
        return True

    def touch(self, key: SeriesId, client: str = "", client_limit: int | None = None) -> bool:
        """``key`` was polled "until now": keep it streamed ``seconds`` from now; ``client``
        starts at most ``client_limit`` watches (None: no limit of its own). False when it
        is not watched (a limit is reached)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        elif client_limit is not None and self._started.get(client, 0) >= client_limit:
            return False
        elif len(self._timers) >= self.limit:
            if not self._full_logged:
                logger.warning(
                    "%d polled keys are streamed already: polls of others are served from "
                    "history calls",
                    self.limit,
                )
                self._full_logged = True
            return False
        else:
            self.subs.add(WATCHER, key)
            self.upstream.sync(key, WATCHER)
            self._starters[key] = client
            self._started[client] = self._started.get(client, 0) + 1
        self._timers[key] = self.call_later(self.seconds, partial(self._expire, key))
        return True

    def drop(self, key: SeriesId) -> None:
        """End ``key``'s watch now (the poll that started it was not answered)."""
        timer = self._timers.get(key)
        if timer is not None:
            timer.cancel()
        self._expire(key)

    def _expire(self, key: SeriesId) -> None:
        if self._timers.pop(key, None) is None:
            return
        client = self._starters.pop(key, "")
        left = self._started.get(client, 0) - 1
        if left > 0:
            self._started[client] = left
        else:
            self._started.pop(client, None)
        self.subs.remove(WATCHER, key)
        self.upstream.sync(key, WATCHER)
        if len(self._timers) < self.limit:
            self._full_logged = False

    def stop(self) -> None:
        """Cancel every timer (the hub stops; the streams stop with the providers)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._starters.clear()
        self._started.clear()
