"""Polygon aggregates as Candlewire bars: pure functions of tickers, intervals and instants.

Owns the mapping of the 14 intervals to Polygon's ``(multiplier, timespan)``, the bucket (bar
open time) of an instant computed exactly as Polygon's REST aggregation does, the REST
requests whose results fold into the part of a bucket before a given second (the seed of a
live bar), folding per-second aggregates into the forming bar (in order, or one arriving
late at its place), and reading REST aggregates.
Owns no sockets, clients, clocks or threads; times are UTC epoch seconds.

Polygon's buckets (checked against REST): minute and hour spans sit on UTC epoch multiples of
the span. Day, week and month bars open at local midnight of the market's zone: New York for
US stocks, options and indices (so 05:00 UTC in winter, 04:00 UTC in summer), UTC for crypto
and fx. Weeks open on Sunday, months on the 1st.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Literal, NamedTuple, Protocol
from zoneinfo import ZoneInfo

from backend.model.bars import Bar, fold, to_number

Market = Literal["stocks", "options", "indices", "crypto", "fx"]
MARKETS: tuple[Market, ...] = ("stocks", "options", "indices", "crypto", "fx")
CATEGORIES: dict[Market, str] = {
    "stocks": "Stocks",
    "options": "Options",
    "indices": "Indices",
    "crypto": "Crypto",
    "fx": "FX",
}
NEW_YORK = ZoneInfo("America/New_York")

_PREFIXES: dict[str, Market] = {"X:": "crypto", "C:": "fx", "I:": "indices", "O:": "options"}
_MINUTE, _HOUR = 60, 3600
_INTRADAY: dict[str, int] = {
    "1m": 1, "3m": 3, "5m": 5, "15m": 15, "30m": 30,
    "1h": 1, "2h": 2, "4h": 4, "6h": 6, "8h": 8, "12h": 12,
}  # fmt: skip
_CALENDAR: dict[str, str] = {"1d": "day", "1w": "week", "1M": "month"}


class AggLike(Protocol):
    """What a REST aggregate offers (``polygon.rest.models.Agg``)."""

    @property
    def open(self) -> float | None: ...
    @property
    def high(self) -> float | None: ...
    @property
    def low(self) -> float | None: ...
    @property
    def close(self) -> float | None: ...
    @property
    def volume(self) -> float | None: ...
    @property
    def timestamp(self) -> int | None: ...


class Piece(NamedTuple):
    """One REST request of a seed: ``timespan`` bars (multiplier 1) opening in ``[start, end)``."""

    timespan: str
    start: int
    end: int


def market_of(ticker: str) -> Market:
    """The market of a Polygon ticker, from its prefix (``X:``, ``C:``, ``I:``, ``O:``)."""
    return _PREFIXES.get(ticker[:2], "stocks")


def day_zone(market: Market) -> tzinfo:
    """The zone whose midnight opens day, week and month bars of ``market``."""
    return UTC if market in ("crypto", "fx") else NEW_YORK


def timespan(interval: str) -> tuple[int, str]:
    """Polygon's ``(multiplier, timespan)`` of an interval; ``KeyError`` for an unknown one."""
    if interval in _CALENDAR:
        return 1, _CALENDAR[interval]
    unit = "minute" if interval.endswith("m") else "hour"
    return _INTRADAY[interval], unit


def span_seconds(interval: str) -> int | None:
    """Length of an intraday bucket in seconds; ``None`` for day, week and month."""
    if interval in _CALENDAR:
        return None
    multiplier, unit = timespan(interval)
    return multiplier * (_MINUTE if unit == "minute" else _HOUR)


def bucket_start(market: Market, interval: str, t: int) -> int:
    """Open time of the Polygon bar of ``interval`` that holds the instant ``t``."""
    span = span_seconds(interval)
    if span is not None:
        return t - t % span
    zone = day_zone(market)
    day = datetime.fromtimestamp(t, zone).date()
    if interval == "1w":
        day -= timedelta(days=(day.weekday() + 1) % 7)  # back to Sunday
    elif interval == "1M":
        day = day.replace(day=1)
    return _midnight(day, zone)


