"""TradingView UDF ``/udf/quotes``: the quotes of the Trading Platform's watchlist, details
and order ticket (the adapter's ``getQuotes``, polled by its ``QuotesPulseProvider``).

``GET /udf/quotes?symbols=A,B`` answers ``{"s": "ok", "d": [...]}`` with one entry per symbol,
in the order asked, named ``n`` exactly as asked (the library matches quotes by that name):
``{"s": "ok", "n": ..., "v": {...}}``, or ``{"s": "error", "n": ..., "v": {}, "errmsg": ...}``
for a symbol that is unknown, not readable, or has no daily data. The values come from the
symbol's daily bars (:func:`quote_values`): the last price, the change and change percent
from the previous day's close (the percent over its absolute value, so that a value below
zero that falls has a negative one), the day's open, high, low and volume. A finer interval
of the symbol that is streaming gives a fresher last price than a daily bar nobody streams.
There is no order book, so neither ``bid`` nor ``ask``.

Daily bars come from the cache, else the provider's history through the planner (and its
fair-use budgets), waited for at most :data:`~backend.api.udf.SYMBOL_INFO_WAIT` per request;
a symbol whose bars did not come in time is an error entry this time and quoted next time.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from backend.access.identity import may_read
from backend.api.udf import (
    INFO_FETCHES,
    PREFIX,
    SYMBOL_INFO_WAIT,
    error,
    finite,
    full_name,
    hub_of,
    json_response,
    pricescale,
    resolve_symbol,
)
from backend.model import intervals
from backend.model.bars import Bar, SeriesId
from backend.tasks import start_owned
from backend.wire.requests import quote

if TYPE_CHECKING:
    from backend.history.planner import Answer
    from backend.hub.hub import Hub

router = APIRouter(prefix=PREFIX, tags=["udf"])

MAX_QUOTE_SYMBOLS = 100  # per request; a watchlist of more asks in several
DAYS = 2  # the forming day and the one before (its close is the reference)


def quote_values(
    details: dict[str, Any], days: list[Bar], live: Bar | None = None
) -> dict[str, Any] | None:
    """The ``v`` of a quote: from ``days`` (the symbol's newest daily bars, ascending; the
    last one forming) and, when fresher, ``live`` (the newest bar of a streamed finer
    interval, which moves the last price and stretches the day's high and low). ``None``
    when there is no daily bar with a close."""
    days = [bar for bar in days if finite(bar[4])]
    if not days:
        return None
    today = days[-1]
    last = float(today[4])  # type: ignore[arg-type]
    high, low = _number_or(today[2], last), _number_or(today[3], last)
    if live is not None and live[0] >= today[0] and finite(live[4]):
        last = float(live[4])  # type: ignore[arg-type]
        high, low = max(high, last), min(low, last)
    values: dict[str, Any] = {
        "short_name": str(details["name"]),
        "exchange": str(details.get("source_label") or details["source"]),
        "description": str(details.get("name_label") or details["name"]),
        "original_name": full_name(details),
        "lp": last,
        "open_price": _number_or(today[1], last),
        "high_price": high,
        "low_price": low,
    }
    if finite(today[5]):
        values["volume"] = today[5]
    previous = days[-2][4] if len(days) > 1 else None
    if previous is not None and finite(previous):
        decimals = round(math.log10(pricescale(last, (v for bar in days for v in bar[1:5]))))
        change = round(last - previous, decimals)
        values["prev_close_price"] = previous
        values["ch"] = change
        # over |previous|: a value below zero (a rate, a spread, oil in April 2020) that
        # falls must not show a rise (the live grid's change_percent does the same)
        values["chp"] = round(change / abs(previous) * 100, 2) if previous else 0.0
    return values


def daily_interval(details: dict[str, Any]) -> str | None:
    """The interval a quote reads: ``1d`` when offered, else the coarsest one offered."""
    offered = [i for i in intervals.INTERVALS if i in (details.get("intervals") or ())]
    if not offered:
        return None
    return "1d" if "1d" in offered else offered[-1]


def streamed_bar(hub: Hub, details: dict[str, Any]) -> Bar | None:
    """The newest bar of the finest interval of the symbol that is streaming now."""
    source, name = str(details["source"]), str(details["name"])
    for interval in intervals.INTERVALS:
        key = SeriesId(source, name, interval)
        if not hub.subs.has(key):
            continue
        series = hub.cache.peek(key)
        if series is not None and series.bars:
            return series.bars[-1]
    return None


async def daily_bars(hub: Hub, key: SeriesId) -> Answer | None:
    """The newest :data:`DAYS` bars of ``key`` (and the error of a fetch that failed),
    waiting at most ``SYMBOL_INFO_WAIT`` (then ``None``; the fetch goes on, owned, and fills
    the cache for the next poll)."""
    latest = hub.planner.latest(key, DAYS, hub.subs.has(key))
    fetch = start_owned(INFO_FETCHES, latest, f"udf quote {key}")
    try:
        async with asyncio.timeout(SYMBOL_INFO_WAIT):
            return await asyncio.shield(fetch)
    except TimeoutError:
        return None


async def quote_of(hub: Hub, symbol: str) -> dict[str, Any]:
    """One entry of ``d``: ``{"s", "n", "v"}`` for ``symbol`` as asked."""
    details = await resolve_symbol(hub, symbol)
    if details is None:
        return _failed(symbol, f"unknown symbol {quote(symbol)}")
    source, name = str(details["source"]), str(details["name"])
    if not may_read(SeriesId(source, name, "")):
        return _failed(symbol, f"no permission to read {full_name(details)}")
    interval = daily_interval(details)
    if interval is None or hub.supervisor.get(source) is None:
        return _failed(symbol, f"no data for {full_name(details)}")
    answer = await daily_bars(hub, SeriesId(source, name, interval))
    if answer is None:
        return _failed(symbol, f"no quote for {full_name(details)} yet, ask again")
    if not answer.bars and answer.error is not None:
        # why: a refusal says "retry after N s", a failure names the provider's trouble
        return _failed(symbol, str(answer.error))
    values = quote_values(details, list(answer.bars), streamed_bar(hub, details))
    if values is None:
        return _failed(symbol, f"no data for {full_name(details)}")
    return {"s": "ok", "n": symbol, "v": values}


@router.get("/quotes")
async def quotes(request: Request, symbols: str = "") -> Response:
    """The quotes of the comma-separated ``symbols`` (``source:name`` or bare names)."""
    names = [name.strip() for name in symbols.split(",") if name.strip()]
    if not names:
        return json_response(error("quotes needs 'symbols', a comma-separated list"))
    if len(names) > MAX_QUOTE_SYMBOLS:
        return json_response(error(f"at most {MAX_QUOTE_SYMBOLS} symbols per quotes request"))
    hub = hub_of(request)
    unique = list(dict.fromkeys(names))
    entries = await asyncio.gather(*(quote_of(hub, name) for name in unique))
    found = dict(zip(unique, entries, strict=True))
    return json_response({"s": "ok", "d": [found[name] for name in names]})


def _failed(symbol: str, message: str) -> dict[str, Any]:
    return {"s": "error", "n": symbol, "v": {}, "errmsg": message}


def _number_or(value: float | None, default: float) -> float:
    return float(value) if value is not None and math.isfinite(value) else default
