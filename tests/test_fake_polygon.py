"""The fake Polygon.io server, driven by the real polygon-api-client 1.16.3.

These tests pin what the rest of the suite relies on: ticker listing with cursor paging (and
a 400 for ``market=options``, as on Polygon), the option chain of
``/v3/reference/options/contracts`` in Polygon's shape, aggregates that are exact folds of
minute bars with Polygon's New York alignment, the WebSocket handshake, live per-second
events that fold into the REST minute bar, and the fault-injection hooks.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from zoneinfo import ZoneInfo

import pytest
import websockets
from polygon import RESTClient, WebSocketClient
from polygon.exceptions import AuthError, BadResponse
from polygon.rest.models import Agg
from polygon.websocket.models import CurrencyAgg, EquityAgg, WebSocketMessage
from websockets.exceptions import ConnectionClosedError

from tests.fakes.polygon import FakePolygon
from tests.fakes.polygon_data import occ_ticker

TIMEOUT = 10.0  # seconds; every wait in this module scales with it
NEW_YORK = ZoneInfo("America/New_York")
#: Tuesday 2026-03-10 15:30:30 UTC = 11:30:30 in New York (EDT): the market is open.
NOW = datetime(2026, 3, 10, 15, 30, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakePolygon]:
    """A fake with a frozen clock, shared by the REST tests (which never move the clock)."""
    with FakePolygon(now=NOW, frozen=True, option_count=2500) as fp:
        yield fp


@pytest.fixture
def rest(fake: FakePolygon) -> Iterator[RESTClient]:
    client = RESTClient(api_key="k", base=fake.base_url)
    yield client
    client.client.clear()


def fold(aggs: list[Agg], t: int) -> dict[str, Any]:
    """The Polygon aggregate of consecutive bars, as the REST row would carry it."""
    volume = sum(a.volume or 0 for a in aggs)
    return {
        "t": t,
        "o": aggs[0].open,
        "h": max(a.high or 0 for a in aggs),
        "l": min(a.low or 0 for a in aggs),
        "c": aggs[-1].close,
        "v": volume,
        "n": sum(a.transactions or 0 for a in aggs),
        "vw": pytest.approx(sum((a.vwap or 0) * (a.volume or 0) for a in aggs) / volume),
    }


def as_row(a: Agg) -> dict[str, Any]:
    return {
        "t": a.timestamp,
        "o": a.open,
        "h": a.high,
        "l": a.low,
        "c": a.close,
        "v": a.volume,
        "n": a.transactions,
        "vw": a.vwap,
    }


def group(aggs: list[Agg], key: Callable[[int], int]) -> list[dict[str, Any]]:
    """Fold ``aggs`` (oldest first) by ``key(timestamp)``, the bucket start."""
    return [fold(list(g), t) for t, g in itertools.groupby(aggs, lambda a: key(a.timestamp or 0))]


def ny_midnight(ms: int, shift: Callable[[datetime], datetime] = lambda d: d) -> int:
    local = shift(datetime.fromtimestamp(ms / 1000, NEW_YORK))
    return int(datetime(local.year, local.month, local.day, tzinfo=NEW_YORK).timestamp() * 1000)


def sunday_before(d: datetime) -> datetime:
    return d - timedelta(days=(d.weekday() + 1) % 7)


def first_of_month(d: datetime) -> datetime:
    return d.replace(day=1)


def utc_ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp() * 1000)


async def until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def collector(into: list[Any]) -> Callable[[Any], Awaitable[None]]:
    async def handle(messages: Any) -> None:
        if isinstance(messages, list):
            into.extend(messages)
        else:
            into.append(messages)

    return handle


def ws_client(fake: FakePolygon, market: str = "stocks", **kwargs: Any) -> WebSocketClient:
    kwargs.setdefault("api_key", "k")
    return WebSocketClient(feed=fake.ws_feed, market=market, secure=False, **kwargs)


# --------------------------------------------------------------------------------------
# REST: tickers


def test_list_tickers_follows_cursor_next_urls_across_pages_and_markets(
    fake: FakePolygon, rest: RESTClient
) -> None:
    fake.clear_logs()
    stocks = list(rest.list_tickers(market="stocks", type="CS", active=True, limit=3))
    tickers = [t.ticker for t in stocks]
    assert tickers == sorted(tickers) and "AAPL" in tickers and "TWTR" not in tickers
    assert "SPY" not in tickers  # an ETF
    assert all(t.market == "stocks" and t.locale == "us" and t.type == "CS" for t in stocks)
    assert all(t.primary_exchange in ("XNAS", "XNYS") and t.active for t in stocks)
    assert all(t.cik and t.composite_figi and t.share_class_figi for t in stocks)
    pages = fake.rest_requests
    assert len(pages) == -(-len(stocks) // 3) >= 3
    assert pages[0].query == {
        "market": "stocks",
        "type": "CS",
        "active": "true",
        "limit": "3",
        "sort": "ticker",
        "order": "asc",
    }
    assert all(set(p.query) == {"cursor"} for p in pages[1:])  # nothing re-sent but the cursor

    crypto = [t.ticker for t in rest.list_tickers(market="crypto", limit=2)]
    assert crypto[:2] == ["X:BTCUSD", "X:DOGEUSD"] and len(crypto) == 6
    fx = [t.ticker for t in rest.list_tickers(market="fx", limit=4)]
    assert fx[:2] == ["C:AUDUSD", "C:EURUSD"]
    indices = list(rest.list_tickers(market="indices", limit=2))
    assert "I:SPX" in [t.ticker for t in indices] and indices[0].type == "INDEX"
    inactive = [t.ticker for t in rest.list_tickers(market="stocks", active=False)]
    assert inactive == ["TWTR"]
    found = [t.ticker for t in rest.list_tickers(search="micro", market="stocks")]
    assert found == ["AMD", "MSFT"]


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    """Status and decoded JSON body of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return response.status, json.load(response)
    except HTTPError as error:
        with error:
            return error.code, json.load(error)


