"""The Polygon provider against a second, independent fake written from Polygon's documents
(tests/fakes/polygon_docs.py): the real populate.py and server.py, what a chart client sees
when Polygon does what its documents allow and the suite's own fake does not."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.data_providers.polygon.rest import PolygonRest
from backend.model import intervals
from tests.fakes.polygon_docs import RATE_LIMITED, DocsPolygon, Fault, Ticker
from tests.harness import (
    ServerProcess,
    WsClient,
    base_env,
    eventually,
    populate,
    populated_server,
    seconds,
)

HISTORY_TIMEOUT = 8.0
FIRST = 20.0
FIELDS = ("open", "high", "low", "close", "volume")
CRYPTO = [Ticker(f"X:{c}USD", f"{c} - United States dollar", "crypto") for c in "ABCDEFG"]
CRYPTO += [Ticker("X:BTCUSD", "Bitcoin - United States dollar", "crypto")]
CRYPTO += [Ticker("X:ETHUSD", "Ethereum - United States dollar", "crypto")]
CRYPTO += [Ticker("X:OLDUSD", "Delisted", "crypto", active=False)]
STOCKS = [Ticker("AAPL", "Apple Inc.", "stocks", "XNAS"), Ticker("MSFT", "Microsoft", "stocks")]
FX = [Ticker("C:EURUSD", "Euro - United States dollar", "fx")]


def data(name: str, interval: str, **extra: Any) -> dict[str, Any]:
    return {"type": "data", "source": "polygon", "name": name, "interval": interval, **extra}


def key_of(name: str, interval: str) -> Any:
    return lambda m: m.get("name") == name and m.get("interval") == interval


def about(name: str, interval: str) -> Any:
    """An ``error`` message about the chart ``(name, interval)``."""
    return lambda m: (
        (m.get("request") or {}).get("name") == name and key_of(name, interval)(m["request"])
    )


def points(rows: list[dict[str, Any]], name: str, interval: str) -> list[dict[str, Any]]:
    """What the wire should carry for these ``results`` rows of the fake."""
    base = f"polygon-{name}-{interval}"
    return [
        {"date": intervals.format_date(row["t"] // 1000)}
        | {f"{base}-{f}": float(row[f[0]]) for f in FIELDS}
        for row in rows
    ]


def expected(fake: DocsPolygon, name: str, multiplier: int, span: str, count: int) -> list[Any]:
    """The last ``count`` aggregates of the fake (the fake's tape ends seconds ago)."""
    now = int(time.time()) * 1000
    rows = fake.aggregates(name, multiplier, span, now - 40 * 3600_000, now)
    return rows[-count:]


def serve(fake: DocsPolygon, tmp: Path, **extra: str) -> Iterator[ServerProcess]:
    with populated_server(
        tmp,
        **(fake.settings | extra),
        HISTORY_TIMEOUT=str(HISTORY_TIMEOUT),
        STREAM_LINGER_SECONDS="0.2",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def fake() -> Iterator[DocsPolygon]:
    with DocsPolygon(
        CRYPTO + STOCKS + FX, page_size=3, aggs_page=120, delayed_markets={"stocks"}
    ) as polygon:
        # populate's second page of crypto is refused once, as past the free plan's 5 a minute
        polygon.fault(Fault(429, {"status": "ERROR", "error": RATE_LIMITED}, path="cursor="))
        yield polygon


@pytest.fixture(scope="module")
def server(fake: DocsPolygon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from serve(fake, tmp_path_factory.mktemp("polygon-docs"))


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[WsClient]:
    ws = await WsClient.open(server.ws_url)
    yield ws
    await ws.close()


async def first_init(client: WsClient, name: str, interval: str, **extra: Any) -> dict[str, Any]:
    mark = len(client.messages)
    await client.send(data(name, interval, **extra))
    return await client.wait_for("data_init", key_of(name, interval), FIRST, after=mark)


async def search(client: WsClient, text: str) -> list[str]:
    await client.send({"type": "search_data", "search": text})
    reply = await client.wait_for("search_data_done", lambda m: m["search"] == text)
    return [r["details"]["name"] for r in reply["results"]]


async def test_populate_follows_next_url_as_documented(fake: DocsPolygon, client: WsClient) -> None:
    """Every page of tickers is read (3 a page here), through ``next_url`` links that carry
    no ``apiKey``: each following page is asked with the key and the cursor alone; the page
    refused with 429 is asked again."""
    for ticker in CRYPTO + STOCKS + FX:
        names = await search(client, ticker.ticker)
        assert (ticker.ticker in names) is ticker.active, (ticker.ticker, names[:5])
    pages = [(q, form) for path, q, form in fake.requests if path == "/v3/reference/tickers"]
    assert fake.faults == []
    assert all(form != "none" for _, form in pages), pages
    follow = [q for q, _ in pages if "cursor" in q]
    assert follow and all(set(q) <= {"cursor", "apiKey"} for q in follow), follow
    # crypto: 9 active in pages of 3 (and one asked again after the 429); stocks, fx: 1 page
    assert len(pages) == 3 + 1 + 1 + 1, pages


@pytest.mark.parametrize(
    ("name", "interval", "multiplier", "span", "count"),
    [
        ("X:BTCUSD", "1m", 1, "minute", 300),  # three pages of 120
        ("X:ETHUSD", "1h", 1, "hour", 20),
        ("AAPL", "5m", 5, "minute", 50),  # status DELAYED, as on a delayed plan
    ],
)
async def test_data_init_equals_the_fakes_aggregates(
    fake: DocsPolygon,
    client: WsClient,
    name: str,
    interval: str,
    multiplier: int,
    span: str,
    count: int,
) -> None:
    init = await first_init(client, name, interval, count=count, stream=False)
    rows = expected(fake, name, multiplier, span, count)
    assert len(rows) == count
    assert init["data"] == points(rows, name, interval), client.of_type("error")


@pytest.mark.parametrize(
    ("headers", "minutes"),
    [({"Retry-After": "1"}, 15), ({}, 30)],
    ids=["with-retry-after", "without-retry-after"],
)
async def test_a_429_on_history_is_waited_out(
    fake: DocsPolygon, client: WsClient, headers: dict[str, str], minutes: int
) -> None:
    fake.fault(Fault(429, {"status": "ERROR", "error": RATE_LIMITED}, headers, "/v2/aggs/"))
    started = time.monotonic()
    init = await first_init(client, "X:BTCUSD", f"{minutes}m", count=30, stream=False)
    assert time.monotonic() - started < HISTORY_TIMEOUT
    assert fake.faults == []
    rows = expected(fake, "X:BTCUSD", minutes, "minute", 30)
    assert init["data"] == points(rows, "X:BTCUSD", f"{minutes}m"), client.of_type("error")


async def test_a_market_outside_the_rest_plan_is_an_error_with_polygons_words(
    fake: DocsPolygon, client: WsClient, server: ServerProcess
) -> None:
    fake.rest_plan.discard("stocks")
    try:
        started = time.monotonic()
        init = await first_init(client, "MSFT", "1h", count=10, stream=False)
        assert time.monotonic() - started < HISTORY_TIMEOUT
        errors = client.of_type("error")
        assert init["data"] == [] and errors, client.messages[-3:]
        assert errors[-1]["code"] == "auth_failed", errors
        assert "not entitled" in errors[-1]["message"], errors
    finally:
        fake.rest_plan.add("stocks")


async def live_init(client: WsClient, fake: DocsPolygon, name: str, interval: str) -> None:
    await first_init(client, name, interval, count=5)
    await eventually(
        lambda: any(name[2:5] in t for t in fake.subscribed("crypto")), FIRST, "the subscription"
    )


async def test_several_events_in_a_frame_and_symbols_nobody_asked_for(
    fake: DocsPolygon, client: WsClient
) -> None:
    await live_init(client, fake, "X:BTCUSD", "1m")
    now = int(time.time())
    mark = len(client.messages)
    seconds_ = [now - 2, now - 1, now]
    events = [fake.add_second("X:BTCUSD", s) for s in seconds_]
    foreign = [fake.add_second("X:ETHUSD", now), fake.add_second("X:AUSD", now)]
    minute = fake.event("X:BTCUSD", now - 60, kind="XA")
    status = {"ev": "status", "status": "success", "message": "subscribed to: XAS.BTC-USD"}
    assert fake.push("crypto", [events[0], foreign[0], status, events[1], minute, foreign[1]]) == 1
    fake.push("crypto", [events[2]])
    want = points(expected(fake, "X:BTCUSD", 1, "minute", 1), "X:BTCUSD", "1m")[0]
    await client.wait_for(
        "data_update", lambda m: m["name"] == "X:BTCUSD" and m["data"] == want, FIRST, mark
    )
    assert not [m for m in client.messages[mark:] if m.get("name") not in (None, "X:BTCUSD")]
    assert client.of_type("error", mark) == []


async def test_a_close_by_the_server_is_reconnected_and_resubscribed(
    fake: DocsPolygon, client: WsClient, server: ServerProcess
) -> None:
    await live_init(client, fake, "X:ETHUSD", "1m")
    opened = len(fake.conns)
    assert fake.close_all("crypto", 1000) == 1
    await eventually(lambda: "XAS.ETH-USD" in fake.subscribed("crypto"), FIRST, "resubscribed")
    assert len(fake.conns) == opened + 1
    now = int(time.time())
    mark = len(client.messages)
    fake.push("crypto", [fake.add_second("X:ETHUSD", now)])
    want = points(expected(fake, "X:ETHUSD", 1, "minute", 1), "X:ETHUSD", "1m")[0]
    await client.wait_for(
        "data_update", lambda m: m["name"] == "X:ETHUSD" and m["data"] == want, FIRST, mark
    )
    assert server.get("/health")["providers"]["polygon"]["state"] == "running"


async def test_a_cluster_outside_the_plan_is_told_to_clients_health_and_log(
    fake: DocsPolygon, client: WsClient, server: ServerProcess
) -> None:
    """Polygon answers ``auth_failed`` "Your plan doesn't include websocket access" to a
    cluster the plan lacks: the chart hears it as an error, /health and the log say it, and
    it is asked again after seconds, not in a loop."""
    fake.ws_plan.discard("stocks")
    try:
        await first_init(client, "AAPL", "1m", count=5)
        error = await client.wait_for("error", about("AAPL", "1m"), FIRST)
        assert error["code"] == "auth_failed", error
        assert "websocket access" in error["message"], error
        status = server.get("/health")["providers"]["polygon"]
        assert "websocket access" in str(status), status
        await eventually(
            lambda: "websocket access" in server.log_path.read_text(), 10, "the log line"
        )
        # a chart opened while the refusal lasts hears it too, not silence
        await first_init(client, "MSFT", "3m", count=5)
        error = await client.wait_for("error", about("MSFT", "3m"), FIRST)
        assert error["code"] == "auth_failed" and "websocket access" in error["message"], error
        tried = len([c for c in fake.conns if c.cluster == "stocks"])
        started = time.monotonic()
        await eventually(lambda: time.monotonic() - started > 2.5, 5, "2.5 s")
        assert len([c for c in fake.conns if c.cluster == "stocks"]) <= tried + 1
    finally:
        fake.ws_plan.add("stocks")


async def test_a_plan_refusal_after_auth_success_is_told_too(
    fake: DocsPolygon, client: WsClient, server: ServerProcess
) -> None:
    """The same refusal as the answer to a subscribe, after ``auth_success``, on a socket
    Polygon leaves open: told to the chart and /health, and the socket is not kept as if
    it streamed (its retry waits seconds)."""
    fake.refuse_on_subscribe.add("forex")
    try:
        opened = len(fake.conns)
        await first_init(client, "C:EURUSD", "1m", count=5)
        error = await client.wait_for("error", about("C:EURUSD", "1m"), FIRST)
        assert error["code"] == "auth_failed" and "websocket access" in error["message"], error
        assert "forex: auth_failed" in str(server.get("/health")["providers"]["polygon"])
        await eventually(lambda: not fake.open_conns("forex"), 5, "the refused socket closed")
        assert len(fake.conns) == opened + 1
    finally:
        fake.refuse_on_subscribe.discard("forex")


async def test_an_eviction_by_max_connections_is_told_and_retried_later(
    fake: DocsPolygon, client: WsClient, server: ServerProcess
) -> None:
    await live_init(client, fake, "X:BTCUSD", "5m")
    mark = len(client.messages)
    opened = len(fake.conns)
    intruder = await WsClient.open(fake.ws_url + "/crypto")  # another program, same key
    try:
        await intruder.send_raw('{"action":"auth","params":"docs-key"}')
        error = await client.wait_for("error", about("X:BTCUSD", "5m"), FIRST, mark)
        assert error["code"] == "max_connections", error
        assert "max_connections" in str(server.get("/health")["providers"]["polygon"])
        assert len(fake.conns) == opened + 1  # the intruder; no reconnect in a tight loop
    finally:
        await intruder.close()
    await eventually(lambda: "XAS.BTC-USD" in fake.subscribed("crypto"), 15, "back after 5 s")


async def test_populate_with_a_rejected_key_fails_clearly(tmp_path: Path) -> None:
    with DocsPolygon(CRYPTO[:2]) as polygon:
        env = base_env(tmp_path, **(polygon.settings | {"POLYGON_API_KEY": "wrong"}))
        started = time.monotonic()
        result = populate(env)
        assert result.returncode != 0
        assert "Unknown API Key" in result.stderr, result.stderr[-2000:]
        assert time.monotonic() - started < seconds(20)
        assert len(polygon.requests) <= 3, polygon.requests


@pytest.mark.parametrize(
    ("rest", "stream"),
    [("{rest}/", "{ws}/"), ("{rest}", "{ws}/crypto")],
    ids=["trailing-slashes", "stream-url-with-its-cluster"],
)
async def test_base_urls_as_polygon_documents_them(tmp_path: Path, rest: str, stream: str) -> None:
    """Polygon's documents give the REST base as ``https://api.polygon.io`` (Massive:
    ``https://api.massive.com``) and stream URLs with their cluster,
    ``wss://socket.polygon.io/stocks``, ``wss://delayed.massive.com/stocks``: settings
    copied from them work."""
    with DocsPolygon(CRYPTO[-3:]) as polygon:
        settings = {
            "POLYGON_API_URL": rest.format(rest=polygon.rest_url),
            "POLYGON_WS_URL": stream.format(ws=polygon.ws_url),
        }
        for running in serve(polygon, tmp_path, **settings):
            ws = await WsClient.open(running.ws_url)
            try:
                init = await first_init(ws, "X:BTCUSD", "1m", count=20)
                rows = expected(polygon, "X:BTCUSD", 1, "minute", 20)
                assert init["data"] == points(rows, "X:BTCUSD", "1m"), ws.of_type("error")
                await eventually(
                    lambda: "XAS.BTC-USD" in polygon.subscribed("crypto"), FIRST, "subscribed"
                )
                assert {c.path for c in polygon.conns} == {"/crypto"}
            finally:
                await ws.close()


def test_a_next_url_that_loops_back_ends_the_pages() -> None:
    """Polygon's next_url was seen to loop back to a page already read
    (polygon-io/issues#289): the pages were followed forever, so populate never ended. A
    next_url already followed ends them; every ticker is listed once."""
    tickers = [Ticker(f"T{n}", f"Ticker {n}", "stocks", "XNYS") for n in range(5)]
    with DocsPolygon(tickers, page_size=2) as fake:
        fake.loop_next_url = True
        rest = PolygonRest(fake.key, fake.rest_url)
        try:
            listed = [t.ticker for t in itertools.islice(rest.tickers("stocks"), 50)]
        finally:
            rest.close()
        assert listed == [t.ticker for t in tickers]
        assert len(fake.requests) == 3


@pytest.mark.parametrize("newest_first", [False, True], ids=["old-first", "new-first"])
async def test_a_ticker_listed_twice_is_stored_with_its_current_record(
    tmp_path: Path, newest_first: bool
) -> None:
    """Polygon has listed some tickers twice, an outdated record next to the current one
    (polygon-io/issues#165: CASY with its old upper-case name first); the database kept the
    first, so search showed the outdated name."""
    old = Ticker(
        "CASY", "CASEYS GENERAL STORES INC", "stocks", "XNAS", updated="2011-05-10T00:00:00Z"
    )
    new = Ticker(
        "CASY", "Casey's General Stores Inc", "stocks", "XNAS", updated="2021-10-07T00:00:00Z"
    )
    pair = [new, old] if newest_first else [old, new]
    with DocsPolygon([Ticker("AAPL", "Apple Inc.", "stocks", "XNAS"), *pair], page_size=2) as fake:
        env = base_env(tmp_path, **(fake.settings | {"POLYGON_MARKETS": "stocks"}))
        result = populate(env)
        assert result.returncode == 0, result.stderr
        with ServerProcess(env, tmp_path / "server.log") as server:
            client = await WsClient.open(server.ws_url)
            try:
                await client.send({"type": "search_data", "search": "CASY"})
                reply = await client.wait_for("search_data_done", lambda m: m["search"] == "CASY")
            finally:
                await client.close()
    labels = [
        r["details"]["name_label"] for r in reply["results"] if r["details"]["name"] == "CASY"
    ]
    assert labels == ["Casey's General Stores Inc"], labels
