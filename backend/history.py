"""History planning: answer "the last N bars up to T" from the cache, fetching only gaps.

For each request the planner walks back from the end through the covered spans of the
series; where a span is missing it asks the provider for just that window, records what the
provider answered (also when it answered nothing), and goes on until it has ``count`` bars or
the provider has no older data. Requests on one key are serialized, so identical concurrent
misses share one provider call. A provider failure returns what the cache has plus the error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from backend import intervals
from backend.bars import Bar, SeriesId
from backend.cache import BarCache, Series
from backend.clocks import Clocks
from backend.errors import ProviderError

logger = logging.getLogger(__name__)

# fetch(key, start, end or None for "now", count) -> bars oldest first
Fetch = Callable[[SeriesId, int, int | None, int], Awaitable[list[Bar]]]

TAIL_FRESH_SECONDS = 1.0
MAX_EMPTY_WINDOWS = 7
WIDEN_FACTOR = 4
MAX_FETCHES_PER_REQUEST = 16


@dataclass(frozen=True, slots=True)
class Answer:
    bars: list[Bar]
    error: ProviderError | None = None


class HistoryPlanner:
    """Plans and runs history requests against one :class:`BarCache`."""

    def __init__(self, cache: BarCache, fetch: Fetch, clocks: Clocks) -> None:
        self.cache = cache
        self.fetch = fetch
        self.clocks = clocks
        self._locks: dict[SeriesId, asyncio.Lock] = {}

    async def latest(self, key: SeriesId, count: int, streaming: bool) -> Answer:
        """The latest ``count`` bars including the forming one (``data_init``)."""
        return await self.before(key, None, count, streaming)

    async def before(
        self, key: SeriesId, end: int | None, count: int, streaming: bool = False
    ) -> Answer:
        """The last ``count`` bars with open time <= ``end`` (None: now)."""
        series = self.cache.get(key)
        series.touch()
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            now = self.clocks.now(key.source, key.name)
            end_t = now if end is None else end
            error: ProviderError | None = None
            try:
                if end_t >= now - intervals.nominal_seconds(key.interval) and not _fresh(series):
                    await self._fetch_tail(series, now, count, streaming)
                cursor = min(end_t, max(now, series.newest or now))
                await self._fill_back(series, cursor, count)
            except ProviderError as exc:
                error = exc
            limit = end_t if end is not None else max(end_t, series.newest or end_t)
            return Answer(series.last_before(limit, count), error)

    def forget(self, key: SeriesId) -> None:
        """Drop the lock of an evicted series."""
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]

    async def _fetch_tail(self, series: Series, now: int, count: int, streaming: bool) -> None:
        step = intervals.nominal_seconds(series.key.interval)
        start = max(0, now - step * count)
        closed_end = series.coverage.end_before(now + 1)
        if closed_end is not None and closed_end + 1 > start:
            start = closed_end + 1
        epoch, seq = series.epoch, series.live_seq
        bars = await self.fetch(series.key, start, None, count)
        series.merge(bars, keep_newer_than_seq=seq)
        # The newest bar of a window that reaches "now" may still change: not covered.
        covered_to = bars[-1][0] - 1 if bars else now - step
        series.coverage.add(start, covered_to)
        series.tail_fetched_at = time.monotonic()
        series.live = streaming and series.epoch == epoch

    async def _fill_back(self, series: Series, cursor: int, count: int) -> None:
        step = intervals.nominal_seconds(series.key.interval)
        collected, widen, empties, fetches = 0, 1, 0, 0
        while collected < count and cursor >= 0:
            if series.exhausted_before is not None and cursor < series.exhausted_before:
                return
            newest = series.newest
            if newest is not None and cursor >= newest and _fresh(series):
                collected += series.count_between(newest, cursor)
                cursor = newest - 1
                continue
            span = series.coverage.span_at(cursor)
            if span is not None:
                collected += series.count_between(span[0], cursor)
                if series.exhausted_before is not None and span[0] <= series.exhausted_before:
                    return
                cursor = span[0] - 1
                continue
            if fetches >= MAX_FETCHES_PER_REQUEST:
                logger.warning("%s: gave up after %d history fetches", series.key, fetches)
                return
            need = count - collected
            start = max(0, cursor - step * need * widen + 1)
            lower = series.coverage.end_before(cursor)
            if lower is not None:
                start = max(start, lower + 1)
            bars = await self.fetch(series.key, start, cursor, need)
            fetches += 1
            series.merge(bars)
            series.coverage.add(start, cursor)
            if series.count_between(start, cursor) == 0:
                empties += 1
                widen *= WIDEN_FACTOR
                if empties >= MAX_EMPTY_WINDOWS or start == 0:
                    series.exhausted_before = start
                    return
            else:
                empties = 0


def _fresh(series: Series) -> bool:
    return series.live or time.monotonic() - series.tail_fetched_at < TAIL_FRESH_SECONDS
