"""Deterministic market data behind the fake Polygon.io server.

Owns the trading calendar, the pure ``(ticker, minute) -> bar`` function, its exact per-second
breakdown, Polygon-aligned aggregation (with ``limit`` paging), the ticker catalogs and the
option contract chain. Owns no sockets, no clock and no threads: every function takes
``now_ms`` (or the day) explicitly.

Prices are integers in ticks (``10**decimals`` per unit) and volume-weighted sums are integers
too, so every coarser bar is an *exact* fold of finer ones: first open, max high, min low, last
close, summed volume, trade count and ``w`` (sum of volume x price in ticks; ``vw = w / v``).

Calendar: US stocks, options and indices trade 09:30-16:00 America/New_York on weekdays
except the NYSE full-day holidays of 2025-2027 listed below; fx trades from Sunday 17:00 to
Friday 17:00 New York; crypto trades always. Day, week (Sunday), month, quarter and year bars
open at New York midnight for US markets and at 00:00 UTC for crypto and fx. Second, minute
and hour bars sit on UTC multiples of their span.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import itertools
import math
import random
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from typing import Any, Literal, NamedTuple
from zoneinfo import ZoneInfo

Market = Literal["stocks", "options", "indices", "crypto", "fx"]
MARKETS: tuple[Market, ...] = ("stocks", "options", "indices", "crypto", "fx")
TIMESPANS = ("second", "minute", "hour", "day", "week", "month", "quarter", "year")
NEW_YORK = ZoneInfo("America/New_York")
SECOND_MS, MINUTE_MS, HOUR_MS = 1_000, 60_000, 3_600_000
_MASK64 = (1 << 64) - 1
_TAU = 2 * math.pi

US_HOLIDAYS = frozenset(
    date.fromisoformat(d)
    for d in (
        "2025-01-01", "2025-01-09", "2025-01-20", "2025-02-17", "2025-04-18", "2025-05-26",
        "2025-06-19", "2025-07-04", "2025-09-01", "2025-11-27", "2025-12-25", "2026-01-01",
        "2026-01-19", "2026-02-16", "2026-04-03", "2026-05-25", "2026-06-19", "2026-07-03",
        "2026-09-07", "2026-11-26", "2026-12-25", "2027-01-01", "2027-01-18", "2027-02-15",
        "2027-03-26", "2027-05-31", "2027-06-18", "2027-07-05", "2027-09-06", "2027-11-25",
        "2027-12-24",
    )
)  # fmt: skip


def market_of(ticker: str) -> Market:
    """The market of a Polygon ticker, from its prefix (``X:``, ``C:``, ``I:``, ``O:``)."""
    prefixes: dict[str, Market] = {"X:": "crypto", "C:": "fx", "I:": "indices", "O:": "options"}
    return prefixes.get(ticker[:2], "stocks")


def day_zone(market: Market) -> tzinfo:
    """The zone whose midnight opens day and longer bars: New York for US markets, else UTC."""
    return UTC if market in ("crypto", "fx") else NEW_YORK


def local_midnight_ms(day: date, zone: tzinfo, at: time = time()) -> int:
    """Epoch ms of ``at`` (default 00:00) on ``day`` in ``zone``, daylight saving included."""
    return int(datetime.combine(day, at, tzinfo=zone).timestamp() * 1000)


def local_date(ms: int, zone: tzinfo) -> date:
    """The calendar date in ``zone`` of the instant ``ms``."""
    return datetime.fromtimestamp(ms / 1000, zone).date()


# ----------------------------------------------------------------------------- bars


class Bar(NamedTuple):
    """One aggregate in integer ticks; ``parts`` counts the minute (or second) bars folded in."""

    t: int
    op: int
    hi: int
    lo: int
    cl: int
    v: int
    w: int
    n: int
    parts: int = 1

    def to_rest(self, decimals: int) -> dict[str, Any]:
        """The REST ``results`` row: ``{"v","vw","o","c","h","l","t","n"}``."""
        scale = 10**decimals
        return {
            "v": self.v,
            "vw": self.w / (self.v * scale),
            "o": self.op / scale,
            "c": self.cl / scale,
            "h": self.hi / scale,
            "l": self.lo / scale,
            "t": self.t,
            "n": self.n,
        }


def fold(bars: Iterable[Bar], t: int | None = None) -> Bar | None:
    """Aggregate bars given oldest first; ``None`` when there are none."""
    it = iter(bars)
    first = next(it, None)
    if first is None:
        return None
    op, hi, lo, cl, v, w, n, parts = (
        first.op,
        first.hi,
        first.lo,
        first.cl,
        first.v,
        first.w,
        first.n,
        first.parts,
    )
    for b in it:
        hi, lo, cl = max(hi, b.hi), min(lo, b.lo), b.cl
        v, w, n, parts = v + b.v, w + b.w, n + b.n, parts + b.parts
    return Bar(first.t if t is None else t, op, hi, lo, cl, v, w, n, parts)


# ----------------------------------------------------------------------------- generator


@dataclass(frozen=True, slots=True)
class Profile:
    """Per-ticker constants of the generator, all derived from the ticker string."""

    seed: int
    base: float
    decimals: int
    volume: int  # mean volume per active second
    liquidity: int  # minutes out of 1000 that trade
    min_seconds: int  # fewest active seconds in a traded minute
    phases: tuple[float, float, float]


KNOWN_PRICES: dict[str, float] = {
    "AAPL": 190, "AMD": 160, "AMZN": 185, "GOOGL": 170, "IWM": 210, "JPM": 200, "KO": 62,
    "META": 500, "MSFT": 420, "NVDA": 120, "QQQ": 480, "SPY": 560, "TSLA": 250, "XOM": 115,
    "X:BTCUSD": 65000, "X:ETHUSD": 3200, "X:SOLUSD": 150, "X:DOGEUSD": 0.15, "X:XRPUSD": 0.55,
    "X:LTCUSD": 80, "C:EURUSD": 1.08, "C:GBPUSD": 1.27, "C:USDJPY": 150, "C:AUDUSD": 0.66,
    "C:USDCHF": 0.88, "C:USDCAD": 1.36, "I:SPX": 5600, "I:NDX": 19500, "I:DJI": 40000,
    "I:VIX": 15, "I:RUT": 2100,
}  # fmt: skip
_MARKET_SHAPE: dict[Market, tuple[float, float, int, int, int]] = {
    # price range (when not known), volume per second, liquidity, min active seconds
    "stocks": (10, 500, 300, 1000, 20),
    "options": (0.5, 25, 5, 250, 1),
    "indices": (500, 20000, 1, 1000, 60),
    "crypto": (0.1, 1000, 2, 1000, 30),
    "fx": (0.5, 2, 40, 1000, 40),
}


def _mix(x: int) -> int:
    """splitmix64: a cheap, well-spread 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _decimals(market: Market, price: float) -> int:
    if market == "fx":
        return 3 if price >= 20 else 5
    if market == "crypto":
        return 2 if price >= 100 else 4 if price >= 1 else 6
    return 2