def test_tickers_reject_the_options_market_with_a_400_and_never_list_contracts(
    fake: FakePolygon, rest: RESTClient
) -> None:
    status, body = get_json(f"{fake.base_url}/v3/reference/tickers?market=options&apiKey=k")
    assert status == 400
    assert (
        body.pop("request_id")
        and body.pop("status") == "ERROR"
        and body
        == {"error": "invalid market 'options': must be one of stocks, crypto, fx, otc, indices"}
    )
    with pytest.raises(BadResponse, match="invalid market 'options'"):
        list(rest.list_tickers(market="options"))
    every = [t.ticker or "" for t in rest.list_tickers(limit=1000)]
    assert len(every) == 14 + 6 + 6 + 5 and not any(t.startswith("O:") for t in every)
    assert list(rest.list_tickers(market="otc")) == []
    status, body = get_json(f"{fake.base_url}/v3/reference/tickers/O:SPY260320C00280000?apiKey=k")
    assert (status, body["status"]) == (404, "NOT_FOUND")


def test_option_contracts_page_a_thousand_at_a_time_in_ticker_order_with_polygons_fields(
    fake: FakePolygon, rest: RESTClient
) -> None:
    fake.clear_logs()
    contracts = list(rest.list_options_contracts(expired=False, limit=1000))
    tickers = [c.ticker or "" for c in contracts]
    assert len(tickers) == len(set(tickers)) == 2500 and tickers == sorted(tickers)
    pages = fake.rest_requests
    assert [p.path for p in pages] == ["/v3/reference/options/contracts"] * 3
    assert pages[0].query == {"expired": "false", "limit": "1000"}
    assert all(set(p.query) == {"cursor"} for p in pages[1:])
    for contract, ticker in zip(contracts, tickers, strict=True):
        occ = re.fullmatch(r"O:([A-Z]+)(\d\d)(\d\d)(\d\d)([CP])(\d{8})", ticker)
        assert occ is not None, ticker
        root, yy, mm, dd, kind, strike = occ.groups()
        assert (contract.underlying_ticker, contract.expiration_date) == (root, f"20{yy}-{mm}-{dd}")
        assert contract.contract_type == {"C": "call", "P": "put"}[kind]
        assert contract.strike_price == int(strike) / 1000
        assert contract.cfi == f"O{kind}ASPS" and contract.exercise_style == "american"
        assert contract.shares_per_contract == 100 and contract.additional_underlyings is None
    expiries = sorted({date.fromisoformat(c.expiration_date or "") for c in contracts})
    assert len(expiries) == 12 and expiries[0] == date(2026, 3, 20)  # the first after NOW
    assert all(d.weekday() == 4 and 15 <= d.day <= 21 for d in expiries)  # third Fridays
    exchanges = Counter(c.primary_exchange for c in contracts)
    assert exchanges.most_common(1)[0][0] == "BATO" and 0 < exchanges[None] < 250
    descending = [c.ticker for c in rest.list_options_contracts(limit=1000, order="desc")]
    assert descending == tickers[::-1]
    assert rest.get_options_contract(tickers[7]) == contracts[7]


