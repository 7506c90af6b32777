"""The bar cache: the hot bars per series key in memory, with coverage and live state.

It owns no I/O. :mod:`.planner` loads series from the :mod:`.store`, plans
requests against them and asks providers for what is missing; the hub merges live bars into
them. A series is *live* while an upstream stream feeds it continuously since its tail was
fetched: then its newest bars need no fetch. Memory is bounded by ``CACHE_MAX_BARS``: the
least recently used series are evicted (or, while streamed, trimmed to their newest bars);
evicted bars stay in the store and are read back on demand. The encoded frames a series keeps
(:mod:`.encoded`) count against the same bound, in bars of :data:`~.encoded.BYTES_PER_BAR`.

A series' ``version`` changes with every change to its bars except an in-place update of its
newest bar: a frame encoded at one version holds the same closed bars as the series while the
version stays (``upsert``, ``merge``, ``trim`` and ``drop_before`` are the only writers).
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field

from backend.history.encoded import BYTES_PER_BAR, EncodedWindows, Ledger
from backend.model.bars import Bar, SeriesId
from backend.model.coverage import Coverage

MIN_TIME = -(2**62)
KEEP_WHEN_TRIMMED = 2  # a streamed series keeps its forming bar and the one before


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
    live_t: int | None = None  # open time of the newest bar a live update set (or refilled)
    sent_t: int | None = None  # open time of the newest bar its clients got as an update
    tail_fetched_at: float = 0.0
    tail_from: int = MIN_TIME  # where the window of the last tail fetch started
    exhausted_before: int | None = None  # nothing older than this exists upstream
    last_used: float = field(default_factory=time.monotonic)
    loaded: bool = False  # coverage and newest bars were read from the store
    persist: bool = True  # the provider's bars are worth keeping in the store
    floor: int = MIN_TIME  # every stored bar with t >= floor is in memory
    version: int = 0  # bumped by every change to the bars but one to the newest bar in place
    ledger: Ledger = field(default_factory=Ledger)  # its cache's totals (its own once evicted)
    encoded: EncodedWindows = field(init=False)

    def __post_init__(self) -> None:
        self.encoded = EncodedWindows(self.ledger)

    @property
    def newest(self) -> int | None:
        return self.times[-1] if self.times else None

    def upsert(self, bar: Bar) -> bool:
        """Insert or replace one bar; True if it is the newest bar (or newer)."""
        t = bar[0]
        if not self.times or t > self.times[-1]:
            self.times.append(t)
            self.bars.append(bar)
            self.version += 1
            self.ledger.bars += 1
            return True
        i = bisect.bisect_left(self.times, t)
        if self.times[i] != t:  # an older bar that was missing
            self.times.insert(i, t)
            self.bars.insert(i, bar)
            self.version += 1
            self.ledger.bars += 1
            return False
        newest = i == len(self.times) - 1
        if not newest and self.bars[i] != bar:
            self.version += 1
        self.bars[i] = bar
        return newest

    def merge(
        self, bars: list[Bar], keep_newer_than_seq: int | None = None, keep_existing: bool = False
    ) -> None:
        """Merge sorted history bars; the live forming bar wins if it changed meanwhile.

        With ``keep_existing`` (bars read back from the store) bars in memory win.
        """
        if not bars:
            return
        keep_live = keep_newer_than_seq is not None and self.live_seq > keep_newer_than_seq
        newest = self.newest
        if not self.times or bars[0][0] > self.times[-1]:
            self.times.extend(bar[0] for bar in bars)
            self.bars.extend(bars)
            self.version += 1
            self.ledger.bars += len(bars)
            return
        if bars[-1][0] < self.times[0]:
            self.times[:0] = [bar[0] for bar in bars]
            self.bars[:0] = bars
            self.version += 1
            self.ledger.bars += len(bars)
            return
        # Only the bars from the first one merged on can change: a tail fetch touches a few.
        i = bisect.bisect_left(self.times, min(bar[0] for bar in bars))
        merged = dict(zip(self.times[i:], self.bars[i:], strict=True))
        closed_changed = newest_changed = False
        for bar in bars:
            t = bar[0]
            if (keep_live and t == newest) or (keep_existing and t in merged):
                continue
            if merged.get(t) == bar:
                continue  # the same bar again (a repeated tail fetch): nothing to re-encode
            merged[t] = bar
            if t == newest:
                newest_changed = True
            else:
                closed_changed = True
        if closed_changed:
            self.ledger.bars += len(merged) - (len(self.times) - i)
            times = sorted(merged)
            self.times[i:] = times
            self.bars[i:] = [merged[t] for t in times]
            self.version += 1
        elif newest_changed:
            self.bars[-1] = merged[self.times[-1]]

    def last_before(self, end: int, count: int, since: int | None = None) -> list[Bar]:
        """The last ``count`` bars with open time <= ``end`` (and >= ``since``)."""
        j = bisect.bisect_right(self.times, end)
        i = max(0, j - count)
        if since is not None:
            i = max(i, bisect.bisect_left(self.times, since))
        return self.bars[i:j]

    def count_between(self, a: int, b: int) -> int:
        return bisect.bisect_right(self.times, b) - bisect.bisect_left(self.times, a)

    def detach(self) -> None:
        """Leave the cache's totals (evicted: an answer in flight may still write to it)."""
        self.ledger = Ledger(len(self.times), self.encoded.nbytes)
        self.encoded.ledger = self.ledger

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def drop_before(self, cutoff: int) -> None:
        """Retention: forget bars and coverage older than ``cutoff``."""
        i = bisect.bisect_left(self.times, cutoff)
        if i:
            del self.times[:i], self.bars[:i]
            self.version += 1
            self.ledger.bars -= i
        self.coverage.remove_before(cutoff)
        if self.exhausted_before is not None and self.exhausted_before < cutoff:
            self.exhausted_before = None
        self.floor = max(self.floor, cutoff)

    def reset(self) -> None:
        """Forget every bar and what is known of them (the provider's bars changed): the
        next request asks the provider again. A stream that goes on adds its new bars."""
        self.ledger.bars -= len(self.times)
        self.times, self.bars = [], []
        self.coverage = Coverage()
        self.exhausted_before = None
        self.floor = MIN_TIME
        self.live = False
        self.epoch += 1
        self.live_t = None
        self.tail_fetched_at = 0.0
        self.tail_from = MIN_TIME
        self.version += 1
        self.encoded.clear()

    def trim(self, keep: int) -> int:
        """Keep only the newest ``keep`` bars; returns how many were dropped."""
        drop = len(self.times) - keep
        if drop <= 0:
            return 0
        del self.times[:drop], self.bars[:drop]
        self.version += 1
        self.ledger.bars -= drop
        self.encoded.clear()
        if self.persist:
            self.floor = self.times[0] if self.times else MIN_TIME
        else:  # nothing to read back: forget that the dropped span was known
            self.coverage.remove_before(self.times[0] if self.times else 2**62)
            self.exhausted_before = None
        return drop