@lru_cache(maxsize=65536)
def profile(ticker: str) -> Profile:
    """The generator constants of ``ticker`` (pure, cached)."""
    seed = int.from_bytes(hashlib.blake2b(ticker.encode(), digest_size=8).digest(), "big")
    market = market_of(ticker)
    low, high, volume, liquidity, min_seconds = _MARKET_SHAPE[market]
    base = KNOWN_PRICES.get(ticker) or low * (high / low) ** ((seed % 10_000) / 10_000)
    phases = tuple(_TAU * (_mix(seed + i) % 1000) / 1000 for i in range(3))
    return Profile(
        seed,
        base,
        _decimals(market, base),
        volume,
        liquidity,
        min_seconds,
        (phases[0], phases[1], phases[2]),
    )


def decimals_of(ticker: str) -> int:
    """Digits after the decimal point of ``ticker``'s prices."""
    return profile(ticker).decimals


def _price(p: Profile, minute: int) -> float:
    a, b, c = p.phases
    x = (
        0.06 * math.sin(minute * _TAU / 33_120 + a)
        + 0.015 * math.sin(minute * _TAU / 2_447 + b)
        + 0.003 * math.sin(minute * _TAU / 97 + c)
    )
    return p.base * math.exp(x)


def _draw_minute(ticker: str, minute: int) -> tuple[Bar, int] | None:
    """The minute bar starting at epoch minute ``minute`` and its active-second count."""
    p = profile(ticker)
    r1 = _mix(p.seed ^ (minute * 0x2545F4914F6CDD1D & _MASK64))
    if p.liquidity < 1000 and r1 % 1000 >= p.liquidity:
        return None
    r2, scale = _mix(r1), 10**p.decimals
    r3 = _mix(r2)
    mid0, mid1 = _price(p, minute) * scale, _price(p, minute + 1) * scale
    jitter, spread = max(1, int(mid0 * 0.0004)), max(1, int(mid0 * 0.0008))
    op = max(1, round(mid0) + (r1 >> 10) % (2 * jitter + 1) - jitter)
    cl = max(1, round(mid1) + (r1 >> 30) % (2 * jitter + 1) - jitter)
    hi = max(op, cl) + r2 % (spread + 1)
    lo = max(1, min(op, cl) - (r2 >> 20) % (spread + 1))
    k = p.min_seconds + (r2 >> 40) % (61 - p.min_seconds)
    v = k + r3 % (2 * p.volume * k + 1)
    n = k + (r3 >> 24) % (min(v, 20 * k) - k + 1)
    q, rem = (lo + (r3 >> 40) % (hi - lo), _mix(r3) % v) if hi > lo else (lo, 0)
    return Bar(minute * MINUTE_MS, op, hi, lo, cl, v, v * q + rem, n), k


