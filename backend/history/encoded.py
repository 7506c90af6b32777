"""Encoded history: the last frames built for a series' windows, so identical requests reuse them.

A page-load storm asks for the same ``data_init`` of one series many times; building and
encoding thousands of datapoints per answer is what limits it. Each :class:`~.cache.Series`
keeps here, per *window* (a key the hub chooses: the reply's head bytes, count, end, wire
kind), the last complete WebSocket frame built for it, with where its closed bars end inside
the frame. The entry is valid while the series' ``version`` is the one it was built at: every
change to the bars but an in-place update of the newest (forming) bar bumps it. So a forming
bar update costs one datapoint spliced after the cached closed bars, and anything else (a new
bar, history merged in, trimming, retention) a new encoding.

Owns the entries and their size in bytes (counted by :class:`~.cache.BarCache` against its
memory bound). Not: the encoding (``backend.wire.protocol``), when to look up (``hub.requests``).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from backend.model.bars import Bar

MAX_WINDOWS = 4  # frames kept per series (the least recently used one goes first)
BYTES_PER_BAR = 280  # about what one cached bar costs in memory (README): the bound's unit


@dataclass(slots=True)
class Ledger:
    """Running totals of one :class:`~.cache.BarCache`: its bars and encoded bytes, kept by
    the writers of its series so the bound is checked after every request in O(1)."""

    bars: int = 0
    nbytes: int = 0


@dataclass(slots=True)
class Encoded:
    """One built frame: ``frame[body_start:closed_stop]`` is the reply up to and including
    its closed bars (the bars before ``last``), ready to have another last bar appended."""

    version: int  # the series' version the bars were taken at
    count: int  # bars in the frame
    first_t: int | None  # open time of the first bar (None: no bars)
    last: Bar | None  # the last bar, as encoded in ``frame``
    frame: bytes
    body_start: int
    closed_stop: int

    def matches(self, version: int, bars: list[Bar]) -> bool:
        """Whether the closed bars of ``bars`` (taken at ``version``) are the ones encoded."""
        if self.version != version or self.count != len(bars):
            return False
        return not bars or (
            bars[0][0] == self.first_t and self.last is not None and bars[-1][0] == self.last[0]
        )


class EncodedWindows:
    """The encoded frames of one series, least recently used first."""

    __slots__ = ("_entries", "ledger", "nbytes")

    def __init__(self, ledger: Ledger | None = None) -> None:
        self._entries: dict[Hashable, Encoded] = {}
        self.nbytes = 0  # the frames' and window keys' bytes (read, never set, outside)
        self.ledger = ledger if ledger is not None else Ledger()  # the cache's totals

    def get(self, window: Hashable, version: int, bars: list[Bar]) -> Encoded | None:
        """The entry of ``window`` if it encodes the closed bars of ``bars`` at ``version``."""
        entry = self._entries.get(window)
        if entry is None or not entry.matches(version, bars):
            return None
        self._entries[window] = self._entries.pop(window)  # most recently used
        return entry

    def put(self, window: Hashable, entry: Encoded) -> None:
        """Keep ``entry``; entries of older versions and the least recently used go."""
        self._drop(window)
        for stale in [w for w, e in self._entries.items() if e.version < entry.version]:
            self._drop(stale)
        while len(self._entries) >= MAX_WINDOWS:
            self._drop(next(iter(self._entries)))
        self._entries[window] = entry
        self._count(_cost(window, entry))

    def replace_frame(self, window: Hashable, entry: Encoded, last: Bar, frame: bytes) -> None:
        """``entry`` now holds ``frame``, the same closed bars with ``last`` after them."""
        if self._entries.get(window) is not entry:
            return  # dropped meanwhile: nothing to account for
        self._count(len(frame) - len(entry.frame))
        entry.last, entry.frame = last, frame

    def clear(self) -> None:
        self._entries.clear()
        self._count(-self.nbytes)

    def bar_equivalents(self) -> int:
        """The memory of the frames in the bound's unit (bars)."""
        return -(-self.nbytes // BYTES_PER_BAR)

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, window: Hashable) -> None:
        entry = self._entries.pop(window, None)
        if entry is not None:
            self._count(-_cost(window, entry))

    def _count(self, delta: int) -> None:
        self.nbytes += delta
        self.ledger.nbytes += delta


def _cost(window: Hashable, entry: Encoded) -> int:
    head = (
        sum(len(part) for part in window if isinstance(part, bytes))
        if isinstance(window, tuple)
        else 0
    )
    return len(entry.frame) + head


__all__ = ["BYTES_PER_BAR", "MAX_WINDOWS", "Encoded", "EncodedWindows", "Ledger"]
