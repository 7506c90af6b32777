"""The Binance provider against a second, independent fake written from Binance's documents
(tests/fakes/binance_docs.py): what a chart client sees when the exchange does what the
documents allow and the suite's own fake does not."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.model import intervals
from tests.fakes.binance_docs import MINUTE, DocsBinance, Fault, Symbol
from tests.harness import (
    ServerProcess,
    WsClient,
    base_env,
    eventually,
    populate,
    populated_server,
    seconds,
)
from tests.test_binance_provider import data, key_of, points

HISTORY_TIMEOUT = 6.0
FIRST = 30.0


def frozen(minutes_ago: int) -> int:
    return (int(time.time()) // 60 - minutes_ago) * MINUTE + 20_000


def serve(fake: DocsBinance, tmp: Path) -> Iterator[ServerProcess]:
    """A populated server on ``fake``."""
    with populated_server(
        tmp, **fake.settings, HISTORY_TIMEOUT=str(HISTORY_TIMEOUT), STREAM_LINGER_SECONDS="0.3"
    ) as running:
        yield running


@pytest.fixture(scope="module")
def exchange() -> Iterator[DocsBinance]:
    fresh = Symbol("NEWUSDT", "NEW", "USDT", listed_ms=frozen(30) - 40 * MINUTE)
    symbols = [Symbol("BTCUSDT", "BTC", "USDT"), Symbol("ETHUSDT", "ETH", "USDT"), fresh]
    symbols += [
        Symbol("HALTUSDT", "HALT", "USDT", "HALT"),
        Symbol("BRKUSDT", "BRK", "USDT", "BREAK"),
    ]
    with DocsBinance(symbols, now_ms=frozen(30), filler_symbols=3000) as fake:
        yield fake


@pytest.fixture(scope="module")
def server(
    exchange: DocsBinance, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    yield from serve(exchange, tmp_path_factory.mktemp("binance-docs"))


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[WsClient]:
    ws = await WsClient.open(server.ws_url)
    yield ws
    await ws.close()


async def test_populate_lists_trading_symbols_only(client: WsClient) -> None:
    for text, found in (("BTCUSDT", True), ("HALTUSDT", False), ("BRKUSDT", False)):
        await client.send({"type": "search_data", "search": text})
        reply = await client.wait_for("search_data_done", lambda m, t=text: m["search"] == t)
        names = [r["details"]["name"] for r in reply["results"]]
        assert (text in names) is found, (text, names[:5])
    await client.send({"type": "search_data", "search": "F02999USDT"})
    reply = await client.wait_for("search_data_done", lambda m: m["search"] == "F02999USDT")
    assert reply["results"][0]["details"]["name"] == "F02999USDT"


@pytest.mark.parametrize("count", [1, 300, 1500])
async def test_data_init_equals_the_exchange_rows(
    exchange: DocsBinance, client: WsClient, count: int
) -> None:
    await client.send(data("BTCUSDT", "1m", count=count, stream=False))
    init = await client.wait_for("data_init", key_of("BTCUSDT", "1m"), timeout=HISTORY_TIMEOUT)
    rows = exchange.klines("BTCUSDT", "1m", None, None, 1000)
    if count > 1000:
        rows = exchange.klines("BTCUSDT", "1m", None, rows[0][0] - 1, count - 1000) + rows
    assert init["data"] == points(rows[-count:], "BTCUSDT", "1m")
    assert client.of_type("error") == []


async def test_history_pages_back_meet_without_gaps(
    exchange: DocsBinance, client: WsClient
) -> None:
    await client.send(data("ETHUSDT", "5m", count=300, stream=False))
    init = await client.wait_for("data_init", key_of("ETHUSDT", "5m"), timeout=HISTORY_TIMEOUT)
    bars = init["data"]
    for _ in range(5):
        end = bars[0]["date"]
        page = (await history(client, "ETHUSDT", "5m", end, 700))["data"]
        assert page[-1]["date"] == end
        bars = page[:-1] + bars
    first = intervals.parse_query_time(bars[0]["date"]) * 1000
    rows = exchange.klines("ETHUSDT", "5m", first, None, 1000)
    rows += exchange.klines("ETHUSDT", "5m", rows[-1][0] + 1, None, 1000)
    rows += exchange.klines("ETHUSDT", "5m", rows[-1][0] + 1, None, 1000)
    rows += exchange.klines("ETHUSDT", "5m", rows[-1][0] + 1, None, 1000)
    assert bars == points(rows, "ETHUSDT", "5m")


async def test_a_closing_kline_and_the_next_reach_the_chart(
    exchange: DocsBinance, client: WsClient
) -> None:
    await client.send(data("BTCUSDT", "1m", count=5))
    init = await client.wait_for("data_init", key_of("BTCUSDT", "1m"), timeout=FIRST)
    exchange.advance(1)
    await client.wait_for("data_update", key_of("BTCUSDT", "1m"), timeout=FIRST)
    exchange.advance(60)
    last = init["data"][-1]["date"]
    want = intervals.format_date(intervals.parse_query_time(last) + 60)
    update = await client.wait_for(
        "data_update", lambda m: m["name"] == "BTCUSDT" and m["data"]["date"] == want, FIRST
    )
    assert (
        update["data"]
        == points(exchange.klines("BTCUSDT", "1m", None, None, 1), "BTCUSDT", "1m")[0]
    )
    finals = [m["data"] for m in client.of_type("data_update") if m["data"]["date"] == last]
    t = intervals.parse_query_time(last) * 1000
    assert finals[-1] == points(exchange.klines("BTCUSDT", "1m", t, t, 1), "BTCUSDT", "1m")[0]


async def test_foreign_out_of_order_invalid_and_huge_messages_hurt_nothing(
    exchange: DocsBinance, client: WsClient, server: ServerProcess
) -> None:
    await client.send(data("BTCUSDT", "1m", count=5))
    await client.wait_for("data_init", key_of("BTCUSDT", "1m"), timeout=FIRST)
    exchange.advance(1)
    await client.wait_for("data_update", key_of("BTCUSDT", "1m"), timeout=FIRST)
    now = exchange.now_ms()
    t = now // MINUTE * MINUTE
    opened = len(exchange.conns)
    mark = len(client.messages)
    # an event of a symbol nobody asked for, on our stream and bare
    exchange.send_raw(exchange.event("ETHUSDT", "1m", t), "btcusdt@kline_1m")
    exchange.send_raw(exchange.event("ETHUSDT", "1m", t), "ethusdt@kline_1m")
    # an older bar after newer ones, and an older event of the forming bar
    exchange.send_raw(exchange.event("BTCUSDT", "1m", t - 5 * MINUTE, now), "btcusdt@kline_1m")
    early = exchange.event("BTCUSDT", "1m", t, now - 10_000)
    exchange.send_raw(early, "btcusdt@kline_1m")
    exchange.send_raw("{not json")
    exchange.send_raw(b"\x00\x01binary")
    exchange.send_raw(json.dumps({"stream": "btcusdt@kline_1m", "data": {"pad": "x" * 1_500_000}}))
    exchange.advance(1)
    await client.wait_for(
        "data_update",
        lambda m: (
            m["name"] == "BTCUSDT"
            and m["data"]
            == points(exchange.klines("BTCUSDT", "1m", None, None, 1), "BTCUSDT", "1m")[0]
        ),
        timeout=FIRST,
    )
    dates = [m["data"]["date"] for m in client.of_type("data_update", mark)]
    assert min(dates) == intervals.format_date(t // 1000), dates
    assert not [m for m in client.messages[mark:] if m.get("name") == "ETHUSDT"]
    assert len(exchange.conns) == opened, [c.closed for c in exchange.conns]
    assert server.get("/health")["providers"]["binance"]["state"] == "running"


async def first_init(client: WsClient, name: str, interval: str, **extra: Any) -> dict[str, Any]:
    mark = len(client.messages)
    await client.send(data(name, interval, **extra))
    return await client.wait_for("data_init", key_of(name, interval), FIRST, after=mark)


async def served_again(client: WsClient, name: str, interval: str, count: int) -> dict[str, Any]:
    """Ask for the bars again (``stream: false``) until an answer holds some: the upstream's
    refusal or slow call is over (each answer until then an error, at once)."""
    deadline = time.monotonic() + seconds(30)
    while True:
        init = await first_init(client, name, interval, count=count, stream=False)
        if init["data"] or time.monotonic() > deadline:
            return init
        await asyncio.sleep(0.25)  # the pace of asking, not a wait for anything


@pytest.mark.parametrize(
    "case",
    [
        ("2h", Fault(429, '{"code":-1003,"msg":"Too many requests"}', {"Retry-After": "2"})),
        ("6h", Fault(503, "<html><body>503 Service Unavailable</body></html>")),
        ("8h", Fault(200, "<html>maintenance</html>")),
        ("12h", Fault(502, "")),
        ("1d", Fault(200, None, delay=2.0)),
    ],
    ids=["429", "503-html", "200-html", "502-empty", "slow"],
)
async def test_a_rest_fault_on_history_still_gives_the_rows(
    exchange: DocsBinance, client: WsClient, case: tuple[str, Fault]
) -> None:
    interval, fault = case
    fault.path = "klines"
    exchange.fault(fault)
    started = time.monotonic()
    init = await first_init(client, "ETHUSDT", interval, count=50, stream=False)
    took = time.monotonic() - started
    rows = exchange.klines("ETHUSDT", interval, None, None, 50)
    assert init["data"] == points(rows, "ETHUSDT", interval), client.of_type("error")
    assert took < HISTORY_TIMEOUT
    assert exchange.faults == []


async def test_a_ban_gives_an_error_at_once_and_history_after_it(
    exchange: DocsBinance, client: WsClient, server: ServerProcess
) -> None:
    exchange.fault(
        Fault(
            418,
            '{"code":-1003,"msg":"Way too much request weight used; IP banned"}',
            {"Retry-After": "6"},
            path="klines",
        )
    )
    init = await first_init(client, "BTCUSDT", "4h", count=20, stream=False)
    errors = client.of_type("error")
    assert init["data"] == [] and errors, client.messages[-3:]
    init = await served_again(client, "BTCUSDT", "4h", 20)  # once the ban (6 s) is over
    assert init["data"] == points(exchange.klines("BTCUSDT", "4h", None, None, 20), "BTCUSDT", "4h")


async def test_a_refusal_by_location_names_the_binance_us_settings(
    exchange: DocsBinance, client: WsClient
) -> None:
    """Binance.com answers an address in a country it does not serve (the US) HTTP 451; the
    error says where the same API is served there."""
    exchange.fault(
        Fault(
            451,
            '{"code":0,"msg":"Service unavailable from a restricted location according to '
            "'b. Eligibility' in https://www.binance.com/en/terms. Please contact customer "
            'service if you believe you received this message in error."}',
            path="klines",
        )
    )
    init = await first_init(client, "BTCUSDT", "8h", count=20, stream=False)
    errors = client.of_type("error")
    assert init["data"] == [] and errors, client.messages[-3:]
    message = errors[-1]["message"]
    assert "restricted location" in message and "HTTP 451" in message, message
    assert "BINANCE_API_URL=https://api.binance.us" in message, message
    assert exchange.faults == []


@pytest.fixture(scope="module")
def live() -> Iterator[DocsBinance]:
    with DocsBinance(now_ms=frozen(30), ping_interval=1.0, pong_timeout=3.0) as fake:
        yield fake


@pytest.fixture(scope="module")
def live_server(
    live: DocsBinance, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    yield from serve(live, tmp_path_factory.mktemp("binance-docs-live"))


@pytest.fixture
async def viewer(live_server: ServerProcess) -> AsyncIterator[WsClient]:
    ws = await WsClient.open(live_server.ws_url)
    yield ws
    await ws.close()


async def test_server_pings_get_their_payload_back(live: DocsBinance, viewer: WsClient) -> None:
    await first_init(viewer, "BTCUSDT", "1m", count=5)
    live.advance(0.5)
    await viewer.wait_for("data_update", key_of("BTCUSDT", "1m"), FIRST)
    conn = live.open_conns()[0]
    await eventually(lambda: len(conn.pongs) >= 3, 15, "three pings answered")
    assert conn.closed is None and not conn.ws.closed
    assert not conn.pings


async def test_a_plain_close_loses_no_bar(live: DocsBinance, viewer: WsClient) -> None:
    init = await first_init(viewer, "ETHUSDT", "1m", count=5)
    live.advance(0.5)
    await viewer.wait_for("data_update", key_of("ETHUSDT", "1m"), FIRST)
    assert live.close_all(1000) == 1
    live.advance(180)
    await viewer.wait_for(
        "data_update",
        lambda m: (
            m["name"] == "ETHUSDT"
            and m["data"] == points(live.klines("ETHUSDT", "1m", None, None, 1), "ETHUSDT", "1m")[0]
        ),
        FIRST,
    )
    first = intervals.parse_query_time(init["data"][-1]["date"]) * 1000
    rows = live.klines("ETHUSDT", "1m", first, None, 10)
    last_of = {m["data"]["date"]: m["data"] for m in viewer.of_type("data_update")}
    assert [last_of.get(p["date"]) for p in points(rows, "ETHUSDT", "1m")] == points(
        rows, "ETHUSDT", "1m"
    )


async def test_a_refused_subscribe_is_told_and_asked_again(
    live: DocsBinance, viewer: WsClient
) -> None:
    # (the stream of the test before lingers and is resubscribed after its reconnect: only
    # ours is refused, or that SUBSCRIBE may take the refusal)
    live.refuse, live.refuse_stream = 1, "btcusdt@kline_3m"
    await first_init(viewer, "BTCUSDT", "3m", count=5)
    error = await viewer.wait_for("error", timeout=FIRST)
    assert "refused" in error["message"], error
    live.advance(0.5)
    await viewer.wait_for("data_update", key_of("BTCUSDT", "3m"), FIRST)


LOCATION_BODY = (
    '{"code":0,"msg":"Service unavailable from a restricted location according to '
    "'b. Eligibility' in https://www.binance.com/en/terms. Please contact customer "
    'service if you believe you received this message in error."}'
)


async def test_a_stream_refused_by_location_names_the_binance_us_url(
    live: DocsBinance, viewer: WsClient
) -> None:
    """stream.binance.com refuses the handshake of a US address with HTTP 451
    (binance/binance-connector-python#201). That was taken for a relay that wants the
    streams in the URL (a warning saying so, the streams moved there) and the chart heard
    nothing; it hears why and which URL serves it now, and the stream comes back when the
    refusals end."""
    await first_init(viewer, "ETHUSDT", "30m", count=5)
    live.advance(0.5)
    await viewer.wait_for("data_update", key_of("ETHUSDT", "30m"), FIRST)
    live.refuse_handshake = (451, LOCATION_BODY)
    try:
        opened = len(live.conns)
        live.close_all(1000)
        error = await viewer.wait_for(
            "error", lambda m: "451" in m.get("message", ""), timeout=FIRST
        )
        assert "BINANCE_STREAM_URL=wss://stream.binance.us:9443" in error["message"], error
        assert live.handshakes_refused >= 1
    finally:
        live.refuse_handshake = None
    live.advance(0.5)
    mark = len(viewer.messages)
    await viewer.wait_for("data_update", key_of("ETHUSDT", "30m"), FIRST, after=mark)
    assert len(live.conns) == opened + 1
    assert "streams=" not in live.conns[-1].path, live.conns[-1].path  # not moved to the URL


async def test_a_message_too_big_for_the_client_costs_one_reconnect(
    live: DocsBinance, viewer: WsClient
) -> None:
    await first_init(viewer, "BTCUSDT", "15m", count=5)
    live.advance(0.5)
    await viewer.wait_for("data_update", key_of("BTCUSDT", "15m"), FIRST)
    opened = len(live.conns)
    live.send_raw(json.dumps({"stream": "x", "data": {"pad": "x" * 5_000_000}}))
    await eventually(lambda: len(live.conns) > opened, 15, "a reconnect after the message")
    live.advance(0.5)
    mark = len(viewer.messages)
    await viewer.wait_for("data_update", key_of("BTCUSDT", "15m"), FIRST, after=mark)
    assert len(live.conns) == opened + 1


async def history(client: WsClient, name: str, interval: str, end: str, count: int) -> Any:
    seen = len(client.of_type("data_history"))
    await client.send(
        {
            "type": "data_history",
            "source": "binance",
            "name": name,
            "interval": interval,
            "end": end,
            "count": count,
        }
    )
    for _ in range(1500):
        if len(client.of_type("data_history")) > seen:
            return client.of_type("data_history")[seen]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no data_history; last {client.messages[-3:]}")


async def test_a_symbol_listed_recently_has_what_it_has(
    exchange: DocsBinance, client: WsClient
) -> None:
    init = await first_init(client, "NEWUSDT", "1m", count=300, stream=False)
    rows = exchange.klines("NEWUSDT", "1m", None, None, 1000)
    listed = exchange.symbols["NEWUSDT"].listed_ms
    assert rows[0][0] == listed // MINUTE * MINUTE and len(rows) < 100
    assert init["data"] == points(rows, "NEWUSDT", "1m")
    started = time.monotonic()
    page = await history(client, "NEWUSDT", "1m", init["data"][0]["date"], 300)
    assert page["data"] == init["data"][:1], page
    page = await history(client, "NEWUSDT", "1m", "2020-01-01 00:00:00", 300)
    assert page["data"] == []
    assert time.monotonic() - started < HISTORY_TIMEOUT
    assert client.of_type("error") == []


async def test_history_ends_mid_bar_and_in_the_future(
    exchange: DocsBinance, client: WsClient
) -> None:
    init = await first_init(client, "ETHUSDT", "15m", count=10, stream=False)
    last = init["data"][-1]["date"]
    mid = intervals.format_date(intervals.parse_query_time(init["data"][-3]["date"]) + 65)
    page = await history(client, "ETHUSDT", "15m", mid, 5)
    assert page["data"] == init["data"][-7:-2], page
    page = await history(client, "ETHUSDT", "15m", "2099-01-01 00:00:00", 4)
    assert page["data"] == init["data"][-4:] and page["data"][-1]["date"] == last


async def test_a_history_answer_slower_than_the_timeout_is_an_error_in_time(
    exchange: DocsBinance, client: WsClient
) -> None:
    exchange.fault(Fault(200, None, delay=HISTORY_TIMEOUT + 4, path="klines"))
    started = time.monotonic()
    init = await first_init(client, "BTCUSDT", "8h", count=10, stream=False)
    assert time.monotonic() - started < HISTORY_TIMEOUT + 1
    assert init["data"] == [] and client.of_type("error"), client.messages[-3:]
    init = await served_again(client, "BTCUSDT", "8h", 10)  # once the slow call is over
    assert init["data"] == points(exchange.klines("BTCUSDT", "8h", None, None, 10), "BTCUSDT", "8h")


@pytest.mark.parametrize("interval", ["1w", "1M", "12h"])
async def test_week_and_month_bars_are_the_exchange_rows(
    exchange: DocsBinance, client: WsClient, interval: str
) -> None:
    init = await first_init(client, "BTCUSDT", interval, count=40, stream=False)
    rows = exchange.klines("BTCUSDT", interval, None, None, 40)
    assert init["data"] == points(rows, "BTCUSDT", interval)
    page = await history(client, "BTCUSDT", interval, init["data"][5]["date"], 3)
    assert page["data"] == init["data"][3:6]


@pytest.mark.parametrize(
    ("api_suffix", "stream_suffix"), [("", "stream"), ("/api/v3", "ws")], ids=["host", "v3-ws"]
)
async def test_base_urls_as_binance_documents_them(
    tmp_path: Path, api_suffix: str, stream_suffix: str
) -> None:
    """Binance's documents name ``https://api.binance.com`` the REST base endpoint and show
    streams at ``wss://stream.binance.com:9443/ws`` and ``/stream``: settings copied from them
    work (they got HTTP 404 on every REST call, and ``/stream/stream`` for streams)."""
    with DocsBinance(now_ms=frozen(30)) as fake:
        settings = fake.settings
        settings["BINANCE_API_URL"] = settings["BINANCE_API_URL"].removesuffix("/api") + api_suffix
        settings["BINANCE_STREAM_URL"] += stream_suffix
        env = base_env(tmp_path, **settings, HISTORY_TIMEOUT=str(HISTORY_TIMEOUT))
        result = populate(env)
        assert result.returncode == 0, result.stderr
        with ServerProcess(env, tmp_path / "server.log") as running:
            ws = await WsClient.open(running.ws_url)
            try:
                init = await first_init(ws, "BTCUSDT", "1m", count=20)
                rows = fake.klines("BTCUSDT", "1m", None, None, 20)
                assert init["data"] == points(rows, "BTCUSDT", "1m"), ws.of_type("error")
                fake.advance(1)
                latest = points(fake.klines("BTCUSDT", "1m", None, None, 1), "BTCUSDT", "1m")[0]
                # the stream's state of the bar now (one from before the advance, pushed as
                # the stream opened, may come first)
                mine = key_of("BTCUSDT", "1m")
                await ws.wait_for("data_update", lambda m: mine(m) and m["data"] == latest, FIRST)
            finally:
                await ws.close()