def test_a_contract_page_is_polygons_json_with_a_cursor_only_next_url(fake: FakePolygon) -> None:
    url = f"{fake.base_url}/v3/reference/options/contracts?underlying_ticker=SPY&apiKey=k"
    status, body = get_json(url)
    assert status == 200 and set(body) == {"results", "status", "request_id", "next_url"}
    assert body["status"] == "OK" and len(body["results"]) == 10  # Polygon's default limit
    assert body["results"][0] == {
        "cfi": "OCASPS",
        "contract_type": "call",
        "exercise_style": "american",
        "expiration_date": "2026-03-20",
        "primary_exchange": "BATO",
        "shares_per_contract": 100,
        "strike_price": 280,
        "ticker": "O:SPY260320C00280000",
        "underlying_ticker": "SPY",
    }
    assert re.fullmatch(
        re.escape(f"{fake.base_url}/v3/reference/options/contracts?cursor=") + r"[\w-]+",
        body["next_url"],
    )
    status, second = get_json(f"{body['next_url']}&apiKey=k")
    assert status == 200 and second["results"][0]["ticker"] == "O:SPY260320P00280000"


def test_contract_filters_sorts_and_bad_parameters(fake: FakePolygon, rest: RESTClient) -> None:
    puts = list(
        rest.list_options_contracts(
            underlying_ticker="SPY",
            contract_type="put",
            expiration_date_gte="2026-05-01",
            expiration_date_lt="2026-07-01",
            strike_price_gte=300,
            strike_price_lte=310,
            limit=2,
        )
    )
    assert [(p.ticker, p.strike_price) for p in puts] == [
        ("O:SPY260515P00300000", 300),
        ("O:SPY260515P00305000", 305),
        ("O:SPY260515P00310000", 310),
        ("O:SPY260619P00300000", 300),
        ("O:SPY260619P00305000", 305),
        ("O:SPY260619P00310000", 310),
    ]
    by_strike = list(
        rest.list_options_contracts(
            underlying_ticker="AAPL", sort="strike_price", order="desc", limit=100
        )
    )
    strikes = [c.strike_price or 0 for c in by_strike]
    assert len(by_strike) == 228 and strikes == sorted(strikes, reverse=True)
    assert {c.underlying_ticker for c in by_strike} == {"AAPL"}
    assert list(rest.list_options_contracts(underlying_ticker="SPYG")) == []
    for query, error in (
        ("sort=volume", "invalid sort 'volume'"),
        ("contract_type=both", "invalid contract_type 'both'"),
        ("expired=maybe", "expired must be true or false"),
        ("strike_price.gt=x", "strike_price.gt must be a number"),
    ):
        status, body = get_json(f"{fake.base_url}/v3/reference/options/contracts?{query}&apiKey=k")
        assert (status, body["status"]) == (400, "ERROR") and body["error"].startswith(error)


