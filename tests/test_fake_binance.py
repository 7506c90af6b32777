"""The fake Binance exchange, driven by the real python-binance library.

These tests pin the wire format the rest of the suite relies on: REST shapes and errors,
Binance's kline time-window rules, exact aggregation of coarser bars, kline streams (raw,
combined and live SUBSCRIBE), and the fault-injection hooks.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import binance.base_client
import pytest
import requests
import websockets
from binance.async_client import AsyncClient
from binance.client import Client
from binance.exceptions import BinanceAPIException
from binance.ws.streams import BinanceSocketManager, ThreadedWebsocketManager
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from tests.fakes.binance import FakeBinance, SymbolSpec, thread_event_loop
from tests.fakes.binance_data import DEFAULT_LISTED_AT

#: 2025-03-05 12:34:56.789 UTC: a frozen "now" for deterministic tests.
NOW = calendar.timegm((2025, 3, 5, 12, 34, 56)) * 1000 + 789
MINUTE = 60_000
HOUR = 3_600_000


@pytest.fixture
def fake() -> Iterator[FakeBinance]:
    """A running fake with a frozen clock and fast pushes, with python-binance pointed at it."""
    with FakeBinance(now_ms=NOW, push_interval=0.05) as fb, fb.patch_python_binance():
        urls = (binance.base_client.BaseClient.API_URL, BinanceSocketManager.STREAM_URL)
        assert urls == (fb.api_url, fb.stream_url)
        yield fb
        assert fb.errors == []


@pytest.fixture
def client(fake: FakeBinance) -> Iterator[Client]:
    """A sync python-binance client (it needs a current event loop in this thread)."""
    with thread_event_loop():
        c = Client()
        yield c
        c.close_connection()


def aggregate(rows: list[list[Any]]) -> list[Any]:
    """OHLCV and counters of ``rows`` aggregated the way Binance builds coarser bars."""
    return [
        rows[0][1],
        max((r[2] for r in rows), key=Decimal),
        min((r[3] for r in rows), key=Decimal),
        rows[-1][4],
        sum(Decimal(r[5]) for r in rows),
        sum(Decimal(r[7]) for r in rows),
        sum(r[8] for r in rows),
        sum(Decimal(r[9]) for r in rows),
        sum(Decimal(r[10]) for r in rows),
    ]


def as_aggregate(row: list[Any]) -> list[Any]:
    return [
        row[1],
        row[2],
        row[3],
        row[4],
        Decimal(row[5]),
        Decimal(row[7]),
        row[8],
        Decimal(row[9]),
        Decimal(row[10]),
    ]


# --------------------------------------------------------------------------------------
# REST


def test_client_pings_on_construction_and_reads_server_time_and_exchange_info(
    fake: FakeBinance, client: Client
) -> None:
    assert fake.requests[0].path == "/api/v3/ping"
    assert client.get_server_time() == {"serverTime": NOW}
    assert client.response is not None
    assert client.response.headers["Content-Type"].startswith("application/json")
    assert client.response.headers["X-MBX-USED-WEIGHT-1M"] == "2"

    info = client.get_exchange_info()
    assert client.response.headers["X-MBX-USED-WEIGHT-1M"] == "22"
    assert info["timezone"] == "UTC" and info["serverTime"] == NOW
    assert info["exchangeFilters"] == []
    assert info["rateLimits"][0]["rateLimitType"] == "REQUEST_WEIGHT"
    by_symbol = {s["symbol"]: s for s in info["symbols"]}
    assert {"BTCUSDT", "ETHUSDT", "ETHBTC", "BNBUSDT"} <= by_symbol.keys()
    assert [s for s, v in by_symbol.items() if v["status"] != "TRADING"] == ["LUNAUSDT"]
    assert by_symbol["LUNAUSDT"]["status"] == "BREAK"
    btc = by_symbol["BTCUSDT"]
    assert (btc["baseAsset"], btc["quoteAsset"]) == ("BTC", "USDT")
    assert {
        "baseAssetPrecision",
        "quotePrecision",
        "quoteAssetPrecision",
        "orderTypes",
        "permissions",
    } <= btc.keys()
    filters = {f["filterType"]: f for f in btc["filters"]}
    assert filters["PRICE_FILTER"]["tickSize"] == "0.01000000"
    assert filters["LOT_SIZE"]["stepSize"] == "0.00001000"
    assert client.get_symbol_info("ETHBTC")["quoteAsset"] == "BTC"


def test_historical_klines_over_three_pages_equal_the_deterministic_bars(
    fake: FakeBinance, client: Client
) -> None:
    start = NOW - NOW % MINUTE - 2499 * MINUTE
    rows = client.get_historical_klines("BTCUSDT", "1m", start, NOW)

    assert len(rows) == 2500
    assert [r[0] for r in rows] == list(range(start, start + 2500 * MINUTE, MINUTE))
    assert all(r[6] == r[0] + MINUTE - 1 for r in rows)
    assert all(len(r) == 12 and r[11] == "0" and isinstance(r[8], int) for r in rows)
    assert all(isinstance(r[i], str) for r in rows for i in (1, 2, 3, 4, 5, 7, 9, 10))
    expected = (
        fake.klines("BTCUSDT", "1m", start, NOW, 1000)
        + fake.klines("BTCUSDT", "1m", start + 1000 * MINUTE, NOW, 1000)
        + fake.klines("BTCUSDT", "1m", start + 2000 * MINUTE, NOW, 1000)
    )
    assert rows == expected
    # the last row is the bar still forming at NOW
    assert rows[-1][0] <= NOW < rows[-1][6]

    klines = [r for r in fake.requests if r.path == "/api/v3/klines"]
    probe = klines[0].params  # python-binance probes the listing with its own clock's now
    assert probe == {
        "endTime": probe["endTime"],
        "interval": "1m",
        "limit": "1",
        "startTime": "0",
        "symbol": "BTCUSDT",
    }
    assert [r.params["startTime"] for r in klines[1:]] == [
        str(start),
        str(start + 1000 * MINUTE),
        str(start + 2000 * MINUTE),
    ]


def test_coarser_intervals_are_exact_aggregations_of_finer_bars(client: Client) -> None:
    for symbol, coarse, fine, per in [
        ("BTCUSDT", "1h", "1m", 60),
        ("ETHBTC", "15m", "1m", 15),
        ("ETHUSDT", "1d", "1h", 24),
        ("BNBUSDT", "1m", "1s", 60),
    ]:
        bars = client.get_klines(symbol=symbol, interval=coarse, endTime=NOW - 48 * HOUR, limit=3)
        for bar in bars:
            parts = client.get_klines(
                symbol=symbol, interval=fine, startTime=bar[0], endTime=bar[6], limit=1000
            )
            assert len(parts) == per
            assert aggregate(parts) == as_aggregate(bar), (symbol, coarse, bar[0])


def test_weekly_klines_open_on_monday_and_monthly_klines_on_the_first(client: Client) -> None:
    weeks = client.get_klines(symbol="BTCUSDT", interval="1w", limit=20)
    months = client.get_klines(symbol="BTCUSDT", interval="1M", limit=20)

    for row in weeks:
        opened = datetime.fromtimestamp(row[0] / 1000, UTC)
        assert (opened.weekday(), opened.hour, opened.minute) == (0, 0, 0)
        assert row[6] == row[0] + 7 * 86_400_000 - 1
    for row in months:
        opened = datetime.fromtimestamp(row[0] / 1000, UTC)
        assert (opened.day, opened.hour, opened.minute) == (1, 0, 0)
        closed = datetime.fromtimestamp((row[6] + 1) / 1000, UTC)
        assert closed.day == 1 and (closed.month - opened.month) % 12 == 1
    assert months[0][0] == DEFAULT_LISTED_AT  # listed 2024-01-01, fewer than 20 months ago
    assert months[-1][0] == calendar.timegm((2025, 3, 1, 0, 0, 0)) * 1000
    assert weeks[-1][0] <= NOW < weeks[-1][6]  # the newest weekly bar is still forming


def test_start_time_zero_returns_the_first_kline_since_listing(client: Client) -> None:
    for interval in ("1m", "1h", "1d"):
        first = client.get_klines(
            symbol="ETHUSDT", interval=interval, startTime=0, endTime=NOW, limit=1
        )
        assert len(first) == 1 and first[0][0] == DEFAULT_LISTED_AT
    assert client._get_earliest_valid_timestamp("ETHUSDT", "1h") == DEFAULT_LISTED_AT


def test_kline_time_window_rules_follow_binance(client: Client) -> None:
    newest = client.get_klines(symbol="BTCUSDT", interval="1h")
    assert len(newest) == 500 and newest[-1][0] <= NOW < newest[-1][6]

    start = NOW - 100 * HOUR
    from_start = client.get_klines(symbol="BTCUSDT", interval="1h", startTime=start, limit=5)
    assert from_start[0][0] == start - start % HOUR + HOUR  # first open at or after start
    assert len(from_start) == 5

    to_end = client.get_klines(symbol="BTCUSDT", interval="1h", endTime=start, limit=5)
    assert to_end[-1][0] == start - start % HOUR  # last open at or before end
    assert len(to_end) == 5

    both = client.get_klines(
        symbol="BTCUSDT", interval="1h", startTime=start, endTime=start + 3 * HOUR, limit=1000
    )
    assert [r[0] for r in both] == [from_start[i][0] for i in range(3)]

    tail = client.get_klines(symbol="BTCUSDT", interval="1h", startTime=NOW - 2 * HOUR)
    assert len(tail) == 2 and tail[-1][0] <= NOW
    assert client.get_klines(symbol="BTCUSDT", interval="1h", startTime=NOW + HOUR) == []
    assert client.get_klines(symbol="BTCUSDT", interval="1h", limit=1000)[-500:] == newest


def test_forming_bar_grows_with_the_clock_and_then_equals_the_closed_bar(
    fake: FakeBinance, client: Client
) -> None:
    open_time = NOW - NOW % HOUR
    early = client.get_klines(symbol="BTCUSDT", interval="1h", limit=1)[0]
    fake.advance(600)
    later = client.get_klines(symbol="BTCUSDT", interval="1h", limit=1)[0]
    assert early[0] == later[0] == open_time
    assert early[1] == later[1]
    assert Decimal(later[5]) > Decimal(early[5]) and later[8] > early[8]
    assert Decimal(later[2]) >= Decimal(early[2]) and Decimal(later[3]) <= Decimal(early[3])

    fake.set_time(open_time + 3 * HOUR)
    closed = client.get_klines(symbol="BTCUSDT", interval="1h", startTime=open_time, limit=1)
    assert closed == fake.klines("BTCUSDT", "1h", open_time, limit=1, now=NOW + 10 * HOUR)


def test_bad_requests_raise_binance_api_exceptions_with_binance_codes(client: Client) -> None:
    with pytest.raises(BinanceAPIException) as unknown:
        client.get_klines(symbol="NOPEUSDT", interval="1m")
    assert (unknown.value.status_code, unknown.value.code) == (400, -1121)
    assert unknown.value.message == "Invalid symbol."

    with pytest.raises(BinanceAPIException) as bad_interval:
        client.get_klines(symbol="BTCUSDT", interval="7m")
    assert (bad_interval.value.status_code, bad_interval.value.code) == (400, -1120)

    with pytest.raises(BinanceAPIException) as too_many:
        client.get_klines(symbol="BTCUSDT", interval="1m", limit=1001)
    assert (too_many.value.status_code, too_many.value.code) == (400, -1130)

    with pytest.raises(BinanceAPIException) as missing:
        client.get_klines(interval="1m")
    assert missing.value.code == -1102


def test_injected_429_and_418_carry_retry_after_and_are_recorded(
    fake: FakeBinance, client: Client
) -> None:
    fake.rate_limit(status=429, retry_after=7, count=2)
    for _ in range(2):
        with pytest.raises(BinanceAPIException) as limited:
            client.get_klines(symbol="BTCUSDT", interval="1m", limit=1)
        assert (limited.value.status_code, limited.value.code) == (429, -1003)
        assert limited.value.response.headers["Retry-After"] == "7"
    assert len(client.get_klines(symbol="BTCUSDT", interval="1m", limit=1)) == 1

    fake.rate_limit(status=418, retry_after=120)
    with pytest.raises(BinanceAPIException) as banned:
        client.ping()
    assert banned.value.status_code == 418 and "banned" in banned.value.message
    assert [r.status for r in fake.requests[1:]] == [429, 429, 200, 418]


def test_request_weight_is_counted_per_minute_and_enforced(fake: FakeBinance) -> None:
    fake.weight_limit = 25
    assert (
        requests.get(f"{fake.api_url}/v3/exchangeInfo", timeout=5).headers["X-MBX-USED-WEIGHT-1M"]
        == "20"
    )
    ok = requests.get(f"{fake.api_url}/v3/klines?symbol=BTCUSDT&interval=1m&limit=1", timeout=5)
    assert ok.status_code == 200 and ok.headers["X-MBX-USED-WEIGHT-1M"] == "22"
    requests.get(f"{fake.api_url}/v3/klines?symbol=BTCUSDT&interval=1m&limit=1", timeout=5)
    refused = requests.get(f"{fake.api_url}/v3/klines?symbol=BTCUSDT&interval=1m", timeout=5)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 59
    assert refused.json()["code"] == -1003
    assert fake.used_weight() == 24


# --------------------------------------------------------------------------------------
# streams


async def test_kline_socket_and_multiplex_socket_receive_binance_kline_events(
    fake: FakeBinance,
) -> None:
    client = await AsyncClient.create()
    try:
        bsm = BinanceSocketManager(client)
        async with bsm.kline_socket("BTCUSDT", "1m") as raw:
            event = await asyncio.wait_for(raw.recv(), 5)
        assert event == fake.kline_event("BTCUSDT", "1m", NOW - NOW % MINUTE)
        assert event["E"] == NOW and event["k"]["x"] is False
        assert set(event["k"]) == set("tTsifLochlvnxqVQB")

        streams = ["ethusdt@kline_1h", "ethbtc@kline_1M"]
        seen: dict[str, dict[str, Any]] = {}
        async with bsm.multiplex_socket(streams) as multi:
            while len(seen) < 2:
                msg = await asyncio.wait_for(multi.recv(), 5)
                seen[msg["stream"]] = msg["data"]
        assert seen["ethbtc@kline_1M"]["k"]["t"] == calendar.timegm((2025, 3, 1, 0, 0, 0)) * 1000
        assert seen["ethusdt@kline_1h"]["s"] == "ETHUSDT"
    finally:
        await client.close_connection()
    assert [c.path for c in fake.connections] == [
        "/ws/btcusdt@kline_1m",
        "/stream?streams=ethusdt@kline_1h/ethbtc@kline_1M",
    ]
    assert fake.violations == []


def test_threaded_websocket_manager_kline_socket_calls_back_with_events(
    fake: FakeBinance,
) -> None:
    received: list[dict[str, Any]] = []
    got_two = threading.Event()

    def on_message(msg: dict[str, Any]) -> None:
        received.append(msg)
        if len(received) >= 2:
            got_two.set()

    # python-binance builds the socket in the caller's thread with the thread's current
    # loop and runs it in the manager's thread: they must be the same loop.
    with thread_event_loop() as loop:
        twm = ThreadedWebsocketManager(loop=loop)
        try:
            twm.start()
            twm.start_kline_socket(callback=on_message, symbol="BNBUSDT", interval="5m")
            assert got_two.wait(10)
        finally:
            twm.stop()
            twm.join(10)
    assert not twm.is_alive()
    assert received[0]["e"] == "kline" and received[0]["k"]["i"] == "5m"
    assert [r.path for r in fake.requests[:2]] == ["/api/v3/ping", "/api/v3/time"]


async def test_live_subscribe_on_a_combined_connection_adds_streams_and_answers(
    fake: FakeBinance,
) -> None:
    async with websockets.connect(f"{fake.stream_url}stream") as ws:
        await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@kline_1m"], "id": 1}))
        assert json.loads(await ws.recv()) == {"result": None, "id": 1}
        event = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert event["stream"] == "btcusdt@kline_1m" and event["data"]["e"] == "kline"
        assert fake.streams_per_connection() == {1: 1}

        await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 2}))
        await ws.send(
            json.dumps({"method": "UNSUBSCRIBE", "params": ["btcusdt@kline_1m"], "id": 3})
        )
        await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["BTC USDT"], "id": 4}))
        await ws.send(json.dumps({"method": "FROB", "id": 5}))
        replies: dict[int, dict[str, Any]] = {}
        while len(replies) < 4:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if "id" in msg:
                replies[msg["id"]] = msg
        assert replies[2] == {"result": ["btcusdt@kline_1m"], "id": 2}
        assert replies[3] == {"result": None, "id": 3}
        assert replies[4]["code"] == 2 and replies[4]["msg"].startswith("Invalid request")
        assert replies[5]["code"] == 2
        assert fake.streams_per_connection() == {1: 0}
    assert [json.loads(f.text)["id"] for f in fake.ws_frames] == [1, 2, 3, 4, 5]
    assert fake.violations == []


async def test_more_than_five_messages_per_second_closes_the_connection_and_is_recorded(
    fake: FakeBinance,
) -> None:
    async with websockets.connect(f"{fake.stream_url}ws") as ws:
        for i in range(6):
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
        with pytest.raises(ConnectionClosedError) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert [v.kind for v in fake.violations] == ["message_rate"]


async def test_subscribing_past_the_stream_limit_is_refused_closed_and_recorded() -> None:
    with FakeBinance(now_ms=NOW, max_streams=3) as fb:
        async with websockets.connect(f"{fb.stream_url}ws/btcusdt@kline_1m") as ws:
            names = ["ethusdt@kline_1m", "bnbusdt@kline_1m", "ethbtc@kline_1m"]
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": names, "id": 9}))
            reply = json.loads(await ws.recv())
            assert reply["code"] == 2 and reply["id"] == 9
            with pytest.raises(ConnectionClosedError) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert fb.connections[0].streams == ["btcusdt@kline_1m"]
        assert [v.kind for v in fb.violations] == ["too_many_streams"]
        too_many = "/".join(f"btcusdt@kline_{i}" for i in ("1m", "3m", "5m", "15m"))
        with pytest.raises(websockets.InvalidStatus):
            await websockets.connect(f"{fb.stream_url}stream?streams={too_many}")
        assert len(fb.violations) == 2 and fb.connections_opened == 1


async def test_a_kline_closing_sends_a_final_event_equal_to_the_rest_bar(
    fake: FakeBinance,
) -> None:
    open_time = NOW - NOW % MINUTE
    fake.set_time(open_time + MINUTE - 300, frozen=False)
    events: list[dict[str, Any]] = []
    async with websockets.connect(f"{fake.stream_url}ws/ethusdt@kline_1m") as ws:
        while not any(e["k"]["t"] > open_time for e in events):
            events.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
    final = [e for e in events if e["k"]["x"]]
    assert len(final) == 1 and final[0]["k"]["t"] == open_time
    assert events.index(final[0]) == len(events) - 2  # right before the next bar's first event
    assert events[-1]["k"]["x"] is False and events[-1]["k"]["t"] == open_time + MINUTE

    client = await AsyncClient.create()
    try:
        rest = (
            await client.get_klines(symbol="ETHUSDT", interval="1m", startTime=open_time, limit=1)
        )[0]
    finally:
        await client.close_connection()
    k = final[0]["k"]
    assert [
        k["t"],
        k["o"],
        k["h"],
        k["l"],
        k["c"],
        k["v"],
        k["T"],
        k["q"],
        k["n"],
        k["V"],
        k["Q"],
    ] == rest[:11]


async def test_drop_connections_aborts_sockets_and_python_binance_reconnects(
    fake: FakeBinance,
) -> None:
    async with websockets.connect(f"{fake.stream_url}ws/btcusdt@kline_1m") as ws:
        await asyncio.wait_for(ws.recv(), 5)
        assert fake.drop_connections() == 1
        with pytest.raises(ConnectionClosedError) as dropped:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        assert dropped.value.rcvd is None  # no close frame: the TCP connection was aborted
    assert fake.connections[0].close_reason == "dropped"

    client = await AsyncClient.create()
    try:
        async with BinanceSocketManager(client).kline_socket("BTCUSDT", "1m") as sock:
            assert (await asyncio.wait_for(sock.recv(), 5))["e"] == "kline"
            fake.drop_connections()
            error = await asyncio.wait_for(sock.recv(), 5)
            assert error["e"] == "error"
            while (await asyncio.wait_for(sock.recv(), 5))["e"] != "kline":
                pass
    finally:
        await client.close_connection()
    assert fake.connections_opened == 3


async def test_silence_cut_and_server_shutdown_faults_reach_the_client(
    fake: FakeBinance,
) -> None:
    async with websockets.connect(f"{fake.stream_url}ws/btcusdt@kline_1m") as ws:
        await asyncio.wait_for(ws.recv(), 5)
        fake.go_silent(0.5)
        await asyncio.sleep(0.1)
        with pytest.raises(TimeoutError):
            while True:  # drain anything already in flight, then nothing for a while
                await asyncio.wait_for(ws.recv(), 0.3)
        assert (json.loads(await asyncio.wait_for(ws.recv(), 5)))["e"] == "kline"

        fake.go_silent(5)
        assert fake.send_server_shutdown() == 1
        message = json.loads(await asyncio.wait_for(ws.recv(), 5))
        while message.get("e") == "kline":  # one already in flight when the silence began
            message = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert message == {"e": "serverShutdown", "E": NOW}
        started = time.monotonic()
        fake.cut_after(0.2)
        with pytest.raises(ConnectionClosed) as cut:
            await asyncio.wait_for(ws.recv(), 5)
        assert time.monotonic() - started >= 0.15
        assert cut.value.rcvd is not None and cut.value.rcvd.code == 1001
    assert fake.wait_for(lambda: fake.open_connections == 0)


async def test_connections_are_closed_when_they_reach_the_maximum_age() -> None:
    with FakeBinance(now_ms=NOW, push_interval=0.05, max_connection_age=0.3) as fb:
        started = time.monotonic()
        async with websockets.connect(f"{fb.stream_url}ws/ethbtc@kline_1m") as ws:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
        assert 0.25 <= time.monotonic() - started < 3
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert fb.connections[0].close_reason == "max connection age"


def test_custom_symbols_listing_time_and_clean_shutdown() -> None:
    listed = calendar.timegm((2025, 1, 2, 0, 0, 0)) * 1000
    threads_before = set(threading.enumerate())
    spec = SymbolSpec(
        "FOOUSDT",
        "FOO",
        "USDT",
        "12.5",
        tick_size="0.001",
        step_size="0.1",
        minute_volume="500",
        listed_at=listed,
    )
    with FakeBinance([spec], now_ms=NOW) as fb:
        url = f"{fb.api_url}/v3/klines?symbol=FOOUSDT&interval=1d&startTime=0&limit=1"
        assert requests.get(url, timeout=5).json()[0][0] == listed
        # listed on a Thursday: the first weekly bar opens on the Monday before
        weekly = requests.get(url.replace("1d", "1w"), timeout=5).json()[0]
        assert weekly[0] == calendar.timegm((2024, 12, 30, 0, 0, 0)) * 1000
        assert weekly[1] == requests.get(url.replace("1d", "1m"), timeout=5).json()[0][1]
        before = requests.get(
            f"{fb.api_url}/v3/klines?symbol=FOOUSDT&interval=1m&endTime={listed - 1}", timeout=5
        )
        assert before.json() == []
        assert (
            requests.get(f"{fb.api_url}/v3/exchangeInfo?symbol=BTCUSDT", timeout=5).status_code
            == 400
        )
    assert set(threading.enumerate()) == threads_before
