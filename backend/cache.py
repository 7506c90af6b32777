"""The bar cache: bars per series key in memory, with their coverage and live state.

It owns no I/O. :mod:`backend.history` plans requests against it and asks providers for
what is missing; the hub merges live bars into it. A series is *live* while an upstream
stream feeds it continuously since its tail was fetched: then its newest bars need no fetch.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field

from backend.bars import Bar, SeriesId
from backend.coverage import Coverage


@dataclass(slots=True)
class Series:
    """The bars of one key, sorted by open time, and what is known about them."""

    key: SeriesId
    times: list[int] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    coverage: Coverage = field(default_factory=Coverage)
    live: bool = False
    epoch: int = 0  # bumped whenever the stream may have missed bars (restart, stop)
    live_seq: int = 0  # bumped by every live update
    tail_fetched_at: float = 0.0
    exhausted_before: int | None = None  # nothing older than this exists upstream
    last_used: float = field(default_factory=time.monotonic)

    @property
    def newest(self) -> int | None:
        return self.times[-1] if self.times else None

    def upsert(self, bar: Bar) -> bool:
        """Insert or replace one bar; True if it is the newest bar (or newer)."""
        t = bar[0]
        if not self.times or t > self.times[-1]:
            self.times.append(t)
            self.bars.append(bar)
            return True
        i = bisect.bisect_left(self.times, t)
        if self.times[i] == t:
            self.bars[i] = bar
        else:
            self.times.insert(i, t)
            self.bars.insert(i, bar)
        return i == len(self.times) - 1

    def merge(self, bars: list[Bar], keep_newer_than_seq: int | None = None) -> None:
        """Merge sorted history bars; the live forming bar wins if it changed meanwhile."""
        if not bars:
            return
        keep_live = keep_newer_than_seq is not None and self.live_seq > keep_newer_than_seq
        newest = self.newest
        if not self.times or bars[0][0] > self.times[-1]:
            self.times.extend(bar[0] for bar in bars)
            self.bars.extend(bars)
            return
        if bars[-1][0] < self.times[0]:
            self.times[:0] = [bar[0] for bar in bars]
            self.bars[:0] = bars
            return
        merged = dict(zip(self.times, self.bars, strict=True))
        for bar in bars:
            if keep_live and bar[0] == newest:
                continue
            merged[bar[0]] = bar
        self.times = sorted(merged)
        self.bars = [merged[t] for t in self.times]

    def last_before(self, end: int, count: int, since: int | None = None) -> list[Bar]:
        """The last ``count`` bars with open time <= ``end`` (and >= ``since``)."""
        j = bisect.bisect_right(self.times, end)
        i = max(0, j - count)
        if since is not None:
            i = max(i, bisect.bisect_left(self.times, since))
        return self.bars[i:j]

    def count_between(self, a: int, b: int) -> int:
        return bisect.bisect_right(self.times, b) - bisect.bisect_left(self.times, a)

    def touch(self) -> None:
        self.last_used = time.monotonic()


class BarCache:
    """Every cached series, by key."""

    def __init__(self) -> None:
        self._series: dict[SeriesId, Series] = {}

    def get(self, key: SeriesId) -> Series:
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = Series(key)
        return series

    def peek(self, key: SeriesId) -> Series | None:
        return self._series.get(key)

    def for_source(self, source: str) -> list[Series]:
        return [s for key, s in self._series.items() if key.source == source]

    def evict_idle(self, idle_seconds: float, keep: set[SeriesId]) -> list[SeriesId]:
        """Drop series unused for ``idle_seconds`` that nobody streams; returns their keys."""
        cutoff = time.monotonic() - idle_seconds
        stale = [k for k, s in self._series.items() if s.last_used < cutoff and k not in keep]
        for key in stale:
            del self._series[key]
        return stale

    def bar_count(self) -> int:
        return sum(len(s.times) for s in self._series.values())

    def __len__(self) -> int:
        return len(self._series)
