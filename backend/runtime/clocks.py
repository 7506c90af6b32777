"""Provider clocks: what time it is for a series, as its provider sees it.

Most providers live on the wall clock. A replaying provider (CSV) runs each symbol on its
own linear clock, ``origin_data + (wall - origin_wall) * speed``, and reports it with a
``Clock`` event; the hub uses it to know the latest bar without asking the provider.
"""

from __future__ import annotations

import time

from backend.model import intervals
from backend.model.bars import SeriesId
from backend.runtime.messages import Clock

FUTURE_SLACK = 300.0
"""Wall seconds a bar may open ahead of its provider's clock (clocks of two machines
differ): :meth:`Clocks.latest_open`."""
FAR_AHEAD_SECONDS = 86_400
FAR_AHEAD_BARS = 100
"""A bar past :meth:`Clocks.latest_open` that also opens more than this many seconds, or
bars, after the bar before it is far ahead (:meth:`Clocks.far_ahead`). A live bar that opens
more than as much before the newest bar is far behind (:func:`far_behind`)."""


class Clocks:
    """The latest clock reported per (source, symbol), and per source as a default."""

    def __init__(self) -> None:
        self._clocks: dict[tuple[str, str | None], Clock] = {}
        self._per_symbol: set[str] = set()  # sources that report a clock per symbol

    def set(self, source: str, clock: Clock) -> None:
        self._clocks[(source, clock.symbol)] = clock
        if clock.symbol is not None:
            self._per_symbol.add(source)

    def missing(self, source: str, symbol: str) -> bool:
        """Whether ``source`` runs a clock per symbol (a replay) but has reported none for
        ``symbol`` yet, nor one for the whole source: a file its provider has not read yet
        (dropped in while the server runs), whose clock comes with its first answer."""
        return source in self._per_symbol and not (
            (source, symbol) in self._clocks or (source, None) in self._clocks
        )

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

    def far_ahead(self, key: SeriesId, t: int, before: int) -> bool:
        """Whether a bar of ``key`` opening at ``t``, after one at ``before``, looks like bad
        upstream data: past :meth:`latest_open` and more than ``FAR_AHEAD_SECONDS`` or
        ``FAR_AHEAD_BARS`` bars after ``before`` (a date years ahead). Only both: an exchange
        (or a fake of one) whose clock runs fast moves a bar at a time, and a weekend's gap
        is not past the clock."""
        step = intervals.nominal_seconds(key.interval)
        if t - before <= max(FAR_AHEAD_SECONDS, FAR_AHEAD_BARS * step):
            return False
        return t > self.latest_open(key.source, key.name)


def far_behind(key: SeriesId, t: int, newest: int) -> bool:
    """Whether a live bar of ``key`` opening at ``t``, when the newest bar opens at
    ``newest``, looks like bad upstream data: more than ``FAR_AHEAD_SECONDS`` and
    ``FAR_AHEAD_BARS`` bars before it (a date decades back). An exchange corrects the bar
    that just closed, or one a few bars back, never one from a day and a hundred bars ago."""
    step = intervals.nominal_seconds(key.interval)
    return newest - t > max(FAR_AHEAD_SECONDS, FAR_AHEAD_BARS * step)
