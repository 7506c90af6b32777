"""Pacing for the Binance streams: limits, timings, a rolling-window limiter, backoff.

Pure values and arithmetic on a clock; no sockets. Binance allows 5 incoming messages per
second per connection (pings, pongs and control frames all count), 1024 streams per
connection and 300 connection attempts per 5 minutes per IP, and cuts every connection at
24 hours. A token bucket (a burst of 5, then refills) can put 6 frames in one rolling second;
:class:`RollingLimiter` keeps a log of send times instead, so no window ever holds more than
its limit.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RollingLimiter", "StreamTuning", "backoff_delay"]


@dataclass(frozen=True, slots=True)
class StreamTuning:
    """Limits and timings of the stream connections (Binance's values by default)."""

    max_streams: int = 1024  # streams per connection
    batch: int = 200  # streams per SUBSCRIBE/UNSUBSCRIBE frame
    messages: int = 4  # control frames per rolling window (Binance: 5 per second)
    message_window: float = 1.1
    silence: float = 30.0  # ping after this long without any message; no pong: reconnect
    ping_timeout: float = 10.0  # how long that ping waits for its pong
    renew_after: float = 23 * 3600.0  # Binance cuts connections at 24 h
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    connects: int = 250  # connection attempts per rolling window (Binance: 300 per 5 min)
    connect_window: float = 300.0
    open_timeout: float = 10.0
    handover_timeout: float = 30.0
    answer_timeout: float = 3.0  # a SUBSCRIBE unanswered this long is sent again (see connection)


class RollingLimiter:
    """At most ``limit`` events in any ``window`` seconds (a sliding log, not a bucket)."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic):
        self.limit, self.window, self._clock = limit, window, clock
        self._times: deque[float] = deque()

    def delay(self) -> float:
        """Seconds until one more event fits in the window (0 if it fits now)."""
        now = self._clock()
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()
        if len(self._times) < self.limit:
            return 0.0
        return self._times[0] + self.window - now

    def record(self) -> None:
        self._times.append(self._clock())

    async def wait(self) -> None:
        """Sleep until one more event fits (does not record it)."""
        delay = self.delay()
        while delay > 0:  # time-based: nothing to wait on but the clock
            await asyncio.sleep(delay)
            delay = self.delay()


def backoff_delay(failures: int, tuning: StreamTuning, rand: float | None = None) -> float:
    """Seconds before reconnect attempt number ``failures`` (0-based): 1 s doubling to 60 s,
    with +-25 % jitter so that many connections do not come back at the same instant."""
    base = min(tuning.backoff_max, tuning.backoff_initial * 2.0 ** min(failures, 30))
    jitter = 0.75 + 0.5 * (random.random() if rand is None else rand)
    return min(tuning.backoff_max, base * jitter)
