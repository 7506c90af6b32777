"""The memory of the moving-window rate limiters (``limits``), which forgets idle clients.

``limits``' :class:`~limits.storage.MemoryStorage` trims a key's expired hits (in a timer
thread) but keeps the key itself, an empty list, for ever: one entry per client ever seen
(a JWT subject, an API key, a client address; the request rate, the upstream budget and
the chat's hourly turns each key by it). On a server that runs for weeks, every address that
ever made one request stayed in memory. :class:`PrunedMemoryStorage` drops, at most every
``every`` seconds and on the next hit, every key whose newest hit has expired: a key with
no hit in its window limits nothing, and a missing key reads exactly as an empty one.

:class:`WorkBudget` is the other primitive: a token bucket that may go into debt, for work
whose size is known only once it is done (the bars of a history answer). ``limits``'
strategies refuse a hit larger than what is left and record nothing then; here the work is
charged in full after it is done, and the next piece waits until the debt is paid back.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from limits.storage import MemoryStorage

PRUNE_SECONDS = 10.0


class PrunedMemoryStorage(MemoryStorage):
    """A ``MemoryStorage`` for the moving-window strategy that forgets idle keys."""

    def __init__(
        self, every: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.every = PRUNE_SECONDS if every is None else every
        self.clock = clock
        self._next_prune = clock() + self.every

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if self.clock() >= self._next_prune:
            self.prune()
        return super().acquire_entry(key, limit, expiry, amount)

    def prune(self) -> int:
        """Forget every key whose hits have all expired; returns how many went."""
        self._next_prune = self.clock() + self.every
        now = time.time()  # the clock of ``limits``' entries
        gone = 0
        for key in list(self.events):
            # ``limits``' expiry thread takes the same per-key lock before it touches a key
            with self.locks[key]:
                hits = self.events.get(key)
                # hits are kept newest first: when the newest expired, all have
                if not hits or hits[0].expiry <= now:
                    del self.events[key]
                    gone += 1
                    self.locks.pop(key, None)
        return gone

    def keys(self) -> int:
        """Clients (keys) with hits in memory."""
        return len(self.events)


class WorkBudget:
    """``rate`` units of work per second, ``burst`` at once; charged after the work, so its
    level may go below zero (a debt that the next piece waits out: :meth:`wait`)."""

    __slots__ = ("_at", "_level", "burst", "rate", "waits")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._level = burst
        self._at = now
        self.waits = 0  # pieces that had to wait (counted by the caller)

    def wait(self, now: float) -> float:
        """Seconds until the debt is paid back (0: the next piece may start now)."""
        self._refill(now)
        return 0.0 if self._level >= 0 else -self._level / self.rate

    def charge(self, amount: float, now: float) -> None:
        """Take ``amount`` units of work just done (give back, when negative: never past
        the burst)."""
        self._refill(now)
        self._level = min(self.burst, self._level - amount)

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._level = min(self.burst, self._level + (now - self._at) * self.rate)
            self._at = now
