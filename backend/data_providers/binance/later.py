"""A one-thread timer of the Binance provider: run a call at a time, one per key.

The provider puts off work that must wait (a gap fill during a REST rate limit or outage,
the next check of which symbols still trade) without holding a thread per wait: 1,000 keys
whose gap fills wait for a ``Retry-After`` are 1,000 entries here, not 1,000 threads. Each
key has at most one pending call; asking for the same key again moves it only earlier. The
calls run on this thread and must be short (they hand the work to an executor). It knows
nothing of Binance.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable

__all__ = ["Later"]

logger = logging.getLogger(__name__)


class Later:
    """Calls scheduled at monotonic times, run in order on one daemon thread."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._due: dict[Hashable, tuple[float, Callable[[], None]]] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._order = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def at(self, when: float, key: Hashable, call: Callable[[], None]) -> None:
        """Run ``call`` at ``when`` (monotonic), unless ``key`` already has an earlier call."""
        with self._cond:
            pending = self._due.get(key)
            if pending is not None and pending[0] <= when:
                return
            self._due[key] = (when, call)
            heapq.heappush(self._heap, (when, next(self._order), key))
            self._cond.notify()

    def when(self, key: Hashable) -> float | None:
        """When ``key``'s call is due (monotonic), or None if it has none."""
        with self._cond:
            pending = self._due.get(key)
            return None if pending is None else pending[0]

    def cancel(self, key: Hashable) -> None:
        with self._cond:
            self._due.pop(key, None)

    def stop(self) -> None:
        """Drop every pending call and end the thread."""
        with self._cond:
            self._stopped = True
            self._due.clear()
            self._cond.notify()

    def _next(self) -> Callable[[], None] | None:
        """Wait for the next due call (None: stopped)."""
        with self._cond:
            while not self._stopped:
                while self._heap:  # drop entries that were moved or cancelled
                    when, _, key = self._heap[0]
                    pending = self._due.get(key)
                    if pending is not None and pending[0] == when:
                        break
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                when, _, key = self._heap[0]
                wait = when - self._clock()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                return self._due.pop(key)[1]
            return None

    def _run(self) -> None:
        while (call := self._next()) is not None:
            try:
                call()
            except Exception:  # one failed call must not end the timer: log it, go on
                logger.exception("binance: a scheduled call failed")
