"""Deterministic market data for the fake Binance exchange.

Every price is a pure function of ``(symbol, time)``:

* A *minute* bar is computed in O(1) from integer hashes (multi-octave value noise for the
  price path, hashed wicks, volumes and trade counts). No iteration from the listing time.
* A *second* bar is derived from its minute so that the 60 seconds aggregate back to the
  minute exactly (a piecewise-linear path through open, high, low and close; integer splits
  of volumes and trade counts).
* Every coarser interval is the exact aggregation of the minutes it covers (first open, max
  high, min low, last close, sums of volumes and trade counts). Hourly aggregates are cached
  per UTC day, so a page of 1000 hourly or daily bars is cheap.

All arithmetic is done on ``int64``/``uint64`` numpy arrays (prices in ticks, volumes in lot
steps, quote volumes in units of 1e-8), so the results are bit-exact whichever path computes
them and the string prices can be compared exactly.

The still-forming bar "as of now" aggregates complete hours, complete minutes and then the
seconds of the current minute up to and including the current second, so a live bar equals
the REST kline for the same open time once it has closed.
"""

from __future__ import annotations

import calendar
import functools
import hashlib
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_LISTED_AT",
    "DEFAULT_SYMBOLS",
    "INTERVALS",
    "Bar",
    "Interval",
    "KlineQueryError",
    "MarketData",
    "SymbolSpec",
    "format_units",
]

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

SECOND_MS = 1_000
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
#: 1970-01-05 00:00 UTC, the first Monday after the epoch: weekly klines align to it.
MONDAY_OFFSET_MS = 4 * DAY_MS

#: 2024-01-01 00:00:00 UTC, the default listing time.
DEFAULT_LISTED_AT = 1_704_067_200_000

UNITS = 10**8  # strings carry 8 decimals
PRICE_SCALE = 10**7  # the price path is expressed in 1e-7 relative units
TRADE_ID_STRIDE = 100_000  # trade ids per minute; minute trade counts stay below it
SPLIT_WEIGHT = 256  # per-second weights are 1..SPLIT_WEIGHT
MAX_KLINES = 1000
DEFAULT_KLINES = 500

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1

# (period in minutes, amplitude in 1e-7 of the base price) of the value-noise octaves.
_OCTAVES: tuple[tuple[int, int], ...] = (
    (43_200 * 3, 2_000_000),
    (10_080, 800_000),
    (1_440, 300_000),
    (240, 120_000),
    (60, 50_000),
    (15, 25_000),
)
_JITTER = 8_000  # per-minute noise amplitude (1e-7)
_WICK = 40_000  # max wick length (1e-7 of the price)


def format_units(value: int) -> str:
    """Format an integer count of 1e-8 units as Binance does: ``"84210.50000000"``."""
    sign = "-" if value < 0 else ""
    value = abs(value)
    return f"{sign}{value // UNITS}.{value % UNITS:08d}"


def _units(text: str) -> int:
    """A decimal string as an integer count of 1e-8 units (must be exact)."""
    scaled = Decimal(text) * UNITS
    if scaled != scaled.to_integral_value() or scaled <= 0:
        raise ValueError(f"{text!r} is not a positive multiple of 1e-8")
    return int(scaled)


def _pow10_exponent(units: int) -> int:
    """Exponent e with ``units == 10**e``; raises for anything but a power of ten."""
    exponent = len(str(units)) - 1
    if 10**exponent != units:
        raise ValueError(f"tick and step sizes must be powers of ten, got {units} units")
    return exponent


@functools.cache
def _seed(*parts: object) -> np.uint64:
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little") & _MASK64)