def test_contracts_expire_with_the_fake_clock_and_expired_true_lists_them() -> None:
    with FakePolygon(now=NOW, frozen=True, option_count=240) as fp:
        client = RESTClient(api_key="k", base=fp.base_url)
        active = [c.ticker for c in client.list_options_contracts(limit=1000)]
        assert len(active) == 240 and list(client.list_options_contracts(expired=True)) == []
        fp.set_time(datetime(2026, 3, 20, 21, tzinfo=UTC))  # expiry day, after the close
        assert len(list(client.list_options_contracts(limit=1000))) == 240
        fp.set_time(datetime(2026, 3, 21, 14, tzinfo=UTC))
        left = [c.ticker for c in client.list_options_contracts(limit=1000)]
        gone = [c.ticker for c in client.list_options_contracts(expired=True, limit=1000)]
        as_of = list(client.list_options_contracts(as_of="2026-03-20", limit=1000))
        client.client.clear()
    assert len(gone) == 22 and all(t[-15:-9] == "260320" for t in gone)  # a call, a put a root
    assert sorted(left + gone) == active and len(as_of) == 240


def test_explicit_option_rows_are_completed_from_their_occ_ticker() -> None:
    adjusted = occ_ticker("AAPL1", date(2026, 4, 17), "C", 150_000)
    rows: list[dict[str, Any]] = [
        {"ticker": "O:SPY261218P00182500", "primary_exchange": None},
        {
            "ticker": adjusted,
            "underlying_ticker": "AAPL",
            "additional_underlyings": [{"type": "equity", "underlying": "AAPL", "amount": 100}],
            "correction": "1",
        },
    ]
    with FakePolygon(now=NOW, frozen=True, tickers={"options": rows}) as fp:
        client = RESTClient(api_key="k", base=fp.base_url)
        split, half = client.list_options_contracts()
        client.client.clear()
    assert (split.ticker, half.ticker) == (adjusted, "O:SPY261218P00182500")
    assert (half.strike_price, half.contract_type, half.primary_exchange) == (182.5, "put", None)
    assert (split.underlying_ticker, split.strike_price, split.correction) == ("AAPL", 150, "1")
    assert split.additional_underlyings is not None
    assert split.additional_underlyings[0].underlying == "AAPL"


def test_a_million_generated_contracts_page_lazily_without_building_the_chain() -> None:
    started = time.monotonic()
    with FakePolygon(option_count=1_000_000) as fp:
        client = RESTClient(api_key="k", base=fp.base_url)
        pages = client.list_options_contracts(limit=1000)
        first = [c.ticker or "" for c in itertools.islice(pages, 3000)]
        last = next(iter(client.list_options_contracts(limit=1, order="desc")))
        client.client.clear()
    assert first == sorted(set(first)) and len(first) == 3000
    assert last.ticker is not None and last.ticker > first[-1]
    assert time.monotonic() - started < TIMEOUT / 2


def test_wrong_or_missing_api_key_is_a_401_unknown_api_key_and_apikey_query_is_accepted(
    fake: FakePolygon,
) -> None:
    bad = RESTClient(api_key="wrong", base=fake.base_url)
    with pytest.raises(BadResponse) as info:
        list(bad.list_tickers(market="stocks"))
    bad.client.clear()
    body = json.loads(str(info.value))
    assert body["status"] == "ERROR" and body["error"] == "Unknown API Key" and body["request_id"]

    url = f"{fake.base_url}/v3/reference/tickers?market=crypto&limit=2"
    with urllib.request.urlopen(f"{url}&apiKey=k", timeout=TIMEOUT) as response:
        assert json.load(response)["results"][0]["ticker"] == "X:BTCUSD"
    with pytest.raises(HTTPError) as error:
        urllib.request.urlopen(url, timeout=TIMEOUT)
    assert error.value.code == 401
    error.value.close()