class BarCache:
    """Every cached series, by key."""

    def __init__(self) -> None:
        self._series: dict[SeriesId, Series] = {}
        self._ledger = Ledger()

    def get(self, key: SeriesId) -> Series:
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = Series(key, ledger=self._ledger)
        return series

    def peek(self, key: SeriesId) -> Series | None:
        return self._series.get(key)

    def all(self) -> list[Series]:
        return list(self._series.values())

    def for_source(self, source: str) -> list[Series]:
        return [s for key, s in self._series.items() if key.source == source]

    def evict_idle(self, idle_seconds: float, keep: set[SeriesId]) -> list[SeriesId]:
        """Drop series unused for ``idle_seconds`` that nobody streams; returns their keys."""
        self.recount()  # the upkeep tick's walk over every series
        cutoff = time.monotonic() - idle_seconds
        stale = [k for k, s in self._series.items() if s.last_used < cutoff and k not in keep]
        for key in stale:
            self._evict(key)
        return stale

    def enforce(self, max_bars: int, streamed: set[SeriesId]) -> list[SeriesId]:
        """Evict least recently used series (trim streamed ones, dropping their encoded
        frames) until bars and frames (:meth:`memory`) are under ``max_bars``."""
        evicted: list[SeriesId] = []
        total = self.memory()
        if total <= max_bars:
            return evicted
        for series in sorted(self._series.values(), key=lambda s: s.last_used):
            if total <= max_bars:
                break
            total -= series.encoded.bar_equivalents()
            if series.key in streamed:
                total -= series.trim(KEEP_WHEN_TRIMMED)
                series.encoded.clear()
            else:
                total -= len(series.times)
                self._evict(series.key)
                evicted.append(series.key)
        return evicted

    def drop(self, keys: list[SeriesId]) -> None:
        """Evict these series (those cached)."""
        for key in keys:
            if key in self._series:
                self._evict(key)

    def _evict(self, key: SeriesId) -> None:
        series = self._series.pop(key)
        self._ledger.bars -= len(series.times)
        self._ledger.nbytes -= series.encoded.nbytes
        series.detach()

    def bar_count(self) -> int:
        return sum(len(s.times) for s in self._series.values())

    def encoded_bytes(self) -> int:
        """Bytes of the encoded frames kept (:mod:`.encoded`)."""
        return self._ledger.nbytes

    def memory(self) -> int:
        """What the bound counts: bars, plus the encoded frames in bars of ``BYTES_PER_BAR``
        (asked after every history request: the running totals)."""
        return self._ledger.bars + -(-self._ledger.nbytes // BYTES_PER_BAR)

    def recount(self) -> None:
        """Count the totals again from the series (they are kept exact by the writers;
        this bounds the damage of any writer that would not be)."""
        self._ledger.bars = sum(len(s.times) for s in self._series.values())
        self._ledger.nbytes = sum(s.encoded.nbytes for s in self._series.values())

    def __len__(self) -> int:
        return len(self._series)