def _mix(x: U64) -> U64:
    """splitmix64 finaliser, vectorised (uint64 arrays wrap silently)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _hash(seed: np.uint64, keys: I64) -> U64:
    return _mix(np.asarray(keys, dtype=np.int64).astype(np.uint64) * _GOLDEN ^ seed)


def _uniform(seed: np.uint64, keys: I64, low: int, high: int) -> I64:
    """Integers in ``[low, high]`` from hashed keys."""
    span = np.uint64(high - low + 1)
    return (_hash(seed, keys) % span).astype(np.int64) + low


# --------------------------------------------------------------------------------------
# intervals


@dataclass(frozen=True)
class Interval:
    """A Binance kline interval and its bucket arithmetic (UTC)."""

    name: str
    ms: int | None  # None for the calendar month
    offset_ms: int = 0

    def index(self, t: int) -> int:
        """Index of the bucket containing ``t`` (ms)."""
        if self.ms is None:
            dt = datetime.fromtimestamp(t // 1000, UTC)
            return dt.year * 12 + dt.month - 1
        return (t - self.offset_ms) // self.ms

    def start(self, index: int) -> int:
        """Open time (ms) of bucket ``index``."""
        if self.ms is None:
            return calendar.timegm((index // 12, index % 12 + 1, 1, 0, 0, 0)) * 1000
        return index * self.ms + self.offset_ms

    def open_time(self, t: int) -> int:
        """Open time of the bucket containing ``t``."""
        return self.start(self.index(t))

    def ceil_index(self, t: int) -> int:
        """Index of the first bucket opening at or after ``t``."""
        i = self.index(t)
        return i if self.start(i) == t else i + 1


INTERVALS: dict[str, Interval] = {
    iv.name: iv
    for iv in (
        Interval("1s", SECOND_MS),
        Interval("1m", MINUTE_MS),
        Interval("3m", 3 * MINUTE_MS),
        Interval("5m", 5 * MINUTE_MS),
        Interval("15m", 15 * MINUTE_MS),
        Interval("30m", 30 * MINUTE_MS),
        Interval("1h", HOUR_MS),
        Interval("2h", 2 * HOUR_MS),
        Interval("4h", 4 * HOUR_MS),
        Interval("6h", 6 * HOUR_MS),
        Interval("8h", 8 * HOUR_MS),
        Interval("12h", 12 * HOUR_MS),
        Interval("1d", DAY_MS),
        Interval("3d", 3 * DAY_MS),
        Interval("1w", WEEK_MS, MONDAY_OFFSET_MS),
        Interval("1M", None),
    )
}


# --------------------------------------------------------------------------------------
# symbols


@dataclass(frozen=True)
class SymbolSpec:
    """One listed symbol. Decimal fields are strings, like exchangeInfo's."""

    symbol: str
    base_asset: str
    quote_asset: str
    base_price: str
    tick_size: str = "0.01000000"
    step_size: str = "0.00001000"
    minute_volume: str = "2"  # typical base volume per minute
    minute_trades: int = 400  # typical trades per minute
    listed_at: int = DEFAULT_LISTED_AT  # floored to the hour
    status: str = "TRADING"
    base_precision: int = 8
    quote_precision: int = 8
    # derived
    tick_units: int = field(init=False, repr=False)
    step_units: int = field(init=False, repr=False)
    base_ticks: int = field(init=False, repr=False)
    volume_steps: int = field(init=False, repr=False)
    seed: np.uint64 = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.symbol.isalnum() or self.symbol.upper() != self.symbol:
            raise ValueError(f"symbol must be upper-case alphanumeric: {self.symbol!r}")
        tick, step = _units(self.tick_size), _units(self.step_size)
        _pow10_exponent(tick)
        _pow10_exponent(step)
        base_ticks = _units(self.base_price) // tick
        volume_steps = max(_units(self.minute_volume) // step, 60)
        if base_ticks < 100:
            raise ValueError(f"{self.symbol}: base_price must be at least 100 ticks")
        if not 60 <= self.minute_trades < TRADE_ID_STRIDE // 3:
            raise ValueError(f"{self.symbol}: minute_trades out of range")
        # quote volume per minute (1e-8 units) times the split weights must fit int64
        max_quote = (2 * volume_steps + 60) * base_ticks * 2 * tick * step // UNITS + 1
        if max_quote * max(60 * SPLIT_WEIGHT, 44_640) >= 2**62:
            raise ValueError(f"{self.symbol}: volume too large for exact int64 sums")
        object.__setattr__(self, "tick_units", tick)
        object.__setattr__(self, "step_units", step)
        object.__setattr__(self, "base_ticks", base_ticks)
        object.__setattr__(self, "volume_steps", volume_steps)
        object.__setattr__(self, "listed_at", self.listed_at - self.listed_at % HOUR_MS)
        object.__setattr__(self, "seed", _seed("candlewire-fake-binance", self.symbol))

    def exchange_info(self) -> dict[str, Any]:
        """This symbol's entry in ``GET /api/v3/exchangeInfo``."""
        order_types = ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"]
        return {
            "symbol": self.symbol,
            "status": self.status,
            "baseAsset": self.base_asset,
            "baseAssetPrecision": self.base_precision,
            "quoteAsset": self.quote_asset,
            "quotePrecision": self.quote_precision,
            "quoteAssetPrecision": self.quote_precision,
            "baseCommissionPrecision": self.base_precision,
            "quoteCommissionPrecision": self.quote_precision,
            "orderTypes": order_types,
            "icebergAllowed": True,
            "ocoAllowed": True,
            "otoAllowed": True,
            "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": True,
            "cancelReplaceAllowed": True,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": format_units(self.tick_units),
                    "maxPrice": format_units(1_000_000 * UNITS),
                    "tickSize": format_units(self.tick_units),
                },
                {
                    "filterType": "LOT_SIZE",
                    "minQty": format_units(self.step_units),
                    "maxQty": format_units(9_000 * UNITS),
                    "stepSize": format_units(self.step_units),
                },
                {"filterType": "ICEBERG_PARTS", "limit": 10},
                {
                    "filterType": "MARKET_LOT_SIZE",
                    "minQty": "0.00000000",
                    "maxQty": format_units(100 * UNITS),
                    "stepSize": "0.00000000",
                },
                {
                    "filterType": "TRAILING_DELTA",
                    "minTrailingAboveDelta": 10,
                    "maxTrailingAboveDelta": 2000,
                    "minTrailingBelowDelta": 10,
                    "maxTrailingBelowDelta": 2000,
                },
                {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
                {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
            ],
            "permissions": [],
            "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
        }


DEFAULT_SYMBOLS: tuple[SymbolSpec, ...] = (
    SymbolSpec("BTCUSDT", "BTC", "USDT", "60000", minute_volume="2", minute_trades=1500),
    SymbolSpec(
        "ETHUSDT", "ETH", "USDT", "3000", step_size="0.0001", minute_volume="20", minute_trades=900
    ),
    SymbolSpec(
        "ETHBTC",
        "ETH",
        "BTC",
        "0.05",
        tick_size="0.00001",
        step_size="0.0001",
        minute_volume="5",
        minute_trades=120,
    ),
    SymbolSpec(
        "BNBUSDT", "BNB", "USDT", "400", step_size="0.001", minute_volume="30", minute_trades=300
    ),
    SymbolSpec(
        "LUNAUSDT",
        "LUNA",
        "USDT",
        "80",
        step_size="0.01",
        minute_volume="100",
        minute_trades=100,
        status="BREAK",
    ),
)


# --------------------------------------------------------------------------------------
# bars


@dataclass
class Bar:
    """Aggregated bars as parallel int64 arrays (prices in ticks, volume in steps)."""

    open: I64
    high: I64
    low: I64
    close: I64
    volume: I64  # lot steps
    quote: I64  # 1e-8 units of the quote asset
    trades: I64
    taker_base: I64  # lot steps
    taker_quote: I64  # 1e-8 units
    first_id: I64
    last_id: I64

    def __len__(self) -> int:
        return len(self.open)

    def slice(self, start: int, stop: int) -> Bar:
        return Bar(*(a[start:stop] for a in self._arrays()))

    def _arrays(self) -> tuple[I64, ...]:
        return (
            self.open,
            self.high,
            self.low,
            self.close,
            self.volume,
            self.quote,
            self.trades,
            self.taker_base,
            self.taker_quote,
            self.first_id,
            self.last_id,
        )

    @staticmethod
    def concat(parts: list[Bar]) -> Bar:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Bar.empty()
        if len(parts) == 1:
            return parts[0]
        columns = zip(*(p._arrays() for p in parts), strict=True)
        return Bar(*(np.concatenate(col) for col in columns))

    @staticmethod
    def empty() -> Bar:
        z = np.zeros(0, dtype=np.int64)
        return Bar(z, z, z, z, z, z, z, z, z, z, z)

    def reduce(self, starts: I64) -> Bar:
        """Aggregate consecutive segments beginning at ``starts`` (strictly increasing)."""
        ends = np.append(starts[1:], len(self)) - 1
        return Bar(
            self.open[starts],
            np.maximum.reduceat(self.high, starts),
            np.minimum.reduceat(self.low, starts),
            self.close[ends],
            np.add.reduceat(self.volume, starts),
            np.add.reduceat(self.quote, starts),
            np.add.reduceat(self.trades, starts),
            np.add.reduceat(self.taker_base, starts),
            np.add.reduceat(self.taker_quote, starts),
            self.first_id[starts],
            self.last_id[ends],
        )

    def total(self) -> Bar:
        """The whole array aggregated into one bar."""
        return self.reduce(np.zeros(1, dtype=np.int64))


def _split(total: I64, cum_weights: I64) -> I64:
    """Split ``total[i]`` into 60 integer parts by cumulative weights; parts sum exactly."""
    cum = (total[:, None] * cum_weights) // cum_weights[:, -1:]
    return np.diff(cum, axis=1, prepend=0)


# --------------------------------------------------------------------------------------
# the generator


class KlineQueryError(ValueError):
    """A klines request Binance would reject (HTTP 400 with a code and message)."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


class MarketData:
    """Deterministic klines for a set of symbols (thread-safe; pure apart from a cache)."""

    def __init__(self, symbols: tuple[SymbolSpec, ...] | list[SymbolSpec] = DEFAULT_SYMBOLS):
        self.symbols: dict[str, SymbolSpec] = {}
        for spec in symbols:
            if spec.symbol in self.symbols:
                raise ValueError(f"duplicate symbol {spec.symbol}")
            self.symbols[spec.symbol] = spec
        self._day_cache: dict[tuple[str, int], Bar] = {}
        self._lock = threading.Lock()

    # ---- primitive bars ---------------------------------------------------------------

    def _price_ticks(self, spec: SymbolSpec, minutes: I64) -> I64:
        """The price at the *start* of each minute, in ticks."""
        x = np.zeros(len(minutes), dtype=np.int64)
        for octave, (period, amplitude) in enumerate(_OCTAVES):
            seed = spec.seed ^ _seed("octave", octave)
            knot, frac = np.divmod(minutes, period)
            v0 = _uniform(seed, knot, -amplitude, amplitude)
            v1 = _uniform(seed, knot + 1, -amplitude, amplitude)
            x += (v0 * (period - frac) + v1 * frac) // period
        x += _uniform(spec.seed ^ _seed("jitter"), minutes, -_JITTER, _JITTER)
        return np.maximum(spec.base_ticks * (PRICE_SCALE + x) // PRICE_SCALE, 1)

    def minute_bars(self, symbol: str, first_minute: int, count: int) -> Bar:
        """``count`` one-minute bars from minute index ``first_minute`` (= open ms // 60000).

        Listing is not checked here: this is the raw deterministic function.
        """
        spec = self.symbols[symbol]
        minutes = np.arange(first_minute, first_minute + count, dtype=np.int64)
        path = self._price_ticks(
            spec, np.arange(first_minute, first_minute + count + 1, dtype=np.int64)
        )
        o, c = path[:-1], path[1:]
        s = spec.seed
        up = (
            o
            * (
                _uniform(s ^ _seed("up1"), minutes, 0, 999)
                * _uniform(s ^ _seed("up2"), minutes, 0, _WICK)
            )
            // (1000 * PRICE_SCALE)
        )
        dn = (
            o
            * (
                _uniform(s ^ _seed("dn1"), minutes, 0, 999)
                * _uniform(s ^ _seed("dn2"), minutes, 0, _WICK)
            )
            // (1000 * PRICE_SCALE)
        )
        h = np.maximum(o, c) + up
        lo = np.maximum(np.minimum(o, c) - dn, 1)
        vol = _uniform(s ^ _seed("vol"), minutes, 60, 2 * spec.volume_steps + 60)
        trades = _uniform(s ^ _seed("trades"), minutes, 60, 2 * spec.minute_trades + 60)
        ratio = _uniform(s ^ _seed("taker"), minutes, 300, 700)
        quote = self._quote_units(spec, vol * c)
        taker_base = (vol - 60) * ratio // 1000
        taker_quote = quote * ratio // 1000
        first_id = (minutes - spec.listed_at // MINUTE_MS) * TRADE_ID_STRIDE
        return Bar(
            o,
            h,
            lo,
            c,
            vol,
            quote,
            trades,
            taker_base,
            taker_quote,
            first_id,
            first_id + trades - 1,
        )

    @staticmethod
    def _quote_units(spec: SymbolSpec, steps_times_ticks: I64) -> I64:
        exponent = _pow10_exponent(spec.tick_units * spec.step_units) - 8
        factor: int = 10 ** abs(exponent)
        if exponent >= 0:
            return steps_times_ticks * factor
        return steps_times_ticks // factor

    def second_bars(self, symbol: str, first_minute: int, count: int) -> Bar:
        """The one-second bars of ``count`` minutes (``60 * count`` bars, chronological)."""
        spec = self.symbols[symbol]
        m = self.minute_bars(symbol, first_minute, count)
        minutes = np.arange(first_minute, first_minute + count, dtype=np.int64)
        s = spec.seed
        # knots of a piecewise-linear path: (0, open) (s1, x) (s2, y) (60, close)
        s1 = _uniform(s ^ _seed("s1"), minutes, 1, 58)
        s2 = (
            s1
            + 1
            + (_hash(s ^ _seed("s2"), minutes) % (59 - s1).astype(np.uint64)).astype(np.int64)
        )
        high_first = (_hash(s ^ _seed("order"), minutes) & np.uint64(1)).astype(bool)
        x = np.where(high_first, m.high, m.low)
        y = np.where(high_first, m.low, m.high)
        j = np.arange(61, dtype=np.int64)[None, :]
        s1c, s2c = s1[:, None], s2[:, None]
        o, xc, yc, c = m.open[:, None], x[:, None], y[:, None], m.close[:, None]
        path = np.where(
            j <= s1c,
            o + (xc - o) * j // s1c,
            np.where(
                j <= s2c,
                xc + (yc - xc) * (j - s1c) // (s2c - s1c),
                yc + (c - yc) * (j - s2c) // (60 - s2c),
            ),
        )
        so, sc = path[:, :-1], path[:, 1:]
        keys = (minutes[:, None] * 60 + np.arange(60, dtype=np.int64)[None, :]).ravel()
        weights = _uniform(s ^ _seed("split"), keys, 1, SPLIT_WEIGHT).reshape(count, 60)
        cum = np.cumsum(weights, axis=1)
        vol = 1 + _split(m.volume - 60, cum)
        trades = 1 + _split(m.trades - 60, cum)
        taker_base = _split(m.taker_base, cum)
        quote = _split(m.quote, cum)
        taker_quote = _split(m.taker_quote, cum)
        first_id = m.first_id[:, None] + np.cumsum(trades, axis=1) - trades
        bars = Bar(
            so,
            np.maximum(so, sc),
            np.minimum(so, sc),
            sc,
            vol,
            quote,
            trades,
            taker_base,
            taker_quote,
            first_id,
            first_id + trades - 1,
        )
        return Bar(*(a.ravel() for a in bars._arrays()))

    def _fill_days(self, symbol: str, days: range) -> list[Bar]:
        """The hour bars of each day in ``days``, computing missing days in batches."""
        with self._lock:
            found = {d: self._day_cache.get((symbol, d)) for d in days}
        missing = [d for d, bar in found.items() if bar is None]
        batch = 32
        while missing:
            run = [missing[0]]
            while (
                len(run) < batch and len(missing) > len(run) and (missing[len(run)] == run[-1] + 1)
            ):
                run.append(missing[len(run)])
            del missing[: len(run)]
            minutes = self.minute_bars(symbol, run[0] * 1440, len(run) * 1440)
            hours = minutes.reduce(np.arange(0, len(run) * 1440, 60, dtype=np.int64))
            with self._lock:
                for i, d in enumerate(run):
                    found[d] = self._day_cache[(symbol, d)] = hours.slice(24 * i, 24 * i + 24)
        return [bar for bar in found.values() if bar is not None]

    def hour_bars(self, symbol: str, first_hour: int, count: int) -> Bar:
        """``count`` one-hour bars from hour index ``first_hour`` (cached per UTC day)."""
        if count <= 0:
            return Bar.empty()
        first_day, last_day = first_hour // 24, (first_hour + count - 1) // 24
        days = Bar.concat(self._fill_days(symbol, range(first_day, last_day + 1)))
        offset = first_hour - first_day * 24
        return days.slice(offset, offset + count)

    def range_bar(self, symbol: str, start: int, end: int) -> Bar:
        """One bar aggregating every second with open time in ``[start, end)``.

        ``start`` and ``end`` must be multiples of 1 s and ``start < end``.
        """
        parts: list[Bar] = []
        t = start
        while t < end:
            if t % HOUR_MS == 0 and end - t >= HOUR_MS:
                n = (end - t) // HOUR_MS
                parts.append(self.hour_bars(symbol, t // HOUR_MS, n).total())
                t += n * HOUR_MS
            elif t % MINUTE_MS == 0 and end - t >= MINUTE_MS:
                n = min((end - t) // MINUTE_MS, (HOUR_MS - t % HOUR_MS) // MINUTE_MS)
                parts.append(self.minute_bars(symbol, t // MINUTE_MS, n).total())
                t += n * MINUTE_MS
            else:
                minute = t // MINUTE_MS
                secs = self.second_bars(symbol, minute, 1)
                lo = (t - minute * MINUTE_MS) // SECOND_MS
                hi = min(60, (end - minute * MINUTE_MS) // SECOND_MS)
                parts.append(secs.slice(lo, hi).total())
                t = minute * MINUTE_MS + hi * SECOND_MS
        return Bar.concat(parts).total()

    # ---- klines -----------------------------------------------------------------------

    def spec(self, symbol: str) -> SymbolSpec:
        """The symbol's spec; unknown symbols raise ``KlineQueryError(-1121)``."""
        try:
            return self.symbols[symbol]
        except KeyError:
            raise KlineQueryError(-1121, "Invalid symbol.") from None

    def window(
        self,
        symbol: str,
        interval: str,
        start_time: int | None = None,
        end_time: int | None = None,
        limit: int = DEFAULT_KLINES,
        *,
        now: int,
    ) -> list[int]:
        """Open times selected by Binance's time-window rules (chronological)."""
        spec = self.spec(symbol)
        iv = INTERVALS.get(interval)
        if iv is None:
            raise KlineQueryError(-1120, "Invalid interval.")
        if not 1 <= limit <= MAX_KLINES:
            raise KlineQueryError(-1130, "Data sent for parameter 'limit' is not valid.")
        if start_time is not None and end_time is not None and start_time > end_time:
            raise KlineQueryError(-1023, "Start time is greater than end time.")
        if now < spec.listed_at:
            return []
        first = iv.index(spec.listed_at)
        last = iv.index(now)
        if end_time is not None:
            if end_time < spec.listed_at:
                return []
            last = min(last, iv.index(min(end_time, now)))
        if start_time is not None:
            if start_time > now:
                return []
            lo = max(first, iv.ceil_index(max(start_time, 0)))
            hi = min(last, lo + limit - 1)
        else:
            hi = last
            lo = max(first, hi - limit + 1)
        return [iv.start(i) for i in range(lo, hi + 1)]

    def klines(
        self,
        symbol: str,
        interval: str,
        start_time: int | None = None,
        end_time: int | None = None,
        limit: int = DEFAULT_KLINES,
        *,
        now: int,
    ) -> list[list[Any]]:
        """``GET /api/v3/klines`` rows, as Binance returns them, as of ``now`` (ms)."""
        opens = self.window(symbol, interval, start_time, end_time, limit, now=now)
        return self.rows(symbol, interval, opens, now=now)

    def rows(self, symbol: str, interval: str, opens: list[int], *, now: int) -> list[list[Any]]:
        """Kline rows for the given consecutive open times, as of ``now``."""
        spec = self.spec(symbol)
        closes, bars = self._bars(spec, INTERVALS[interval], opens, now)
        return self._format(spec, opens, closes, bars)

    def _bars(
        self, spec: SymbolSpec, iv: Interval, opens: list[int], now: int
    ) -> tuple[list[int], Bar]:
        """Close times (exclusive) and aggregates of consecutive buckets, as of ``now``."""
        if not opens:
            return [], Bar.empty()
        closes = [iv.start(iv.index(t) + 1) for t in opens]
        cutoff = now - now % SECOND_MS + SECOND_MS  # data up to and including this second
        n_closed = sum(1 for e in closes if e <= cutoff)
        parts = [self._closed_bars(spec, iv, opens[:n_closed], closes[:n_closed])]
        for t in opens[n_closed:]:
            if t >= cutoff or cutoff <= spec.listed_at:
                raise ValueError(f"kline {t} has not opened as of {now}")
            parts.append(self.range_bar(spec.symbol, max(t, spec.listed_at), cutoff))
        return closes, Bar.concat(parts)

    def _closed_bars(
        self, spec: SymbolSpec, iv: Interval, opens: list[int], closes: list[int]
    ) -> Bar:
        if not opens:
            return Bar.empty()
        starts = np.array([max(t, spec.listed_at) for t in opens], dtype=np.int64)
        end = closes[-1]
        if iv.name == "1s":
            first_minute = int(starts[0]) // MINUTE_MS
            n_minutes = (end - 1) // MINUTE_MS - first_minute + 1
            secs = self.second_bars(spec.symbol, first_minute, n_minutes)
            lo = (int(starts[0]) - first_minute * MINUTE_MS) // SECOND_MS
            return secs.slice(lo, lo + len(opens))
        if iv.ms is not None and iv.ms < HOUR_MS:
            unit = MINUTE_MS
            base = self.minute_bars(
                spec.symbol, int(starts[0]) // unit, (end - int(starts[0])) // unit
            )
        else:
            unit = HOUR_MS
            base = self.hour_bars(
                spec.symbol, int(starts[0]) // unit, (end - int(starts[0])) // unit
            )
        return base.reduce((starts - starts[0]) // unit)

    @staticmethod
    def _format(
        spec: SymbolSpec, opens: list[int], closes: list[int], bars: Bar
    ) -> list[list[Any]]:
        tick, step = spec.tick_units, spec.step_units
        rows: list[list[Any]] = []
        for i, t in enumerate(opens):
            rows.append(
                [
                    t,
                    format_units(int(bars.open[i]) * tick),
                    format_units(int(bars.high[i]) * tick),
                    format_units(int(bars.low[i]) * tick),
                    format_units(int(bars.close[i]) * tick),
                    format_units(int(bars.volume[i]) * step),
                    closes[i] - 1,
                    format_units(int(bars.quote[i])),
                    int(bars.trades[i]),
                    format_units(int(bars.taker_base[i]) * step),
                    format_units(int(bars.taker_quote[i])),
                    "0",
                ]
            )
        return rows

    def kline_event(
        self, symbol: str, interval: str, open_time: int, *, now: int, event_time: int | None = None
    ) -> dict[str, Any]:
        """A ``<symbol>@kline_<interval>`` stream payload for the bar opening at
        ``open_time``, as of ``now`` (``x`` is true once the bar has closed)."""
        spec = self.spec(symbol)
        closes, bars = self._bars(spec, INTERVALS[interval], [open_time], now)
        (t, o, h, lo, c, v, close_time, q, n, tb, tq, _) = self._format(
            spec, [open_time], closes, bars
        )[0]
        return {
            "e": "kline",
            "E": now if event_time is None else event_time,
            "s": symbol,
            "k": {
                "t": t,
                "T": close_time,
                "s": symbol,
                "i": interval,
                "f": int(bars.first_id[0]),
                "L": int(bars.last_id[0]),
                "o": o,
                "c": c,
                "h": h,
                "l": lo,
                "v": v,
                "n": n,
                "x": closes[0] <= now,
                "q": q,
                "V": tb,
                "Q": tq,
                "B": "0",
            },
        }