def minute_bar(ticker: str, minute: int) -> Bar | None:
    """The complete 1-minute bar of ``ticker`` at epoch minute ``minute`` (calendar ignored)."""
    drawn = _draw_minute(ticker, minute)
    return None if drawn is None else drawn[0]


def _split(rng: random.Random, total: int, parts: int) -> list[int]:
    cuts = sorted(rng.sample(range(1, total), parts - 1))
    return [b - a for a, b in itertools.pairwise([0, *cuts, total])]


def _spread_remainder(rng: random.Random, rem: int, vols: list[int]) -> list[int]:
    extra, left = [0] * len(vols), rem
    for i in rng.sample(range(len(vols)), len(vols)):
        extra[i] = min(left, rng.randint(0, vols[i]))
        left -= extra[i]
    for i, vol in enumerate(vols):
        take = min(left, vol - extra[i])
        extra[i], left = extra[i] + take, left - take
    return extra


@lru_cache(maxsize=8192)
def second_bars(ticker: str, minute: int) -> tuple[Bar, ...]:
    """The per-second bars of one minute; they fold exactly into :func:`minute_bar`."""
    drawn = _draw_minute(ticker, minute)
    if drawn is None:
        return ()
    bar, k = drawn
    rng = random.Random(_mix(profile(ticker).seed + 2 * minute + 1))
    seconds = sorted(rng.sample(range(60), k))
    q, rem = divmod(bar.w, bar.v)
    top = q + 1 if rem else q  # every second's range covers [q, top], so its vw fits
    path = [bar.op, *(rng.randint(bar.lo, bar.hi) for _ in range(k - 1)), bar.cl]
    vols, trades = _split(rng, bar.v, k), _split(rng, bar.n, k)
    extra = _spread_remainder(rng, rem, vols)
    out = [
        Bar(
            bar.t + s * SECOND_MS,
            path[i],
            max(path[i], path[i + 1], top),
            min(path[i], path[i + 1], q),
            path[i + 1],
            vols[i],
            vols[i] * q + extra[i],
            trades[i],
        )
        for i, s in enumerate(seconds)
    ]
    jh, jl = rng.randrange(k), rng.randrange(k)
    out[jh] = out[jh]._replace(hi=bar.hi)
    out[jl] = out[jl]._replace(lo=bar.lo)
    return tuple(out)


# ----------------------------------------------------------------------------- calendar


@lru_cache(maxsize=8192)
def _us_session(day: date) -> tuple[int, int] | None:
    if day.weekday() >= 5 or day in US_HOLIDAYS:
        return None
    start = datetime.combine(day, time(9, 30), tzinfo=NEW_YORK)
    return int(start.timestamp() * 1000), int(start.timestamp() * 1000) + 390 * MINUTE_MS


def _days(start_ms: int, end_ms: int, zone: tzinfo) -> Iterator[date]:
    day, last = local_date(start_ms, zone), local_date(end_ms - 1, zone)
    while day <= last:
        yield day
        day += timedelta(days=1)


def _fx_windows(start_ms: int, end_ms: int) -> Iterator[tuple[int, int]]:
    first = local_date(start_ms, NEW_YORK)
    sunday = first - timedelta(days=(first.weekday() + 1) % 7 + 7)
    while (opens := local_midnight_ms(sunday, NEW_YORK, time(17))) < end_ms:
        closes = local_midnight_ms(sunday + timedelta(days=5), NEW_YORK, time(17))
        yield opens, closes
        sunday += timedelta(days=7)