def test_injected_rate_limit_responses_are_retried_by_the_client(
    fake: FakePolygon, rest: RESTClient
) -> None:
    fake.clear_logs()
    fake.fail_rest(429, times=2, retry_after=0)
    indices = [t.ticker for t in rest.list_tickers(market="indices", limit=10)]
    assert indices == ["I:DJI", "I:NDX", "I:RUT", "I:SPX", "I:VIX"]
    assert [r.status for r in fake.rest_requests] == [429, 429, 200]


# --------------------------------------------------------------------------------------
# REST: aggregates


def test_hour_day_week_month_aggregates_are_exact_folds_of_the_minute_bars(
    fake: FakePolygon, rest: RESTClient
) -> None:
    fake.clear_logs()
    minutes = list(rest.list_aggs("AAPL", 1, "minute", "2026-02-01", "2026-03-10"))
    assert len(fake.rest_requests) == 2  # 9871 minute bars, 5000 base aggregates a page
    assert [m.timestamp for m in minutes] == sorted({m.timestamp or 0 for m in minutes})
    assert minutes[-1].timestamp == utc_ms(2026, 3, 10, 15, 30)  # the forming minute
    assert len(minutes) == 25 * 390 + 121  # 25 sessions (Presidents' Day closed) + today

    def fetch(mult: int, span: str) -> list[dict[str, Any]]:
        return [as_row(a) for a in rest.list_aggs("AAPL", mult, span, "2026-02-01", "2026-03-10")]

    assert fetch(1, "hour") == group(minutes, lambda t: t - t % 3_600_000)
    assert fetch(4, "hour") == group(minutes, lambda t: t - t % 14_400_000)
    assert fetch(1, "day") == group(minutes, ny_midnight)
    assert fetch(1, "week") == group(minutes, lambda t: ny_midnight(t, sunday_before))
    months = fetch(1, "month")
    assert months == group(minutes, lambda t: ny_midnight(t, first_of_month))
    assert [m["t"] for m in months] == [utc_ms(2026, 2, 1, 5), utc_ms(2026, 3, 1, 5)]
    for span in ("minute", "hour", "day", "week", "month"):
        expected = fake.aggregates("AAPL", 1, span, utc_ms(2026, 2, 1, 5), NOW)
        assert [
            as_row(a) for a in rest.list_aggs("AAPL", 1, span, "2026-02-01", "2026-03-10")
        ] == expected


def test_daily_stock_bars_open_at_new_york_midnight_across_the_dst_change(
    rest: RESTClient,
) -> None:
    days = list(rest.list_aggs("AAPL", 1, "day", "2026-03-06", "2026-03-10"))
    assert [d.timestamp for d in days] == [
        utc_ms(2026, 3, 6, 5),  # Friday, EST: 00:00 New York = 05:00 UTC
        utc_ms(2026, 3, 9, 4),  # Monday after the switch, EDT: 04:00 UTC; no weekend bars
        utc_ms(2026, 3, 10, 4),  # today, still forming
    ]
    weeks = list(rest.list_aggs("AAPL", 1, "week", "2026-03-01", "2026-03-10"))
    assert [w.timestamp for w in weeks] == [utc_ms(2026, 3, 1, 5), utc_ms(2026, 3, 8, 5)]


def test_crypto_trades_every_day_from_utc_midnight_and_fx_pauses_for_the_weekend(
    rest: RESTClient,
) -> None:
    btc = list(rest.list_aggs("X:BTCUSD", 1, "day", "2026-03-06", "2026-03-09"))
    assert [d.timestamp for d in btc] == [utc_ms(2026, 3, d) for d in (6, 7, 8, 9)]
    assert all(d.vwap and d.low and d.high and d.low <= d.vwap <= d.high for d in btc)
    eur = list(rest.list_aggs("C:EURUSD", 1, "hour", "2026-03-06", "2026-03-09"))
    hours = {e.timestamp for e in eur}
    assert utc_ms(2026, 3, 6, 21) in hours and utc_ms(2026, 3, 6, 22) not in hours  # Fri 17:00
    assert not any(utc_ms(2026, 3, 7) <= (e.timestamp or 0) < utc_ms(2026, 3, 8, 21) for e in eur)
    assert utc_ms(2026, 3, 8, 21) in hours  # Sunday 17:00 New York (EDT)


