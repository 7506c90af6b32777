"""Provider clocks: what time it is for a series, as its provider sees it.

Most providers live on the wall clock. A replaying provider (CSV) runs each symbol on its
own linear clock, ``origin_data + (wall - origin_wall) * speed``, and reports it with a
``Clock`` event; the hub uses it to know the latest bar without asking the provider.
"""

from __future__ import annotations

import time

from backend.runtime.messages import Clock

FUTURE_SLACK = 300.0
"""Wall seconds a bar may open ahead of its provider's clock (clocks of two machines
differ); a bar later than that is bad data (:meth:`Clocks.latest_open`)."""


class Clocks:
    """The latest clock reported per (source, symbol), and per source as a default."""

    def __init__(self) -> None:
        self._clocks: dict[tuple[str, str | None], Clock] = {}

    def set(self, source: str, clock: Clock) -> None:
        self._clocks[(source, clock.symbol)] = clock

    def now(self, source: str, symbol: str) -> int:
        """The provider's current time for ``symbol`` in UTC seconds."""
        clock = self._clocks.get((source, symbol)) or self._clocks.get((source, None))
        wall = time.time()
        if clock is None:
            return int(wall)
        return int(clock.origin_data + (wall - clock.origin_wall) * clock.speed)

    def latest_open(self, source: str, symbol: str) -> int:
        """The latest open time a bar of ``symbol`` can have now: the provider's clock plus
        :data:`FUTURE_SLACK` (in its time: a replay at 60x gets 60 times as much)."""
        clock = self._clocks.get((source, symbol)) or self._clocks.get((source, None))
        speed = 1.0 if clock is None else max(clock.speed, 1.0)
        return self.now(source, symbol) + int(FUTURE_SLACK * speed)
