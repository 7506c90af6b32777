"""Replaying a CSV file: a replay clock, and the bars that exist at a data time.

:class:`ReplayClock` maps wall time to data time, the same way in every process and across
restarts: each file's replay stood at its midpoint at :data:`REPLAY_EPOCH` and has run at the
replay speed since, so the data time is a function of the wall time alone and never goes
back when the server restarts. :class:`ReplaySeries` extends a file's rows
periodically (period = last - first + one step) and answers "which bars exist at data time
T": complete bars, and the forming bar whose last row is revealed in :data:`STAGES` steps
(open, first extreme, second extreme, close). The rows themselves come from
:mod:`backend.data_providers.csv.files`.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from backend.data_providers.csv.files import (
    CACHE_ENTRIES,
    DECIMALS,
    STAGES,
    Rows,
    aggregate,
    bucket,
    concat,
    partial,
    row_end,
)
from backend.model import intervals
from backend.model.bars import Bar, fold

__all__ = ["REPLAY_EPOCH", "STAGES", "ReplayClock", "ReplaySeries"]

#: Wall time (UTC seconds) at which every replay stood at its file's midpoint: 2026-12-01
#: 00:00 UTC. Fixed (never the start time) so that every process agrees on the data time;
#: recent, so that the data time is not yet far ahead of the file (at speed 60 it gains 60
#: days a day).
REPLAY_EPOCH = 1_796_083_200


@dataclass(frozen=True)
class ReplayClock:
    """Data time = ``origin_data + (wall - origin_wall) * speed``; speed 0 is frozen."""

    origin_wall: float
    origin_data: float
    speed: float

    @classmethod
    def for_file(
        cls, first: int, last: int, interval: str, speed: float, epoch: float = REPLAY_EPOCH
    ) -> ReplayClock:
        """Half the file is history at ``epoch`` (a fixed wall time, never the start time);
        frozen at the last row when speed is 0."""
        if speed <= 0:
            return cls(epoch, float(last), 0.0)
        return cls(epoch, float(intervals.floor((first + last) // 2, interval)), speed)

    def at(self, wall: float) -> float:
        return self.origin_data + (wall - self.origin_wall) * self.speed


class ReplaySeries:
    """One symbol's rows repeated forever after its file's first row, served at a clock.

    Cycle ``k`` holds the rows shifted by ``k * period``. Aggregated bars are computed once
    per cycle and interval (once in all when the period is a multiple of the interval) and
    kept in a small LRU cache. Thread-safe.
    """

    def __init__(self, rows: Rows, interval: str, first: int, last: int) -> None:
        self.rows = rows
        self.interval = interval
        self.first = first
        self.period = row_end(last, interval) - first
        self._cache: OrderedDict[tuple[str, int], Rows] = OrderedDict()
        self._lock = threading.Lock()

    def cycles(self, lo: int, hi: int) -> range:
        """The cycles that may hold rows with ``lo <= t <= hi``."""
        if hi < self.first or hi < lo:
            return range(0)
        return range(max(0, (lo - self.first) // self.period), (hi - self.first) // self.period + 1)

    def rows_between(self, lo: int, hi: int) -> Rows:
        """The extended rows with ``lo <= t <= hi``."""
        parts = [
            self.rows.between(lo - k * self.period, hi - k * self.period).shifted(k * self.period)
            for k in self.cycles(lo, hi)
        ]
        return concat([p for p in parts if len(p)], self.rows)

    def last_row(self, t: int) -> int | None:
        """Open time of the last extended row at or before ``t``."""
        for k in reversed(self.cycles(t - self.period, t)):
            local = t - k * self.period
            i = int(np.searchsorted(self.rows.times, local, side="right"))
            if i:
                return int(self.rows.times[i - 1]) + k * self.period
        return None

    def _cycle_bars(self, interval: str, k: int) -> tuple[Rows, int]:
        """Bars of cycle ``k`` (cached), and the shift still to add to their times."""
        invariant = interval != "1M" and self.period % intervals.nominal_seconds(interval) == 0
        key = (interval, 0 if invariant else k)
        with self._lock:
            cached = self._cache.get(key)
            if cached is None:
                rows = self.rows.shifted(key[1] * self.period)
                cached = aggregate(rows, bucket(rows.times, interval))
                self._cache[key] = cached
                if len(self._cache) > CACHE_ENTRIES:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(key)
        return cached, (k - key[1]) * self.period

    def complete(self, interval: str, lo: int, hi: int, limit: int) -> Rows:
        """Bars with open time in ``[lo, hi]`` built from every row of them up to ``limit``."""
        if interval == self.interval:
            return self.rows_between(lo, min(hi, limit))
        parts = []
        if hi >= lo:
            for k in self.cycles(lo, min(intervals.next_open(hi, interval) - 1, limit)):
                bars, shift = self._cycle_bars(interval, k)
                parts.append(bars.between(lo - shift, hi - shift).shifted(shift))
        merged = concat([p for p in parts if len(p)], self.rows)
        return aggregate(merged, merged.times) if len(parts) > 1 else merged

    def complete_until(self, interval: str, clock: float) -> int:
        """Bars opening before this time are complete at ``clock``."""
        now = math.floor(clock)
        if interval != self.interval:
            return intervals.floor(now, interval)
        t = self.last_row(now)
        return t if t is not None and row_end(t, interval) > now else now + 1

    def forming(self, interval: str, clock: float) -> Bar | None:
        """The bar containing ``clock`` as it stands then (its last row partly revealed)."""
        now = math.floor(clock)
        t = self.last_row(now)
        if t is None:
            return None
        end = row_end(t, self.interval)
        fraction = (clock - t) / (end - t) if end > now else 1.0
        if interval == self.interval:
            return None if end <= now else self._partial(t, fraction, t)
        start = intervals.floor(now, interval)
        if t < start:
            return None
        rows = self.rows_between(start, t - 1)
        last = self._partial(t, fraction, start)
        if rows.line or not len(rows):
            return last
        done = aggregate(rows, np.full(len(rows), start, dtype=np.int64)).bars()[0]
        t, o, h, lo, c, v = fold(done, start, last)
        return (t, o, h, lo, c, None if v is None else round(v, DECIMALS))

    def _partial(self, t: int, fraction: float, start: int) -> Bar:
        r = self.rows_between(t, t)
        v = float("nan") if r.volume is None else float(r.volume[0])
        row = (float(r.open[0]), float(r.high[0]), float(r.low[0]), float(r.close[0]), v)
        return partial(start, row, fraction)

    def bars(self, interval: str, start: int, end: int, clock: float, frozen: bool) -> list[Bar]:
        """Bars opening in ``[start, end]`` that exist at ``clock``, the forming one partial."""
        now = math.floor(clock)
        end = min(end, now)
        if frozen:
            return self.complete(interval, start, end, now).bars()
        until = self.complete_until(interval, clock)
        out = self.complete(interval, start, min(end, until - 1), now).bars()
        forming = self.forming(interval, clock)
        if forming is not None and start <= forming[0] <= end:
            out.append(forming)
        return out
