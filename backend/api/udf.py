"""TradingView UDF under ``/udf``: the HTTP datafeed of the Charting Library (DESIGN 5.3).

``config``, ``symbols``, ``search``, ``history`` and ``time``, answered from the same symbol
database and bar cache as ``/websocket/`` (``quotes``: :mod:`backend.api.udf_quotes`). The
adapter never looks at HTTP status codes, so every answer is a JSON body
(``{"s": "error", "errmsg": ...}`` for errors, with status 200).

- Symbols are ``SOURCE:NAME`` (our ``ticker`` and ``full_name``), ``EXCHANGE:NAME`` with
  the ``exchange`` the symbol info names, or a bare name, resolved through the database
  (exact name, providers that are enabled first).
- Times are UTC seconds; ``to`` is exclusive and ``countback`` wins over ``from``. A ``to``
  near the wall clock, or up to the end of the bar that holds now (the library's first
  request), means "until now" as the symbol's provider sees it (:func:`until_now`).
- The forming bar is included, so the adapter's polling (``DataPulseProvider``) sees it
  move; daily and longer bars are stamped at 00:00 UTC of their trading day.
- ``no_data`` carries ``nextTime`` only when older data exists, in milliseconds: the unit of
  the documentation's response example and of ``HistoryMetadata.nextTime``, which the
  adapter fills with the value unchanged.
- ``history`` needs ``to`` and one of ``from`` / ``countback``; without them it is an error,
  never "everything".
- ``type`` is the instrument type (:func:`symbol_type`), and ``volume_precision`` the
  decimals the symbol's recent volumes use.

:func:`resolve_symbol` is shared with the OpenBB endpoints; a resolved symbol is checked as on
``/websocket/`` (:func:`backend.wire.requests.validate_series`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from backend.access.identity import current, current_client, may_read
from backend.errors import ProtocolError
from backend.model import intervals
from backend.model.bars import LINE, Bar, SeriesId
from backend.tasks import Tasks, start_owned
from backend.wire.requests import Limits, known, quote, validate_series

if TYPE_CHECKING:
    from backend.hub.hub import Hub

PREFIX = "/udf"
router = APIRouter(prefix=PREFIX, tags=["udf"])

# UDF resolution -> our interval. The short D/W/M spellings are those of older configs.
RESOLUTIONS: dict[str, str] = {
    "1": "1m",
    "3": "3m",
    "5": "5m",
    "15": "15m",
    "30": "30m",
    "60": "1h",
    "120": "2h",
    "240": "4h",
    "360": "6h",
    "480": "8h",
    "720": "12h",
    "1D": "1d",
    "D": "1d",
    "1W": "1w",
    "W": "1w",
    "1M": "1M",
    "M": "1M",
}
# Our interval -> the canonical UDF resolution.
UDF_RESOLUTION: dict[str, str] = {
    "1m": "1",
    "3m": "3",
    "5m": "5",
    "15m": "15",
    "30m": "30",
    "1h": "60",
    "2h": "120",
    "4h": "240",
    "6h": "360",
    "8h": "480",
    "12h": "720",
    "1d": "1D",
    "1w": "1W",
    "1M": "1M",
}
SUPPORTED_RESOLUTIONS = [UDF_RESOLUTION[i] for i in intervals.INTERVALS]
DAY_OR_LONGER = frozenset({"1d", "1w", "1M"})
SEARCH_LIMIT = 30  # /search without a limit
SEARCH_LIMIT_MAX = 100
DEFAULT_PRICESCALE = 10_000
MAX_PRICE_DECIMALS = 8
LOOKUP_LIMIT = 20
RECENT_BARS = 50  # bars read for pricescale and volume_precision
TYPE_SEARCH_DEPTH = 1000  # the symbol index's own cap
TYPE_SAMPLE = 200  # rows per source sampled for /config's symbols_types
# s: a history 'to' this close to the wall clock, or to the end of the bar that holds now
# (the library's first request asks that far), means "until now"
NOW_TOLERANCE = 60
# s: how long /symbols waits for the bars that set pricescale and volume_precision. The
# adapter's resolveSymbol comes before every getBars: a provider that is slow to answer
# history (or does not) must not keep the chart blank for HISTORY_TIMEOUT first.
SYMBOL_INFO_WAIT = 2.0
# The fetches behind pricescale that outlived their /symbols request: owned here until their
# history call ends (bounded by HISTORY_TIMEOUT; the planner answers a failure, never raises).
INFO_FETCHES: Tasks = set()
_DAY = 86_400


# ---------------------------------------------------------------- pure helpers


def to_interval(resolution: str) -> str | None:
    """Our interval for a UDF resolution string, or None if we do not serve it."""
    return RESOLUTIONS.get(resolution.strip())


def resolutions_of(details: dict[str, Any]) -> list[str]:
    """The UDF resolutions of a dataset row's intervals, in our interval order."""
    offered = set(details.get("intervals") or intervals.INTERVALS)
    return [UDF_RESOLUTION[i] for i in intervals.INTERVALS if i in offered]


