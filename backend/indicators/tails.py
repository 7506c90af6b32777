"""The newest bars of each live series as a numpy table, kept up to date incrementally.

Turning a tail of bar tuples into an array costs ten times the indicator itself (a 1,000-bar
tail: ~100 µs against ~10 µs for TA-Lib), and every live update of every shared indicator
needs one. :class:`Tails` keeps one table per series and, on each update, only rewrites the
forming bar or appends the bar that opened; anything else (the two newest bars replaced, a
reload, a longer tail asked for) rebuilds the table from the bars, and so does a full table,
so a bar corrected deeper in the tail is read again within one tail's length of updates.
The table is stored by column and handed out transposed, so that each field of the tail
(``table[:, 4]``, the closes) is a contiguous array TA-Lib reads without a copy.
Sans-I/O: the caller passes the series' bars (the hub's cache), oldest first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from backend.indicators.base import FloatArray
from backend.model.bars import Bar, SeriesId

SPARE = 2  # a table holds this many times the rows asked for, so appends rarely copy


@dataclass
class _Tail:
    buffer: FloatArray  # one row per field; columns [:stop] are the newest bars, oldest first
    stop: int
    newest: Bar  # the bar objects of the last two rows, to see what changed
    previous: Bar | None


class Tails:
    """One incrementally updated table of the newest bars per series."""

    def __init__(self) -> None:
        self._tails: dict[SeriesId, _Tail] = {}

    def __len__(self) -> int:
        return len(self._tails)

    def get(self, series: SeriesId, bars: Sequence[Bar], count: int) -> FloatArray:
        """The last ``count`` of ``bars`` as rows ``(t, o, h, l, c, v)`` (a view: read only;
        each column of it is contiguous)."""
        if not bars:
            self._tails.pop(series, None)
            return np.empty((0, 6), dtype=np.float64)
        want = min(count, len(bars))
        tail = self._tails.get(series)
        if tail is None or not self._update(tail, bars, want):
            tail = self._tails[series] = _build(bars, want)
        table = tail.buffer[:, tail.stop - want : tail.stop].T
        table.flags.writeable = False  # calc gets its columns without a copy
        return table

    def drop(self, series: SeriesId) -> None:
        """Forget the table of ``series`` (its closed bars changed): rebuilt on the next get."""
        self._tails.pop(series, None)

    def keep_only(self, keep: Callable[[SeriesId], bool]) -> None:
        """Forget the tables of the series ``keep`` rejects (no indicator reads them now)."""
        for series in [s for s in self._tails if not keep(s)]:
            del self._tails[series]

    def _update(self, tail: _Tail, bars: Sequence[Bar], want: int) -> bool:
        """Bring ``tail`` up to date with ``bars`` in place; False when it must be rebuilt."""
        newest = bars[-1]
        previous = bars[-2] if len(bars) > 1 else None
        if tail.stop < want:
            return False
        if newest is tail.newest and previous is tail.previous:
            return True
        if previous is tail.previous and newest[0] == tail.newest[0]:
            tail.buffer[:, tail.stop - 1] = newest  # the forming bar changed
        elif previous is tail.newest and newest[0] > tail.newest[0]:
            if tail.stop == tail.buffer.shape[1]:
                return False  # full: rebuilt (which also re-reads the whole tail)
            tail.buffer[:, tail.stop] = newest  # a bar opened
            tail.stop += 1
        else:
            return False
        tail.newest, tail.previous = newest, previous
        return True


def _build(bars: Sequence[Bar], want: int) -> _Tail:
    rows = np.array(bars[-want:], dtype=np.float64)
    buffer = np.empty((6, SPARE * want + 1), dtype=np.float64)
    buffer[:, :want] = rows.T
    previous = bars[-2] if len(bars) > 1 else None
    return _Tail(buffer, want, bars[-1], previous)