def test_descending_pages_with_a_small_limit_return_the_same_bars_reversed(
    fake: FakePolygon, rest: RESTClient
) -> None:
    ascending = list(rest.list_aggs("MSFT", 5, "minute", "2026-03-05", "2026-03-06", limit=100))
    fake.clear_logs()
    descending = list(
        rest.list_aggs("MSFT", 5, "minute", "2026-03-05", "2026-03-06", limit=100, sort="desc")
    )
    assert descending == ascending[::-1] and len(ascending) == 2 * 78
    assert len(fake.rest_requests) == 8  # 780 minutes, 100 base aggregates a page


def test_unknown_ticker_has_no_results_key_and_the_client_yields_nothing(
    rest: RESTClient,
) -> None:
    response = rest.get_aggs("NOPE", 1, "day", "2026-03-02", "2026-03-06", raw=True)
    body = json.loads(response.data)
    assert "results" not in body
    assert body.pop("request_id")
    assert body == {
        "ticker": "NOPE",
        "queryCount": 0,
        "resultsCount": 0,
        "adjusted": True,
        "status": "OK",
    }
    assert list(rest.list_aggs("NOPE", 1, "day", "2026-03-02", "2026-03-06")) == []


def test_the_forming_minute_grows_with_the_clock_until_it_closes() -> None:
    with FakePolygon(now=NOW, frozen=True) as fp:
        client = RESTClient(api_key="k", base=fp.base_url)
        minute = utc_ms(2026, 3, 10, 15, 30)
        seen = []
        for _ in range(3):
            seen.append(client.get_aggs("AAPL", 1, "minute", minute, minute)[-1])
            fp.advance(10)
        closed = client.get_aggs("AAPL", 1, "minute", minute, minute)[-1]
        client.client.clear()
    volumes = [s.volume or 0 for s in seen]
    assert volumes == sorted(volumes) and volumes[-1] < (closed.volume or 0)
    assert all(s.open == closed.open and s.timestamp == minute for s in seen)
    assert as_row(closed) == fp.aggregates("AAPL", 1, "minute", minute, minute)[0]


# --------------------------------------------------------------------------------------
# WebSocket


