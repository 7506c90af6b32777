"""The pace of Polygon REST requests after HTTP 429: one wait shared by the whole process.

Polygon limits requests per minute by plan (the free tier allows 5) and answers ``429`` past
the limit, with no ``Retry-After``. Every REST request of the provider (populate's pages,
history, live seeds) asks :class:`Pace` for leave first. After a 429 no request goes out
until the wait has passed: the ``Retry-After`` the server named, else 0.5 s doubling with each
429 in a row up to 60 s (a minute's window has turned by then); the first answer that is
not a 429 ends the run. A 429 to a request sent before the current wait began (several
threads refused at once) does not lengthen it. A caller whose deadline the wait would pass
is told at once (:class:`RateLimited`, the wait as ``retry_after``) rather than left
hanging; one without a deadline waits. Owns no sockets; thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from backend.errors import RateLimited

FIRST_WAIT = 0.5  # seconds after a 429 without Retry-After, doubling with each in a row
LONGEST_WAIT = 60.0


class Pace:
    """When the next REST request may go out; see the module docstring."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._cond = threading.Condition()
        self._not_before = 0.0
        self._since = float("-inf")  # when the current wait was set
        self._refusals = 0  # 429s in a row

    def admit(self, what: str, deadline: float | None) -> float:
        """Wait until a request may go out and return the time it does; raise
        :class:`RateLimited` at once when that would be after ``deadline``."""
        with self._cond:
            while True:
                now = self.clock()
                wait = self._not_before - now
                if wait <= 0:
                    return now
                if deadline is not None and self._not_before > deadline:
                    raise RateLimited(
                        f"polygon: {what}: rate limited by Polygon (HTTP 429); retry after"
                        f" {wait:.0f} s",
                        round(wait, 1),
                    )
                self._cond.wait(wait)

    def refused(self, sent: float, retry_after: float | None) -> float:
        """A request sent at ``sent`` was answered 429: set the wait; return it (seconds)."""
        with self._cond:
            now = self.clock()
            if sent >= self._since:  # not one of a burst already waited for
                self._refusals += 1
            if retry_after is not None and retry_after > 0:
                wait = retry_after
            else:
                wait = min(LONGEST_WAIT, FIRST_WAIT * 2 ** (self._refusals - 1))
            if now + wait > self._not_before:
                self._not_before, self._since = now + wait, now
            self._cond.notify_all()
            return self._not_before - now

    def answered(self) -> None:
        """A request was answered (not with 429): a later 429 starts a new run."""
        with self._cond:
            self._refusals = 0