def trading_windows(
    market: Market, start_ms: int, end_ms: int, always_open: bool = False
) -> list[tuple[int, int]]:
    """The ``[open, close)`` ms windows of ``market`` inside ``[start_ms, end_ms)``, ascending."""
    if end_ms <= start_ms:
        return []
    if always_open or market == "crypto":
        return [(start_ms, end_ms)]
    if market == "fx":
        raw: Iterable[tuple[int, int] | None] = _fx_windows(start_ms, end_ms)
    else:
        raw = (_us_session(d) for d in _days(start_ms, end_ms, NEW_YORK))
    return [
        (max(a, start_ms), min(b, end_ms))
        for a, b in filter(None, raw)
        if a < end_ms and b > start_ms
    ]


# ----------------------------------------------------------------------------- buckets


@dataclass(frozen=True, slots=True)
class Bucketing:
    """Maps an instant to the start of its bucket for one ``(market, multiplier, timespan)``.

    Sub-day spans are UTC multiples of the span. Calendar spans open at local midnight (see
    :func:`day_zone`); with a multiplier above 1 they are counted from the bucket of
    ``anchor_ms`` (the request's ``from``).
    """

    market: Market
    multiplier: int
    timespan: str
    anchor_ms: int

    @property
    def span_ms(self) -> int | None:
        """The fixed span in ms of sub-day buckets, ``None`` for calendar ones."""
        unit = {"second": SECOND_MS, "minute": MINUTE_MS, "hour": HOUR_MS}.get(self.timespan)
        return None if unit is None else unit * self.multiplier

    def start_of(self, ms: int) -> int:
        """Start (epoch ms) of the bucket holding ``ms``."""
        if (span := self.span_ms) is not None:
            return ms - ms % span
        zone = day_zone(self.market)
        index = self._index(local_date(ms, zone))
        anchor = self._index(local_date(self.anchor_ms, zone))
        return local_midnight_ms(
            self._date(anchor + (index - anchor) // self.multiplier * self.multiplier), zone
        )

    def end_of(self, start_ms: int) -> int:
        """End (exclusive, epoch ms) of the bucket starting at ``start_ms``."""
        if (span := self.span_ms) is not None:
            return start_ms + span
        zone = day_zone(self.market)
        index = self._index(local_date(start_ms, zone))
        return local_midnight_ms(self._date(index + self.multiplier), zone)

    def _index(self, d: date) -> int:
        match self.timespan:
            case "day":
                return d.toordinal()
            case "week":  # ordinals of Sundays are multiples of 7
                return (d.toordinal() - (d.weekday() + 1) % 7) // 7
            case "month":
                return d.year * 12 + d.month - 1
            case "quarter":
                return d.year * 4 + (d.month - 1) // 3
            case _:
                return d.year

    def _date(self, index: int) -> date:
        match self.timespan:
            case "day":
                return date.fromordinal(index)
            case "week":
                return date.fromordinal(index * 7)
            case "month":
                return date(index // 12, index % 12 + 1, 1)
            case "quarter":
                return date(index // 4, index % 4 * 3 + 1, 1)
            case _:
                return date(index, 1, 1)


# ----------------------------------------------------------------------------- engine


@dataclass(frozen=True, slots=True)
class AggPage:
    """One page of aggregates: the bars, the base aggregates scanned, where to resume."""

    bars: list[Bar]
    scanned: int
    resume_ms: int | None


class BarEngine:
    """Bars of any span for any ticker as of ``now_ms``, including the forming bar.

    ``always_open`` makes every market trade around the clock (the test switch). Complete day
    bars are cached; everything else is recomputed from the pure generator.
    """

    def __init__(self, always_open: bool = False, count_minutes_for_days: bool = False) -> None:
        self.always_open = always_open
        self.count_minutes_for_days = count_minutes_for_days
        self._days: dict[tuple[str, int, bool], Bar | None] = {}
        self._prefix: dict[tuple[str, bool], tuple[int, int, Bar | None]] = {}

    def windows(self, ticker: str, start_ms: int, end_ms: int) -> list[tuple[int, int]]:
        """Trading windows of ``ticker`` in ``[start_ms, end_ms)``."""
        return trading_windows(market_of(ticker), start_ms, end_ms, self.always_open)

    def minute(self, ticker: str, minute: int, now_ms: int) -> Bar | None:
        """Minute ``minute`` as of ``now_ms``: whole, forming (closed seconds) or ``None``."""
        if (minute + 1) * MINUTE_MS <= now_ms:
            return minute_bar(ticker, minute)
        closed = (b for b in second_bars(ticker, minute) if b.t + SECOND_MS <= now_ms)
        partial = fold(closed, minute * MINUTE_MS)
        return None if partial is None else partial._replace(parts=1)

    def minutes(
        self, ticker: str, start_ms: int, end_ms: int, now_ms: int, descending: bool = False
    ) -> Iterator[Bar]:
        """Traded minute bars starting in ``[start_ms, end_ms)`` and before ``now_ms``."""
        windows = self.windows(ticker, start_ms, min(end_ms, now_ms))
        for a, b in reversed(windows) if descending else windows:
            first, stop = -(-a // MINUTE_MS), -(-b // MINUTE_MS)
            span = range(stop - 1, first - 1, -1) if descending else range(first, stop)
            for m in span:
                if (bar := self.minute(ticker, m, now_ms)) is not None:
                    yield bar

    def seconds(
        self, ticker: str, start_ms: int, end_ms: int, now_ms: int, descending: bool = False
    ) -> Iterator[Bar]:
        """Traded, closed second bars starting in ``[start_ms, end_ms)``."""
        floor = start_ms - start_ms % MINUTE_MS
        for m in self.minutes(ticker, floor, end_ms, now_ms, descending):
            bars = second_bars(ticker, m.t // MINUTE_MS)
            for b in reversed(bars) if descending else bars:
                if start_ms <= b.t < end_ms and b.t + SECOND_MS <= now_ms:
                    yield b

    def day(self, ticker: str, start_ms: int, end_ms: int, now_ms: int) -> Bar | None:
        """The day bar ``[start_ms, end_ms)``; complete days are cached."""
        key = (ticker, start_ms, self.always_open)
        if end_ms <= now_ms and key in self._days:
            return self._days[key]
        bar = fold(self.minutes(ticker, start_ms, end_ms, now_ms), start_ms)
        if end_ms <= now_ms:
            if len(self._days) > 200_000:
                self._days.clear()
            self._days[key] = bar
        return bar

    def days(
        self, ticker: str, start_ms: int, end_ms: int, now_ms: int, descending: bool = False
    ) -> Iterator[Bar]:
        """Day bars (local midnight to midnight) starting in ``[start_ms, end_ms)``."""
        zone = day_zone(market_of(ticker))
        stop = min(end_ms, now_ms)
        dates = list(_days(start_ms, stop, zone)) if stop > start_ms else []
        for d in reversed(dates) if descending else dates:
            lo, hi = local_midnight_ms(d, zone), local_midnight_ms(d + timedelta(days=1), zone)
            if lo >= start_ms and (bar := self.day(ticker, lo, hi, now_ms)) is not None:
                yield bar

    def day_so_far(self, ticker: str, upto_ms: int) -> Bar | None:
        """The day's bar from local midnight up to ``upto_ms`` (the stream's ``av``, ``op``, ``a``).

        Whole minutes are folded incrementally per ticker, so calling this every second is cheap.
        """
        zone = day_zone(market_of(ticker))
        day_start = local_midnight_ms(local_date(upto_ms - 1, zone), zone)
        floor, key = upto_ms - upto_ms % MINUTE_MS, (ticker, self.always_open)
        cached = self._prefix.get(key)
        if cached is not None and cached[0] == day_start and cached[1] <= floor:
            head: list[Bar | None] = [cached[2], *self.minutes(ticker, cached[1], floor, floor)]
        else:
            head = list(self.minutes(ticker, day_start, floor, floor))
        prefix = fold((b for b in head if b is not None), day_start)
        self._prefix[key] = (day_start, floor, prefix)
        tail = self.minutes(ticker, floor, upto_ms, upto_ms)  # the forming minute, if any
        return fold((b for b in (prefix, *tail) if b is not None), day_start)

    def page(
        self,
        ticker: str,
        bucketing: Bucketing,
        span: tuple[int, int],
        now_ms: int,
        descending: bool = False,
        limit: int = 5000,
    ) -> AggPage:
        """Aggregates of buckets in ``span`` (bucket-aligned ``[start, end)``), one page.

        ``limit`` caps the base aggregates scanned (seconds, minutes, or days for day and
        longer spans); a page always holds at least one bucket.
        """
        bars: list[Bar] = []
        scanned = 0
        for start, group in itertools.groupby(
            self._base(ticker, bucketing.timespan, span, now_ms, descending),
            key=lambda b: bucketing.start_of(b.t),
        ):
            members = list(group)
            if descending:
                members.reverse()
            count = self._count(bucketing.timespan, members)
            if bars and scanned + count > limit:
                return AggPage(bars, scanned, bucketing.end_of(start) if descending else start)
            bars.append(fold(members, start))  # type: ignore[arg-type]
            scanned += count
        return AggPage(bars, scanned, None)

    def _base(
        self, ticker: str, timespan: str, span: tuple[int, int], now_ms: int, descending: bool
    ) -> Iterator[Bar]:
        source: Callable[..., Iterator[Bar]] = {
            "second": self.seconds,
            "minute": self.minutes,
            "hour": self.minutes,
        }.get(timespan, self.days)
        return source(ticker, span[0], span[1], now_ms, descending)

    def _count(self, timespan: str, members: list[Bar]) -> int:
        if timespan in ("second", "minute", "hour") or not self.count_minutes_for_days:
            return len(members)
        return sum(b.parts for b in members)


# ----------------------------------------------------------------------------- catalogs


def _code(seed: int, length: int, alphabet: str) -> str:
    out = []
    for _ in range(length):
        seed, digit = divmod(seed, len(alphabet))
        out.append(alphabet[digit])
    return "".join(out)


def default_row(ticker: str, market: Market | None = None) -> dict[str, Any]:
    """A complete row for ``ticker`` with plausible values: a ``/v3/reference/tickers`` row,
    or for an option a ``/v3/reference/options/contracts`` row (:func:`contract_row`)."""
    market = market or market_of(ticker)
    if market == "options":
        return contract_row(ticker)
    seed = profile(ticker).seed
    row: dict[str, Any] = {
        "ticker": ticker,
        "name": f"{ticker} Synthetic",
        "market": market,
        "locale": "us",
        "active": True,
        "last_updated_utc": "2026-01-02T00:00:00Z",
    }
    if market == "stocks":
        row |= {
            "primary_exchange": ("XNAS", "XNYS")[seed % 2],
            "type": "CS",
            "currency_name": "usd",
            "cik": f"{seed % 2_000_000:010d}",
            "composite_figi": "BBG" + _code(seed, 9, "0123456789BCDFGHJKLMNPQRSTVWXYZ"),
            "share_class_figi": "BBG" + _code(seed >> 20, 9, "0123456789BCDFGHJKLMNPQRSTVWXYZ"),
        }
    elif market in ("crypto", "fx"):
        sym = ticker[2:]
        base, quote = (sym[:-3], sym[-3:])
        row |= {
            "locale": "global",
            "currency_symbol": quote,
            "currency_name": quote,
            "base_currency_symbol": base,
            "base_currency_name": base,
            "name": f"{base} - {quote}",
        }
    elif market == "indices":
        row |= {"type": "INDEX", "source_feed": "CBOE"}
    return row


#: Exchanges (MIC) named as an option contract's ``primary_exchange``; ``None``: left out.
OPTION_EXCHANGES: tuple[str | None, ...] = (
    "BATO", "XCBO", "XPHO", "XISX", "ARCO", "BATO", "XCBO", "BATO",
    "XPHO", "BATO", "XCBO", "BATO", "AMXO", "BATO", "XCBO", None,
)  # fmt: skip
_OCC = re.compile(r"O:([A-Z0-9.]+)(\d{2})(\d{2})(\d{2})([CP])(\d{8})")


def occ_ticker(root: str, expiry: date, kind: str, strike_milli: int) -> str:
    """The Polygon spelling of an OCC option symbol: ``O:SPY261218C00600000``."""
    return f"O:{root}{expiry:%y%m%d}{kind}{strike_milli:08d}"


def contract_row(ticker: str) -> dict[str, Any]:
    """The ``/v3/reference/options/contracts`` row of an OCC option ticker (``O:...``).

    Fields as Polygon sends them, in its (alphabetical) order: ``cfi``, ``contract_type``
    (``call``/``put``), ``exercise_style``, ``expiration_date`` (``YYYY-MM-DD``),
    ``primary_exchange`` (left out for about one contract in 16), ``shares_per_contract``,
    ``strike_price`` (an integer when whole), ``ticker``, ``underlying_ticker``.
    """
    match = _OCC.fullmatch(ticker)
    if match is None:
        raise ValueError(f"not an OCC option ticker: {ticker!r}")
    root, yy, mm, dd, kind, strike = match.groups()
    return _contract(
        ticker, root, date(2000 + int(yy), int(mm), int(dd)).isoformat(), kind, int(strike)
    )


def _contract(ticker: str, root: str, expiry: str, kind: str, strike_milli: int) -> dict[str, Any]:
    whole, milli = divmod(strike_milli, 1000)
    row: dict[str, Any] = {
        "cfi": f"O{kind}ASPS",  # option, call/put, American, stock underlying, physical, standard
        "contract_type": "call" if kind == "C" else "put",
        "exercise_style": "american",
        "expiration_date": expiry,
        "primary_exchange": OPTION_EXCHANGES[zlib.crc32(ticker.encode()) % 16],
        "shares_per_contract": 100,
        "strike_price": strike_milli / 1000 if milli else whole,
        "ticker": ticker,
        "underlying_ticker": root,
    }
    if row["primary_exchange"] is None:
        del row["primary_exchange"]
    return row


STOCK_ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("AAPL", "Apple Inc.", "XNAS", "CS"), ("AMD", "Advanced Micro Devices", "XNAS", "CS"),
    ("AMZN", "Amazon.com, Inc.", "XNAS", "CS"), ("GOOGL", "Alphabet Inc. Class A", "XNAS", "CS"),
    ("IWM", "iShares Russell 2000 ETF", "ARCX", "ETF"), ("JPM", "JPMorgan Chase", "XNYS", "CS"),
    ("KO", "Coca-Cola Company", "XNYS", "CS"), ("META", "Meta Platforms, Inc.", "XNAS", "CS"),
    ("MSFT", "Microsoft Corp", "XNAS", "CS"), ("NVDA", "Nvidia Corp", "XNAS", "CS"),
    ("QQQ", "Invesco QQQ Trust", "XNAS", "ETF"), ("SPY", "SPDR S&P 500 ETF Trust", "ARCX", "ETF"),
    ("TSLA", "Tesla, Inc.", "XNAS", "CS"), ("TWTR", "Twitter, Inc.", "XNYS", "CS"),
    ("XOM", "Exxon Mobil Corp", "XNYS", "CS"),
)  # fmt: skip
DEFAULT_TICKERS: dict[Market, list[str | dict[str, Any]]] = {
    "stocks": [
        {"ticker": t, "name": n, "primary_exchange": x, "type": k, "active": t != "TWTR"}
        for t, n, x, k in STOCK_ROWS
    ],
    "crypto": ["X:BTCUSD", "X:DOGEUSD", "X:ETHUSD", "X:LTCUSD", "X:SOLUSD", "X:XRPUSD"],
    "fx": ["C:AUDUSD", "C:EURUSD", "C:GBPUSD", "C:USDCAD", "C:USDCHF", "C:USDJPY"],
    "indices": [
        {"ticker": "I:DJI", "name": "Dow Jones Industrial Average"},
        {"ticker": "I:NDX", "name": "Nasdaq-100"},
        {"ticker": "I:RUT", "name": "Russell 2000"},
        {"ticker": "I:SPX", "name": "Standard & Poor's 500"},
        {"ticker": "I:VIX", "name": "CBOE Volatility Index"},
    ],
}
OPTION_ROOTS = ("AAPL", "AMD", "AMZN", "GOOGL", "IWM", "META", "MSFT", "NVDA", "QQQ", "SPY", "TSLA")


class Catalog:
    """A sorted ticker universe of one market; rows are built on demand by index."""

    def __init__(
        self,
        market: Market,
        size: int,
        ticker_at: Callable[[int], str],
        row_at: Callable[[int], dict[str, Any]],
    ) -> None:
        self.market, self.size = market, size
        self.ticker_at, self.row_at = ticker_at, row_at

    @classmethod
    def from_rows(cls, market: Market, rows: Iterable[str | Mapping[str, Any]]) -> Catalog:
        """A catalog of explicit rows: ticker strings or partial row dicts completed by
        :func:`default_row` (a ``None`` value leaves that field out)."""
        full = [
            default_row(r, market)
            if isinstance(r, str)
            else {
                k: v
                for k, v in (default_row(str(r["ticker"]), market) | dict(r)).items()
                if v is not None
            }
            for r in rows
        ]
        full.sort(key=lambda r: str(r["ticker"]))
        return cls(market, len(full), lambda i: str(full[i]["ticker"]), lambda i: full[i])

    @classmethod
    def synthetic_stocks(cls, count: int) -> Catalog:
        """``count`` generated five-letter stock tickers, ``AAAAA``, ``AAAAB``, ..."""

        def ticker_at(i: int) -> str:
            return _code(i, 5, "ABCDEFGHIJKLMNOPQRSTUVWXYZ")[::-1]

        return cls("stocks", count, ticker_at, lambda i: default_row(ticker_at(i), "stocks"))

    @classmethod
    def option_chain(
        cls, count: int, first_day: date, roots: Sequence[str] = OPTION_ROOTS
    ) -> Catalog:
        """``count`` option contracts over ``roots``: 12 monthly expiries (third Fridays), the
        first on or after ``first_day``; per expiry calls then puts, strikes from half the
        root's price upward. Rows (``/v3/reference/options/contracts``) are built on demand."""
        roots = sorted(roots)
        per_root = max(1, -(-count // len(roots)))
        strikes = max(1, -(-per_root // 24))
        expiries = [_expiry(first_day, i).isoformat() for i in range(12)]
        codes = [f"{_expiry(first_day, i):%y%m%d}" for i in range(12)]

        def parts(i: int) -> tuple[str, int, str, int]:
            root, j = divmod(i, per_root)
            expiry, rest = divmod(j, 2 * strikes)
            kind, strike = divmod(rest, strikes)
            return roots[root], expiry, "CP"[kind], _strike(roots[root], strike)

        def ticker_at(i: int) -> str:
            root, expiry, kind, strike = parts(i)
            return f"O:{root}{codes[expiry]}{kind}{strike:08d}"

        def row_at(i: int) -> dict[str, Any]:
            root, expiry, kind, strike = parts(i)
            ticker = f"O:{root}{codes[expiry]}{kind}{strike:08d}"
            return _contract(ticker, root, expiries[expiry], kind, strike)

        return cls("options", count, ticker_at, row_at)

    def tickers(self) -> _TickerView:
        """A sequence view of the sorted tickers (for bisect)."""
        return _TickerView(self)

    def index_of(self, ticker: str) -> int | None:
        """Position of ``ticker``, or ``None`` when absent."""
        i = bisect.bisect_left(self.tickers(), ticker)
        return i if i < self.size and self.ticker_at(i) == ticker else None

    def rows_after(
        self,
        after: str | None,
        descending: bool,
        low: str | None = None,
        high: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Rows strictly after ``after`` in the requested order (keyset paging), optionally
        only those whose ticker lies in ``[low, high)``."""
        view = self.tickers()
        first = 0 if low is None else bisect.bisect_left(view, low)
        end = self.size if high is None else bisect.bisect_left(view, high)
        if descending:
            stop = end if after is None else min(end, bisect.bisect_left(view, after))
            return (self.row_at(i) for i in range(stop - 1, first - 1, -1))
        start = first if after is None else max(first, bisect.bisect_right(view, after))
        return (self.row_at(i) for i in range(start, end))


class _TickerView(Sequence[str]):
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def __len__(self) -> int:
        return self._catalog.size

    def __getitem__(self, i: Any) -> Any:
        return self._catalog.ticker_at(i)


def _third_friday(year: int, month: int) -> date:
    first = date(year, month, 1)
    return first + timedelta(days=(4 - first.weekday()) % 7 + 14)


def _expiry(first_day: date, index: int) -> date:
    """The ``index``-th monthly expiry (third Friday) on or after ``first_day``."""
    months = first_day.year * 12 + first_day.month - 1
    if _third_friday(first_day.year, first_day.month) < first_day:
        months += 1
    months += index
    return _third_friday(months // 12, months % 12 + 1)


def _strike(root: str, index: int) -> int:
    """Strike in thousandths: from half the root's price upward in steps of 0.5, 1 or 5."""
    price = profile(root).base
    step = 500 if price < 100 else 1000 if price < 400 else 5000
    return (int(price * 500) // step) * step + index * step


def merged_rows(
    catalogs: Iterable[Catalog],
    after: str | None,
    descending: bool,
    low: str | None = None,
    high: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Rows of several catalogs merged in ticker order, strictly after ``after`` (and with
    tickers in ``[low, high)`` when given)."""
    streams = [c.rows_after(after, descending, low, high) for c in catalogs]
    return heapq.merge(*streams, key=lambda r: str(r["ticker"]), reverse=descending)