async def test_streamed_second_aggregates_fold_into_the_rest_minute_bar() -> None:
    start = datetime(2026, 3, 10, 15, 0, 50, tzinfo=UTC)
    minute = utc_ms(2026, 3, 10, 15, 1)
    with FakePolygon(now=start, frozen=True) as fp:
        events: list[WebSocketMessage] = []
        client = ws_client(fp, subscriptions=["A.AAPL", "AM.AAPL"])
        task = asyncio.create_task(client.connect(collector(events)))
        subscribed = frozenset({"A.AAPL", "AM.AAPL"})
        await until(lambda: [c.topics for c in fp.connections()] == [subscribed], "subscribing")
        fp.advance(75)  # the stream replays every second passed over

        def minute_events() -> list[EquityAgg]:
            return [
                e
                for e in events
                if isinstance(e, EquityAgg) and e.event_type == "AM" and e.start_timestamp == minute
            ]

        await until(lambda: bool(minute_events()), "the AM event of 15:01")
        await client.close()
        await task
        rest = RESTClient(api_key="k", base=fp.base_url)
        bar = rest.get_aggs("AAPL", 1, "minute", minute, minute)[0]
        today = rest.get_aggs("AAPL", 1, "minute", "2026-03-10", minute)
        rest.client.clear()

    seconds = [
        e
        for e in events
        if isinstance(e, EquityAgg)
        and e.event_type == "A"
        and minute <= (e.start_timestamp or 0) < minute + 60_000
    ]
    assert 20 <= len(seconds) <= 60 and all(s.symbol == "AAPL" for s in seconds)
    assert all((s.end_timestamp or 0) - (s.start_timestamp or 0) == 1000 for s in seconds)
    folded = {
        "o": seconds[0].open,
        "h": max(s.high or 0 for s in seconds),
        "l": min(s.low or 0 for s in seconds),
        "c": seconds[-1].close,
        "v": sum(s.volume or 0 for s in seconds),
        "vw": pytest.approx(
            sum((s.vwap or 0) * (s.volume or 0) for s in seconds)
            / sum(s.volume or 0 for s in seconds)
        ),
    }
    assert folded == {
        "o": bar.open,
        "h": bar.high,
        "l": bar.low,
        "c": bar.close,
        "v": bar.volume,
        "vw": bar.vwap,
    }
    (am,) = minute_events()
    assert (am.open, am.high, am.low, am.close, am.volume, am.end_timestamp) == (
        bar.open,
        bar.high,
        bar.low,
        bar.close,
        bar.volume,
        minute + 60_000,
    )
    assert am.accumulated_volume == sum(m.volume or 0 for m in today)
    assert am.official_open_price == today[0].open


async def test_handshake_sends_connected_status_and_acknowledges_each_topic() -> None:
    with FakePolygon(now=NOW, frozen=True) as fp:
        async with websockets.connect(f"ws://{fp.ws_feed}/stocks") as bare:
            assert json.loads(await bare.recv()) == [
                {"ev": "status", "status": "connected", "message": "Connected Successfully"}
            ]
            await bare.send(json.dumps({"action": "subscribe", "params": "A.AAPL"}))
            assert json.loads(await bare.recv())[0]["status"] == "error"  # auth comes first
        frames: list[str] = []
        client = ws_client(fp, raw=True, subscriptions=["A.AAPL", "AM.*"])
        task = asyncio.create_task(client.connect(collector(frames)))
        await until(lambda: len(frames) >= 2, "two subscription acks")
        await client.close()
        await task
        received = [json.loads(f.text) for f in fp.ws_frames]
    acks = sorted(m["message"] for f in frames for m in json.loads(f))
    assert acks == ["subscribed to: A.AAPL", "subscribed to: AM.*"]
    assert received[1:] == [{"action": "auth", "params": "k"}, received[2]]
    assert received[2]["action"] == "subscribe"
    assert fp.connections_opened == {"stocks": 2} and fp.auth_attempts == {"stocks": 1}


async def test_crypto_stream_sends_per_second_xas_events_keyed_by_dash_pair() -> None:
    with FakePolygon(now=NOW, speed=60) as fp:
        events: list[WebSocketMessage] = []
        client = ws_client(fp, market="crypto", subscriptions=["XAS.BTC-USD"])
        task = asyncio.create_task(client.connect(collector(events)))
        await until(lambda: len(events) >= 5, "five XAS events")
        await client.close()
        await task
    assert all(isinstance(e, CurrencyAgg) and e.event_type == "XAS" for e in events)
    assert {e.pair for e in events if isinstance(e, CurrencyAgg)} == {"BTC-USD"}


async def test_wrong_key_or_injected_auth_failure_raises_auth_error() -> None:
    with FakePolygon(now=NOW, frozen=True) as fp:
        with pytest.raises(AuthError, match="authentication failed"):
            await asyncio.wait_for(ws_client(fp, api_key="nope").connect(collector([])), TIMEOUT)
        fp.fail_auth(True)
        with pytest.raises(AuthError):
            await asyncio.wait_for(ws_client(fp).connect(collector([])), TIMEOUT)
        fp.fail_auth(False)
        assert fp.auth_attempts == {"stocks": 2}