def bucket_end(market: Market, interval: str, start: int) -> int:
    """Open time of the bar after the one opening at ``start``."""
    span = span_seconds(interval)
    if span is not None:
        return start + span
    zone = day_zone(market)
    day = datetime.fromtimestamp(start, zone).date()
    if interval == "1d":
        return _midnight(day + timedelta(days=1), zone)
    if interval == "1w":
        return _midnight(day + timedelta(days=7), zone)
    days = calendar.monthrange(day.year, day.month)[1]
    return _midnight(day + timedelta(days=days), zone)


def previous_bucket(market: Market, interval: str, start: int) -> int:
    """Open time of the bar before the one opening at ``start``."""
    return bucket_start(market, interval, start - 1)


def day_start(market: Market, t: int) -> int:
    """Local midnight (in the market's zone) of the day holding ``t``."""
    zone = day_zone(market)
    return _midnight(datetime.fromtimestamp(t, zone).date(), zone)


def _midnight(day: date, zone: tzinfo) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=zone).timestamp())


def seed_pieces(market: Market, interval: str, x: int) -> list[Piece]:
    """The REST requests whose bars, folded in order, are the bar of ``interval`` holding the
    second ``x`` up to (not including) ``x``.

    Everything before ``x`` has closed when the live aggregate of second ``x`` arrives, so
    these requests return final data: whole days (weeks and months only), whole minutes,
    then the seconds of the current minute.
    """
    start = bucket_start(market, interval, x)
    minute = x - x % _MINUTE
    pieces = []
    if interval in ("1w", "1M"):
        today = day_start(market, x)
        if start < today:
            pieces.append(Piece("day", start, today))
        start = today
    if start < minute:
        pieces.append(Piece("minute", start, minute))
    if minute < x:
        pieces.append(Piece("second", minute, x))
    return pieces


def fold_bars(t: int, bars: Iterable[Bar]) -> Bar | None:
    """The bar opening at ``t`` made of ``bars`` (oldest first); ``None`` when there are none."""
    folded: Bar | None = None
    for bar in bars:
        folded = fold(folded, t, bar)
    return folded


def advance(
    market: Market, interval: str, current: Bar | None, updates: Iterable[Bar]
) -> tuple[list[Bar], Bar | None]:
    """Fold finer bars (oldest first) into the forming bar ``current`` of ``interval``.

    Returns the bars that closed on the way (oldest first) and the new forming bar. An
    update older than the forming bar's bucket is ignored: that bar is already gone.
    """
    closed: list[Bar] = []
    for update in updates:
        start = bucket_start(market, interval, update[0])
        if current is not None and start < current[0]:
            continue
        if current is not None and start > current[0]:
            closed.append(current)
            current = None
        current = fold(current, start, update)
    return closed, current


def fold_late(bar: Bar, first: int, last: int, second: Bar) -> Bar:
    """``bar``, made of the seconds ``first`` to ``last`` (not every one between), with
    ``second`` folded in at its place in time: its high, low and volume always; its open
    when it is earlier than ``first``, its close when it is later than ``last``. The caller
    makes sure ``bar`` does not hold ``second`` already."""
    at, o, h, lo, c, v = second
    folded = fold(bar, bar[0], (at, None, h, lo, None, v))
    t, fo, fh, flo, fc, fv = folded
    if at < first and o is not None:
        fo = o
    if at > last and c is not None:
        fc = c
    return (t, fo, fh, flo, fc, fv)


def agg_bar(agg: AggLike) -> Bar | None:
    """A bar from a REST aggregate (``t`` in ms becomes seconds); ``None`` without a time."""
    if agg.timestamp is None:
        return None
    return (
        int(agg.timestamp) // 1000,
        to_number(agg.open),
        to_number(agg.high),
        to_number(agg.low),
        to_number(agg.close),
        to_number(agg.volume),
    )