def align_time(t: int, interval: str) -> int:
    """A bar's UDF time: daily and longer bars at 00:00 UTC of their trading day.

    Upstreams with their own calendar open daily bars at local midnight (New York: 04:00 or
    05:00 UTC); rounding to the nearest UTC midnight names the right day for any offset
    within 12 hours. Intraday bars keep their open time.
    """
    if interval not in DAY_OR_LONGER:
        return t
    return (t + _DAY // 2) // _DAY * _DAY


def until_now(to: int, wall: float, interval: str) -> bool:
    """Whether a history ``to`` means "until now": within :data:`NOW_TOLERANCE` of the wall
    clock, or ahead of it up to the end of the bar that holds now (the next hour, the next
    UTC midnight, the first of next month: a calendar month, not the nominal one), as the
    library's first request asks."""
    bar_end = intervals.next_open(int(wall), interval)
    return wall - NOW_TOLERANCE <= to <= max(wall, bar_end) + NOW_TOLERANCE


def history_body(bars: Iterable[Bar], interval: str, kind: str) -> dict[str, Any]:
    """The ``s: ok`` answer, column-wise and ascending; bars without a close are skipped."""
    rows = [bar for bar in bars if finite(bar[4])]
    body: dict[str, Any] = {
        "s": "ok",
        "t": [align_time(bar[0], interval) for bar in rows],
        "o": [_or(bar[1], bar[4]) for bar in rows],
        "h": [_or(bar[2], bar[4]) for bar in rows],
        "l": [_or(bar[3], bar[4]) for bar in rows],
        "c": [bar[4] for bar in rows],
    }
    if kind != LINE and any(finite(bar[5]) for bar in rows):
        body["v"] = [bar[5] if finite(bar[5]) else 0.0 for bar in rows]
    return body


def no_data(older: Bar | None, interval: str = "") -> dict[str, Any]:
    """``no_data``; ``nextTime`` (ms) names the newest older bar when there is one, at the
    time ``history`` gives that bar (:func:`align_time`)."""
    body: dict[str, Any] = {"s": "no_data"}
    if older is not None:
        body["nextTime"] = align_time(older[0], interval) * 1000
    return body


def error(message: str) -> dict[str, Any]:
    return {"s": "error", "errmsg": message}


def range_count(start: int, end: int, interval: str, limit: int) -> int:
    """How many bars ``[start, end)`` can hold, at least 1 and at most ``limit``."""
    if end <= start:
        return 1
    step = intervals.nominal_seconds(interval)
    return max(1, min(limit, math.ceil((end - start) / step) + 1))


def pricescale(price: float | None, prices: Iterable[float | None] = ()) -> int:
    """``10 ** decimals`` (protocols.md 3.2): the decimals ``prices`` (the closed bars' open,
    high, low and close) are written with, at least 2 (a few whole or one-decimal prices do
    not show that the instrument has none) and at most :data:`MAX_PRICE_DECIMALS` (102.595
    -> 1000, 4.5 -> 100); when they need more (computed prices) or there are none, about 6
    significant digits of ``price`` (the newest close), at least 2 decimals."""
    decimals = 2
    seen = False
    for value in prices:
        if value is None or not math.isfinite(value):
            continue
        used = decimals_of(value, MAX_PRICE_DECIMALS)
        if used is None:
            seen = False
            break
        seen = True
        decimals = max(decimals, used)
    if seen:
        return int(10**decimals)
    if price is None or not math.isfinite(price) or price == 0:
        return DEFAULT_PRICESCALE
    decimals = max(2, min(10, 4 - math.floor(math.log10(abs(price)))))
    return int(10**decimals)


def stated_pricescale(details: dict[str, Any]) -> int | None:
    """``10 ** decimals`` of the precision a dataset row states (``precision``, or the tick
    size's decimals that a Binance row gives as ``price_precision``), within 0 to 16; None
    when it states none (then the bars tell: :func:`pricescale`)."""
    for field in ("precision", "price_precision"):
        stated = details.get(field)
        if isinstance(stated, int) and not isinstance(stated, bool):
            return int(10 ** min(max(stated, 0), 16))
    return None


def decimals_of(value: float, most: int) -> int | None:
    """The decimals ``value`` is written with (``4.5`` -> 1, ``3e6`` -> 0), within float
    noise; ``None`` when more than ``most``."""
    tolerance = 1e-12 * max(1.0, abs(value))  # float noise of decimal fractions
    for decimals in range(most + 1):
        if abs(round(value, decimals) - value) <= tolerance:
            return decimals
    return None


# Category words of the dataset rows -> the Charting Library's instrument ``type``.
CATEGORY_TYPES: dict[str, str] = {
    "crypto": "crypto",
    "stock": "stock",
    "stocks": "stock",
    "equity": "stock",
    "equities": "stock",
    "fx": "forex",
    "forex": "forex",
    "index": "index",
    "indices": "index",
    "futures": "futures",
    "future": "futures",
    "options": "option",
    "option": "option",
    "bond": "bond",
    "bonds": "bond",
    "fund": "fund",
    "funds": "fund",
    "etf": "fund",
    "commodity": "commodity",
    "commodities": "commodity",
    "economic": "economic",
}
TYPE_NAMES: dict[str, str] = {
    "crypto": "Crypto",
    "stock": "Stock",
    "forex": "Forex",
    "index": "Index",
    "futures": "Futures",
    "option": "Option",
    "bond": "Bond",
    "fund": "Fund",
    "commodity": "Commodity",
    "economic": "Economic",
    "undefined": "Other",
}
UNDEFINED_TYPE = "undefined"
MAX_VOLUME_PRECISION = 8


def symbol_type(details: dict[str, Any]) -> str:
    """The UDF ``type``: the instrument type named by a category (``Crypto`` -> ``crypto``,
    ``Stocks`` -> ``stock``, ``FX`` -> ``forex``), ``economic`` for a line series (a
    dataset column such as a rate), else ``undefined``; never the source's name."""
    for category in details.get("categories") or []:
        found = CATEGORY_TYPES.get(str(category).strip().lower())
        if found is not None:
            return found
    return "economic" if details.get("type") == LINE else UNDEFINED_TYPE


def volume_precision(volumes: Iterable[float | None]) -> int:
    """Decimals the volumes need: 0 for whole numbers, at most 8."""
    precision = 0
    for volume in volumes:
        if volume is None or not math.isfinite(volume):
            continue
        used = decimals_of(volume, MAX_VOLUME_PRECISION)
        precision = max(precision, MAX_VOLUME_PRECISION if used is None else used)
    return precision


def full_name(details: dict[str, Any]) -> str:
    return f"{details['source']}:{details['name']}"


def symbol_info(details: dict[str, Any], recent: Sequence[Bar]) -> dict[str, Any]:
    """A LibrarySymbolInfo for one dataset row; its ``recent`` bars set ``pricescale`` and
    ``volume_precision``: the closed ones where there are (a forming bar's figures may be
    partial, as a replay's volume so far), else the newest."""
    price = recent[-1][4] if recent else None
    closed = recent[:-1] if len(recent) > 1 else recent
    offered = set(details.get("intervals") or intervals.INTERVALS)
    resolutions = resolutions_of(details)
    intraday = [UDF_RESOLUTION[i] for i in intervals.INTERVALS[:11] if i in offered]
    exchange = str(details.get("source_label") or details["source"])
    # False makes the library build weeks and months from daily bars: right unless the
    # symbol has none (a CSV of weekly or monthly rows), when it must ask for its own.
    calendar = [i for i in ("1w", "1M") if i in offered]
    weekly_and_monthly = len(calendar) == 2 or (bool(calendar) and "1d" not in offered)
    return {
        "name": details["name"],
        "ticker": full_name(details),
        "full_name": full_name(details),
        "description": str(details.get("name_label") or details["name"]),
        "type": symbol_type(details),
        "session": "24x7",
        "timezone": "Etc/UTC",
        "exchange": exchange,
        "listed_exchange": exchange,
        "format": "price",
        "pricescale": stated_pricescale(details)
        or pricescale(price, (v for bar in closed for v in bar[1:5])),
        "minmov": 1,
        "has_intraday": bool(intraday),
        "intraday_multipliers": intraday,
        "has_seconds": False,
        "has_daily": "1d" in offered,
        "daily_multipliers": ["1"] if "1d" in offered else [],
        "has_weekly_and_monthly": weekly_and_monthly,
        "weekly_multipliers": ["1"] if "1w" in offered else [],
        "monthly_multipliers": ["1"] if "1M" in offered else [],
        "has_empty_bars": False,
        "visible_plots_set": "c" if details.get("type") == LINE else "ohlcv",
        "volume_precision": volume_precision(bar[5] for bar in closed),
        "data_status": "streaming",
        "supported_resolutions": resolutions,
    }


def search_item(details: dict[str, Any]) -> dict[str, Any]:
    return {
        "symbol": details["name"],
        "full_name": full_name(details),
        "description": str(details.get("name_label") or details["name"]),
        "exchange": str(details.get("source_label") or details["source"]),
        "ticker": full_name(details),
        "type": symbol_type(details),
    }


def pick_exact(
    text: str, results: Sequence[dict[str, Any]], enabled: Iterable[str]
) -> dict[str, Any] | None:
    """The dataset row of the first search result named exactly ``text``.

    Case-sensitive matches beat case-insensitive ones; within each, rows of enabled
    providers come first, then the search order.
    """
    active = set(enabled)
    rows: list[dict[str, Any]] = [
        r["details"] for r in results if isinstance(r.get("details"), dict)
    ]
    folded = text.casefold()
    exact = [row for row in rows if row.get("name") == text]
    loose = [row for row in rows if str(row.get("name", "")).casefold() == folded]
    for matches in (exact, loose):
        matches.sort(key=lambda row: row.get("source") not in active)
        if matches:
            return matches[0]
    return None


def canonical_source(text: str, enabled: Iterable[str]) -> str:
    """An enabled provider key matching ``text`` case-insensitively, else ``text``."""
    folded = text.strip().casefold()
    for source in enabled:
        if source.casefold() == folded:
            return source
    return text.strip()


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _or(value: float | None, default: float | None) -> float | None:
    return value if finite(value) else default


# ---------------------------------------------------------------- hub-backed helpers


def hub_of(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def _enabled(hub: Hub) -> list[str]:
    return list(hub.supervisor.providers)


def json_response(body: Any, status: int = 200) -> Response:
    """JSON via orjson: non-finite floats become ``null`` instead of failing."""
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def resolve_symbol(hub: Hub, text: str) -> dict[str, Any] | None:
    """The dataset row for ``SOURCE:NAME``, ``EXCHANGE:NAME`` (the ``exchange`` a symbol
    info names, our ``source_label``) or a bare name (exact match, else the one match that
    differs only in case), or None."""
    text = text.strip()
    if not text:
        return None
    enabled = _enabled(hub)
    source, sep, name = text.partition(":")
    if sep and name:
        source = canonical_source(source, enabled)
        details: dict[str, Any] | None = await hub.symbols.details(source, name)
        if details is not None:
            return details
        results = await hub.symbols.search(name, LOOKUP_LIMIT)
        mine = [r for r in results if (r.get("details") or {}).get("source") == source]
        details = pick_exact(name, mine, enabled)
        if details is not None:
            return details
        # EXCHANGE:NAME with the exchange the symbol info names (``exchange``, our
        # ``source_label``): TradingView's own notation, "XNAS:AAPL" for polygon:AAPL.
        listed = [r for r in results if source and _label_of(r).casefold() == source.casefold()]
        details = pick_exact(name, listed, enabled)
        if details is not None:
            return details
    # A bare name; it may contain ':' itself (Polygon's "X:BTCUSD").
    results = await hub.symbols.search(text, LOOKUP_LIMIT)
    return pick_exact(text, results, enabled)


def _label_of(result: dict[str, Any]) -> str:
    """The ``source_label`` of a search result's dataset row ("" without one)."""
    details = result.get("details")
    return str(details.get("source_label") or "") if isinstance(details, dict) else ""


async def recent_bars(hub: Hub, details: dict[str, Any]) -> list[Bar]:
    """The symbol's newest bars (up to :data:`RECENT_BARS`): from the cache, else fetched
    from its daily (or coarsest) interval, waiting at most :data:`SYMBOL_INFO_WAIT` (then
    none: the defaults; the fetch goes on and fills the cache for the next time)."""
    source, name = str(details["source"]), str(details["name"])
    offered = [i for i in intervals.INTERVALS if i in (details.get("intervals") or ())]
    for interval in offered:
        series = hub.cache.peek(SeriesId(source, name, interval))
        if series is not None and series.bars:
            return list(series.bars[-RECENT_BARS:])
    if not offered or hub.supervisor.get(source) is None:
        return []
    key = SeriesId(source, name, "1d" if "1d" in offered else offered[-1])
    latest = hub.planner.latest(key, RECENT_BARS, hub.subs.has(key))
    fetch = start_owned(INFO_FETCHES, latest, f"udf symbol info {key}")
    try:
        async with asyncio.timeout(SYMBOL_INFO_WAIT):
            answer = await asyncio.shield(fetch)
    except TimeoutError:
        return []
    return list(answer.bars)


async def latest_close(hub: Hub, details: dict[str, Any]) -> float | None:
    """The newest close of the symbol (see :func:`recent_bars`)."""
    bars = await recent_bars(hub, details)
    return bars[-1][4] if bars else None


async def symbol_types(hub: Hub) -> list[dict[str, str]]:
    """``symbols_types`` of ``/config``: "All types" and each type the database holds,
    found from a sample of every enabled source and a search for each category word."""
    samples = [hub.symbols.search("", TYPE_SAMPLE, source) for source in _enabled(hub)]
    samples += [hub.symbols.search(word, 1) for word in CATEGORY_TYPES]
    found: dict[str, None] = {}
    for results in await asyncio.gather(*samples):
        for result in results:
            details = result.get("details")
            if isinstance(details, dict):
                found[symbol_type(details)] = None
    ordered = [t for t in TYPE_NAMES if t in found]
    return [{"name": "All types", "value": ""}] + [
        {"name": TYPE_NAMES[t], "value": t} for t in ordered
    ]


def int_param(request: Request, name: str, whole: bool = False) -> tuple[int | None, str | None]:
    """An optional integer query parameter: ``(value, None)`` or ``(None, problem)``. A
    fraction is cut to its integer part (UDF clients may send times with one), or with
    ``whole`` is a problem (a count, as ``/websocket/`` checks it: ``5.0`` is 5)."""
    raw = request.query_params.get(name)
    if raw is None or not raw.strip():
        return None, None
    try:
        number = float(raw)
    except ValueError:
        return None, f"{name!r} must be a number, not {quote(raw)}"
    if not math.isfinite(number):
        return None, f"{name!r} must be a finite number"
    if whole and not number.is_integer():
        return None, f"{name!r} must be an integer"
    return int(number), None


# ---------------------------------------------------------------- endpoints


@router.get("/config")
async def config(request: Request) -> Response:
    """DatafeedConfiguration: search on, group requests off, server time on; the
    exchanges are the enabled sources the caller may read (a token limited to some sources
    does not learn the others)."""
    exchanges = [{"value": "", "name": "All Exchanges", "desc": ""}]
    allowed = current.get().sources
    readable = [s for s in _enabled(hub_of(request)) if allowed is None or s in allowed]
    exchanges += [{"value": s, "name": s, "desc": s} for s in readable]
    return json_response(
        {
            "supported_resolutions": SUPPORTED_RESOLUTIONS,
            "supports_search": True,
            "supports_group_request": False,
            "supports_marks": False,
            "supports_timescale_marks": False,
            "supports_time": True,
            "exchanges": exchanges,
            "symbols_types": await symbol_types(hub_of(request)),
        }
    )


@router.get("/symbols")
async def symbols(request: Request, symbol: str = "") -> Response:
    """LibrarySymbolInfo for ``SOURCE:NAME`` or a bare name."""
    hub = hub_of(request)
    details = await resolve_symbol(hub, symbol)
    if details is None:
        return json_response(error(f"unknown symbol {quote(symbol)}"))
    if not may_read(SeriesId(str(details["source"]), str(details["name"]), "")):
        return json_response(error(f"no permission to read {full_name(details)}"))
    return json_response(symbol_info(details, await recent_bars(hub, details)))


@router.get("/search")
async def search(request: Request, query: str = "", type: str = "", exchange: str = "") -> Response:
    """Up to ``limit`` symbols (none, 0 or less: the default); the adapter upper-cases
    ``query``, so matching ignores case."""
    hub = hub_of(request)
    limit, problem = int_param(request, "limit")
    if problem is not None:
        return json_response(error(problem))
    limit = min(limit if limit is not None and limit > 0 else SEARCH_LIMIT, SEARCH_LIMIT_MAX)
    enabled = _enabled(hub)
    source = canonical_source(exchange, enabled) if exchange else None
    prefix, sep, rest = query.partition(":")
    listed_on = None  # TradingView's EXCHANGE:NAME ("XNAS:AAPL"), as for /symbols
    if sep and rest and canonical_source(prefix, enabled) in enabled:
        source, query = canonical_source(prefix, enabled), rest
    elif sep and rest and prefix.strip():
        listed_on = prefix.strip().casefold()
    # A type filter drops rows after the search, so it searches deeper.
    depth = TYPE_SEARCH_DEPTH if type else SEARCH_LIMIT_MAX
    results = await hub.search_symbols(query.strip(), depth, source)
    if not results and listed_on is not None:  # not a name with a colon (Polygon's X:BTCUSD)
        found = await hub.search_symbols(rest.strip(), depth, source)
        results = [r for r in found if _label_of(r).casefold() == listed_on]
    items = []
    for result in results:
        details = result.get("details")
        if not isinstance(details, dict):
            continue
        if type and symbol_type(details) != type.lower():
            continue
        items.append(search_item(details))
        if len(items) >= limit:
            break
    return json_response(items)


@router.get("/history")
async def history(request: Request, symbol: str = "", resolution: str = "") -> Response:
    """Bars with ``from <= t < to`` (or the ``countback`` bars before ``to``), ascending."""
    hub = hub_of(request)
    params = {name: int_param(request, name) for name in ("from", "to", "countback")}
    for _, problem in params.values():
        if problem is not None:
            return json_response(error(problem))
    start, to, countback = (params[name][0] for name in ("from", "to", "countback"))
    if countback is not None and countback <= 0:
        countback = None  # "no countback": 'from' must say where to start
    if to is None or (start is None and countback is None):
        return json_response(error("history needs 'to' and 'from' or 'countback'"))
    interval = to_interval(resolution)
    if interval is None:
        return json_response(error(f"unsupported resolution {quote(resolution)}"))
    details = await resolve_symbol(hub, symbol)
    if details is None:
        return json_response(error(f"unknown symbol {quote(symbol)}"))
    key = SeriesId(str(details["source"]), str(details["name"]), interval)
    limits = Limits(_enabled(hub), hub.settings.MAX_COUNT, may_read)
    try:
        await validate_series(key, None, limits, known(details))
    except ProtocolError as exc:
        return json_response(error(exc.message))
    end = to
    wall = time.time()
    started = False  # this poll started the key's watch
    if until_now(to, wall, interval):
        # "Until now" (the first request, and the adapter's polling with the browser's
        # clock): now as the key's provider sees it, which a replay (CSV) has far from the
        # wall clock; otherwise the chart would show bars of the replay's past, never moving.
        offset = hub.clocks.now(key.source, key.name) - int(wall)
        end += offset
        start = None if start is None else start + offset
        # The adapter polls so: the key is streamed and the polls read the live cache.
        if not hub.watches.renew(key):
            caller_limit = hub.subscription_limit() if hub.subscription_limit else None
            started = hub.watches.touch(key, current_client(), caller_limit)
    limit = hub.settings.MAX_COUNT
    since: int | None = None
    if countback is not None:
        count = min(countback, limit)
    else:
        since = max(0, start or 0)
        count = range_count(since, end, interval, limit)
    streaming = hub.subs.has(key)
    answer = await hub.planner.before(key, end - 1, count, streaming)
    if started and answer.error is not None:
        hub.watches.drop(key)  # refused (fair use) or failed: the poll keeps no stream
        if len(answer.bars) < count:
            # What it holds came from the stream this poll just started (its forming bar
            # can land before the refused fetch): a short history would pass for the whole
            # of it; the error says to ask again.
            return json_response(error(str(answer.error)))
    bars = [bar for bar in answer.bars if since is None or bar[0] >= since]
    if bars:
        return json_response(history_body(bars, interval, str(details.get("type"))))
    if answer.error is not None:
        return json_response(error(str(answer.error)))
    older: Bar | None = None
    if since:
        probe = await hub.planner.before(key, min(since, end) - 1, 1, streaming)
        older = probe.bars[-1] if probe.bars else None
    return json_response(no_data(older, interval))


@router.get("/time")
async def server_time() -> Response:
    """Unix seconds as a bare JSON number."""
    return json_response(int(time.time()))