async def test_a_second_connection_with_the_same_key_evicts_the_first_with_max_connections() -> (
    None
):
    with FakePolygon(now=NOW, frozen=True) as fp:
        first_frames: list[str] = []
        first = ws_client(fp, raw=True, max_reconnects=0, subscriptions=["A.AAPL"])
        first_task = asyncio.create_task(first.connect(collector(first_frames)))
        await until(lambda: bool(first_frames), "the first client's subscription ack")
        second = ws_client(fp, subscriptions=["A.MSFT"])
        second_task = asyncio.create_task(second.connect(collector([])))
        with pytest.raises(ConnectionClosedError) as closed:
            await asyncio.wait_for(first_task, TIMEOUT)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        statuses = [m for f in first_frames for m in json.loads(f)]
        assert statuses[-1]["status"] == "max_connections"
        assert statuses[-1]["message"].startswith("Maximum number of websocket connections")
        await until(
            lambda: [c.topics for c in fp.connections("stocks")] == [frozenset({"A.MSFT"})],
            "only the second connection, subscribed",
        )
        await second.close()
        await second_task


async def test_forced_max_connections_closes_every_connection_with_code_1008() -> None:
    with FakePolygon(now=NOW, frozen=True, api_keys=None) as fp:
        frames: dict[str, list[str]] = {"a": [], "b": []}
        clients = [
            ws_client(fp, api_key=key, raw=True, max_reconnects=0, subscriptions=["AM.*"])
            for key in frames
        ]
        tasks = [
            asyncio.create_task(c.connect(collector(f)))
            for c, f in zip(clients, frames.values(), strict=True)
        ]
        await until(lambda: all(frames.values()), "both subscription acks")
        fp.force_max_connections()
        for task in tasks:
            with pytest.raises(ConnectionClosedError) as closed:
                await asyncio.wait_for(task, TIMEOUT)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert all(json.loads(f[-1])[0]["status"] == "max_connections" for f in frames.values())
        assert fp.connections() == []


async def test_dropped_connections_surface_as_connection_closed_error_without_close_frame() -> None:
    with FakePolygon(now=NOW, frozen=True) as fp:
        frames: list[str] = []
        client = ws_client(fp, raw=True, max_reconnects=0, subscriptions=["A.AAPL"])
        task = asyncio.create_task(client.connect(collector(frames)))
        await until(lambda: bool(frames), "the subscription ack")
        fp.drop_connections()
        with pytest.raises(ConnectionClosedError) as closed:
            await asyncio.wait_for(task, TIMEOUT)
        assert closed.value.rcvd is None


async def test_a_silent_server_sends_no_events_until_the_silence_ends() -> None:
    with FakePolygon(now=NOW, speed=60, always_open=True) as fp:
        events: list[WebSocketMessage] = []
        client = ws_client(fp, subscriptions=["A.AAPL"])
        task = asyncio.create_task(client.connect(collector(events)))
        await until(lambda: bool(events), "the first event")
        # A silence long beside the waits, which a loaded machine stretches: with 0.5 s of
        # silence and 0.4 s of waits, the events after it had come by the second look (CI).
        silence = 3.0
        fp.go_silent(silence)
        started = time.monotonic()
        await asyncio.sleep(0.5)  # events already on their way arrive
        count = len(events)
        await asyncio.sleep(1.0)
        looked = time.monotonic() - started
        assert looked >= silence or len(events) == count
        await until(lambda: len(events) > count, "events after the silence")
        await client.close()
        await task


def test_runs_standalone_as_a_module_on_the_given_port() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.polygon", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    ) as process:
        assert process.stdout is not None
        line = process.stdout.readline()
        base = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert base is not None, line
        with urllib.request.urlopen(f"{base[0]}/v3/reference/tickers?apiKey=k") as response:
            assert json.load(response)["status"] == "OK"
        process.terminate()
        process.wait(TIMEOUT)
