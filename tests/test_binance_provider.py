"""The Binance provider end to end: the real server with ``PROVIDERS=binance`` against the fake
exchange (tests/fakes/binance.py) on loopback, plus its stream and REST parts in-process.

The fake's clock is frozen a few minutes behind the real time, so every bar can be compared
exactly with ``fake.klines(...)``; the reconnect test moves it forward while the connection is
down (never past the hub's own clock, which does not serve bars from its future).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from backend import settings as config
from backend.data_providers import binance as binance_provider
from backend.data_providers.binance import BinanceProvider, _Key
from backend.data_providers.binance import rest as rest_module
from backend.data_providers.binance.pacing import RollingLimiter, StreamTuning, backoff_delay
from backend.data_providers.binance.parse import KlineUpdate, stream_name
from backend.data_providers.binance.rest import RestGate
from backend.data_providers.binance.stream import StreamManager
from backend.errors import ProviderUnavailable, RateLimited, UnknownSymbol
from backend.model import intervals
from backend.runtime.messages import BarUpdate, Notice
from tests.fakes.binance import FakeBinance, thread_event_loop
from tests.fakes.binance_data import DEFAULT_LISTED_AT
from tests.harness import ServerProcess, WsClient, base_env, populate, seconds

FIELDS = ("open", "high", "low", "close", "volume")
MINUTE_MS = 60_000
HISTORY_TIMEOUT = 6.0  # so the provider's longest REST wait is 4 s
# A fresh server's first live bar: its provider process starts, connects and subscribes
# (a SUBSCRIBE unanswered for 3 s is sent again): more than 10 s on a loaded machine.
FIRST_UPDATE = 30.0


def frozen_ms(minutes_ago: int) -> int:
    """A frozen exchange time 20 s into a minute, ``minutes_ago`` minutes before now."""
    return (int(time.time()) // 60 - minutes_ago) * MINUTE_MS + 20_000


async def inits_then_a_new_kline(
    exchange: FakeBinance, *charts: tuple[WsClient, list[tuple[str, str]]]
) -> None:
    """Wait for the ``data_init`` of each chart's keys, then move the exchange's clock on by
    a millisecond, so that the next kline of every stream is a new one.

    The exchange's clock is frozen, so a stream sends one kline and then the same kline
    again and again, which the provider drops as repeats. On a loaded machine that one kline
    can reach the hub before the history answer behind the ``data_init``: it is then in the
    ``data_init`` (as it should be), and no ``data_update`` ever follows. A kline made after
    the ``data_init`` came (its updates start with it) reaches the client."""
    for client, keys in charts:
        for name, interval in keys:
            await client.wait_for("data_init", key_of(name, interval), timeout=FIRST_UPDATE)
    exchange.advance(0.001)


async def first_update(
    client: WsClient,
    exchange: FakeBinance,
    name: str,
    interval: str,
    timeout: float = FIRST_UPDATE,
) -> dict[str, Any]:
    """The key's first ``data_update`` after its ``data_init`` (see inits_then_a_new_kline)."""
    await inits_then_a_new_kline(exchange, (client, [(name, interval)]))
    return await client.wait_for("data_update", key_of(name, interval), timeout=timeout)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBinance]:
    with FakeBinance(now_ms=frozen_ms(6), push_interval=0.2) as exchange:
        yield exchange
        assert exchange.violations == []
        assert exchange.errors == []


@pytest.fixture(scope="module")
def env(fake: FakeBinance, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return base_env(
        tmp_path_factory.mktemp("binance"),
        **fake.settings,
        HISTORY_TIMEOUT=str(HISTORY_TIMEOUT),
        STREAM_LINGER_SECONDS="0.3",
    )


@pytest.fixture(scope="module")
def populated(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = populate(env)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def server(
    env: dict[str, str], populated: subprocess.CompletedProcess[str]
) -> Iterator[ServerProcess]:
    with ServerProcess(env, Path(env["DB"]).parent / "server.log") as running:
        yield running


def data(name: str, interval: str, **extra: Any) -> dict[str, Any]:
    return {"type": "data", "source": "binance", "name": name, "interval": interval, **extra}


def key_of(name: str, interval: str) -> Any:
    return lambda m: m.get("name") == name and m.get("interval") == interval


def points(rows: list[list[Any]], name: str, interval: str) -> list[dict[str, Any]]:
    """What the wire should carry for these REST rows."""
    base = f"binance-{name}-{interval}"
    return [
        {"date": intervals.format_date(row[0] // 1000)}
        | {f"{base}-{f}": float(v) for f, v in zip(FIELDS, row[1:6], strict=True)}
        for row in rows
    ]


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """``fake.wait_for`` without blocking the event loop (and the clients' readers)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def status(server: ServerProcess) -> str:
    return str(server.get("/health")["providers"]["binance"]["status"])


async def watch_status(server: ServerProcess, seen: set[str], stop: asyncio.Event) -> None:
    while not stop.is_set():
        seen.add(await asyncio.to_thread(status, server))
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------ symbols and history


async def test_populate_lists_the_trading_symbols_with_labels_and_search_finds_them(
    populated: subprocess.CompletedProcess[str], client: WsClient
) -> None:
    assert "binance: 4 rows" in populated.stdout  # BTCUSDT ETHUSDT ETHBTC BNBUSDT, no LUNAUSDT
    await client.send({"type": "search_data", "search": "bitcoin"})
    found = await client.wait_for("search_data_done")
    names = {r["name"]: r["details"] for r in found["results"]}
    assert set(names) == {"BTCUSDT", "ETHBTC"}
    assert names["BTCUSDT"]["name_label"] == "Bitcoin / TetherUS"
    assert names["BTCUSDT"]["source_label"] == "Binance"
    assert "Crypto" in names["BTCUSDT"]["categories"]
    assert names["BTCUSDT"]["price_precision"] == 2
    assert names["ETHBTC"]["price_precision"] == 5
    after = len(client.messages)
    await client.send({"type": "search_data", "search": "LUNAUSDT"})
    none = await client.wait_for("search_data_done", after=after)
    assert [r["name"] for r in none["results"]] == []  # status BREAK: not listed


@pytest.mark.parametrize(
    ("name", "interval", "count"),
    [("BTCUSDT", "1m", 1500), ("ETHUSDT", "1h", 300), ("ETHBTC", "1d", 200),
     ("BTCUSDT", "1w", 40), ("ETHUSDT", "1M", 12)],
)  # fmt: skip
async def test_data_init_equals_the_exchange_klines_exactly(
    fake: FakeBinance, client: WsClient, name: str, interval: str, count: int
) -> None:
    await client.send(data(name, interval, count=count, stream=False))
    init = await client.wait_for("data_init", key_of(name, interval), timeout=HISTORY_TIMEOUT)
    rows = fake.klines(name, interval, limit=min(count, 1000))
    if count > 1000:
        rows = fake.klines(name, interval, end_time=rows[0][0] - 1, limit=count - 1000) + rows
    assert init["data"] == points(rows, name, interval)
    assert client.of_type("error") == []


# ------------------------------------------------------------------ live updates


async def test_live_updates_reach_every_client_over_one_upstream_connection(
    fake: FakeBinance, server: ServerProcess
) -> None:
    first, second = await WsClient.open(server.ws_url), await WsClient.open(server.ws_url)
    keys = [("BTCUSDT", "1m"), ("ETHUSDT", "1m"), ("ETHBTC", "5m"), ("BNBUSDT", "1h")]
    try:
        await first.send(*(data(n, i, count=5) for n, i in keys))
        await second.send(*(data(n, i, count=5) for n, i in keys[1:]))
        await inits_then_a_new_kline(fake, (first, keys), (second, keys[1:]))
        for ws, wanted in ((first, keys), (second, keys[1:])):
            for name, interval in wanted:
                update = await ws.wait_for(
                    "data_update", key_of(name, interval), timeout=FIRST_UPDATE
                )
                assert [update["data"]] == points(
                    fake.klines(name, interval, limit=1), *(name, interval)
                )
        assert fake.open_connections == 1
        assert sorted(fake.streams_per_connection().values()) == [4]
        subscribes = [f.text for f in fake.ws_frames if '"SUBSCRIBE"' in f.text]
        assert len(subscribes) < len(keys)  # batched: several streams per frame
    finally:
        await first.close()
        await second.close()
    assert fake.violations == []


async def test_bursts_of_subscribes_and_unsubscribes_are_batched_and_paced(
    fake: FakeBinance, server: ServerProcess
) -> None:
    keys = [(s, i) for s in ("BTCUSDT", "ETHUSDT", "ETHBTC", "BNBUSDT") for i in ("3m", "5m")]
    keys += [(s, i) for s in ("BTCUSDT", "ETHUSDT") for i in ("15m", "30m", "2h", "6h", "8h")]
    assert await eventually(lambda: fake.open_connections == 0)  # earlier tests' streams left
    holder, burst = await WsClient.open(server.ws_url), await WsClient.open(server.ws_url)
    try:
        await holder.send(data("BTCUSDT", "12h", count=2))  # keeps the connection open
        await first_update(holder, fake, "BTCUSDT", "12h")
        mark = len(fake.ws_frames)
        for name, interval in keys:  # one client frame each: a burst of subscriptions
            await burst.send(data(name, interval, count=2))
        await inits_then_a_new_kline(fake, (burst, keys))
        for name, interval in keys:  # (a generous wait: the subscriptions are paced)
            try:
                await burst.wait_for("data_update", key_of(name, interval), timeout=30)
            except AssertionError as missing:  # what the exchange was asked, what came back
                sent = [f.text for f in fake.ws_frames[mark:]]
                got = sorted(
                    {(m["type"], m.get("name"), m.get("interval")) for m in burst.messages}
                )
                raise AssertionError(
                    f"{name} {interval}: {missing}; frames to the exchange: {sent}; streams "
                    f"per connection: {fake.streams_per_connection()}; received: {got}"
                ) from None
        await burst.close()  # after the linger: a burst of unsubscriptions
        assert await eventually(lambda: list(fake.streams_per_connection().values()) == [1])
    finally:
        await burst.close()  # (again, if the test failed before: no socket left open)
        await holder.close()
    frames = [json.loads(f.text) for f in fake.ws_frames[mark:]]
    subscribed = [p for f in frames if f["method"] == "SUBSCRIBE" for p in f["params"]]
    unsubscribed = [p for f in frames if f["method"] == "UNSUBSCRIBE" for p in f["params"]]
    assert sorted(subscribed) == sorted(unsubscribed) == sorted(stream_name(*k) for k in keys)
    assert len(frames) < len(keys)  # several streams per frame
    times: dict[int, list[float]] = {}
    for frame in fake.ws_frames:
        times.setdefault(frame.conn_id, []).append(frame.monotonic)
    for sent in times.values():  # any six frames of a connection span more than a second
        assert all(b - a > 1.0 for a, b in zip(sent, sent[5:], strict=False))
    assert fake.violations == []


async def test_a_dropped_connection_is_refilled_so_store_and_client_have_every_bar(
    fake: FakeBinance, server: ServerProcess, client: WsClient
) -> None:
    name, interval = "BNBUSDT", "1m"
    await client.send(data(name, interval, count=5))
    init = await client.wait_for("data_init", key_of(name, interval))
    m0 = init["data"][-1]["date"]
    await first_update(client, fake, name, interval)
    opened = fake.connections_opened
    mark = len(client.messages)
    assert fake.drop_connections() == 1
    fake.advance(5 * 60)  # the exchange trades on: five bars close while we are away
    m0_ms = intervals.parse_date(m0) * 1000
    expected = points(fake.klines(name, interval, start_time=m0_ms, limit=6), name, interval)
    assert expected[0]["date"] == m0
    assert len(expected) == 6
    await client.wait_for(
        "data_update", lambda m: m["data"]["date"] == expected[-1]["date"], after=mark
    )
    assert fake.connections_opened == opened + 1
    latest: dict[str, dict[str, Any]] = {}
    for message in client.of_type("data_update", mark):
        latest[message["data"]["date"]] = message["data"]
    assert [latest[p["date"]] for p in expected] == expected  # every bar, final values
    store = await WsClient.open(server.ws_url)
    try:
        await store.send(data(name, interval, count=10, stream=False))
        answer = await store.wait_for("data_init", key_of(name, interval))
        assert answer["data"] == points(fake.klines(name, interval, limit=10), name, interval)
    finally:
        await store.close()


async def test_live_bars_are_written_to_the_store_with_their_final_values(
    fake: FakeBinance, server: ServerProcess, client: WsClient, env: dict[str, str]
) -> None:
    name, interval = "ETHBTC", "1m"
    await client.send(data(name, interval, count=3))
    init = await client.wait_for("data_init", key_of(name, interval))
    forming = init["data"][-1]["date"]  # stored as forming by the history answer
    await first_update(client, fake, name, interval)
    fake.advance(45)  # the forming bar closes on the live stream
    await client.wait_for(
        "data_update", lambda m: key_of(name, interval)(m) and m["data"]["date"] > forming
    )
    forming_ms = intervals.parse_date(forming) * 1000
    [final] = points(fake.klines(name, interval, start_time=forming_ms, limit=1), name, interval)
    base = f"binance-{name}-{interval}"
    expected = (*(final[f"{base}-{f}"] for f in FIELDS), 0)

    def stored() -> tuple[Any, ...] | None:
        with contextlib.closing(sqlite3.connect(env["DB"])) as db:
            row: tuple[Any, ...] | None = db.execute(
                "SELECT o, h, l, c, v, forming FROM bars JOIN bar_series s ON s.id = bars.series"
                " WHERE s.source = 'binance' AND s.name = ? AND s.interval = ? AND t = ?",
                (name, interval, forming_ms // 1000),
            ).fetchone()
            return row

    assert await eventually(lambda: stored() == expected), (stored(), expected)


@contextlib.contextmanager
def own_exchange(tmp_path: Path, **fake: Any) -> Iterator[tuple[FakeBinance, ServerProcess]]:
    """A fake exchange (``fake``: its options) and a server on it, for one test."""
    with FakeBinance(**fake) as exchange:
        env = base_env(
            tmp_path,
            **exchange.settings,
        )
        assert populate(env).returncode == 0
        with ServerProcess(env, tmp_path / "server.log") as running:
            yield exchange, running


async def test_charts_stream_from_an_exchange_emulator_that_takes_no_subscribe(
    tmp_path: Path,
) -> None:
    """End to end against a fake that reads streams only from the URL and ignores
    SUBSCRIBE: both charts get their live bars, the second one's after a reopened socket."""
    fake = {"now_ms": frozen_ms(6), "push_interval": 0.2, "control": "ignore"}
    with own_exchange(tmp_path, **fake) as (plain, running):
        client = await WsClient.open(running.ws_url)
        try:
            for name in ("BTCUSDT", "ETHUSDT"):
                await client.send(data(name, "1m", count=5))
                update = await first_update(client, plain, name, "1m", timeout=20)
                assert [update["data"]] == points(plain.klines(name, "1m", limit=1), name, "1m")
        finally:
            await client.close()
        assert "takes no live SUBSCRIBE" in running.log_path.read_text()


async def test_a_killed_provider_process_loses_no_bar_of_an_open_chart(tmp_path: Path) -> None:
    """The exchange trades on while the provider process is dead: the hub refills the bars
    that closed meanwhile, in order, before the new process's live updates."""
    name, interval = "ETHUSDT", "1m"
    with own_exchange(tmp_path, now_ms=frozen_ms(10), push_interval=0.2) as (exchange, running):
        client = await WsClient.open(running.ws_url)
        try:
            await client.send(data(name, interval, count=5))
            init = await client.wait_for("data_init", key_of(name, interval))
            await first_update(client, exchange, name, interval)
            pid = running.get("/health")["providers"]["binance"]["pid"]
            mark = len(client.messages)
            os.kill(pid, signal.SIGKILL)
            exchange.advance(5 * 60)  # five bars close while the process is dead
            m0_ms = intervals.parse_date(init["data"][-1]["date"]) * 1000
            rows = exchange.klines(name, interval, start_time=m0_ms, limit=6)
            expected = points(rows, name, interval)
            await client.wait_for(
                "data_update",
                lambda m: m["data"]["date"] == expected[-1]["date"],
                timeout=30,
                after=mark,
            )
            latest: dict[str, dict[str, Any]] = {}
            for message in client.of_type("data_update", mark):
                latest[message["data"]["date"]] = message["data"]
            assert [latest.get(p["date"]) for p in expected] == expected
            dates = [m["data"]["date"] for m in client.of_type("data_update", mark)]
            assert dates == sorted(dates)  # in order: no update went back in time
            assert running.get("/health")["providers"]["binance"]["restarts"] == 1
        finally:
            await client.close()


async def test_a_delisted_symbol_is_dropped_upstream_its_clients_are_told_and_a_relist_works(
    tmp_path: Path,
) -> None:
    """Binance answers -1121 for a symbol gone from exchangeInfo and sends nothing on its
    streams: the streams stayed subscribed upstream for good and their clients got nothing.
    Now a -1121 (here: another client's history) drops them and tells their clients; once
    the symbol is listed again (and populate run), a new client streams it."""
    name = "ETHBTC"
    with own_exchange(tmp_path, now_ms=frozen_ms(10), push_interval=0.2) as (exchange, running):
        chart, other = await WsClient.open(running.ws_url), await WsClient.open(running.ws_url)
        try:
            await chart.send(data(name, "1m", count=5))
            await first_update(chart, exchange, name, "1m")
            assert exchange.streams_per_connection() == {1: 1}
            spec = exchange.data.symbols.pop(name)  # delisted: gone from exchangeInfo
            await other.send(data(name, "1h", count=5, stream=False))
            await other.wait_for("data_init", key_of(name, "1h"))
            told = await chart.wait_for("error")
            assert told["code"] == "unknown_symbol"
            assert f"{name} is not traded on Binance" in told["message"]
            assert told["request"] == {"source": "binance", "name": name, "interval": "1m"}
            assert await eventually(lambda: exchange.open_connections == 0)  # dropped upstream
            exchange.data.symbols[name] = spec  # listed again
            assert populate(running.env).returncode == 0
            again = await WsClient.open(running.ws_url)
            try:
                await again.send(data(name, "5m", count=5))
                # (the symbol's listing check comes at most 30 s after the last one)
                update = await first_update(again, exchange, name, "5m", timeout=40)
                assert [update["data"]] == points(exchange.klines(name, "5m", limit=1), name, "5m")
            finally:
                await again.close()
        finally:
            await chart.close()
            await other.close()
        assert exchange.violations == []


async def test_a_data_request_of_a_delisted_symbol_gets_one_error(tmp_path: Path) -> None:
    """A chart of a symbol gone from Binance got two ``unknown_symbol`` errors for one
    ``data`` request: its history call's, and the provider's word to the key's clients
    (the same -1121 stops the stream). A chart of it at another interval, asked while the
    provider knows it is gone, got two as well. Each request now gets one; a chart that
    streamed the symbol before is still told."""
    name = "ETHBTC"
    with own_exchange(tmp_path, now_ms=frozen_ms(10), push_interval=0.2) as (exchange, running):
        chart = await WsClient.open(running.ws_url)
        try:
            await chart.send(data(name, "1m", count=5))
            await first_update(chart, exchange, name, "1m")
            del exchange.data.symbols[name]  # delisted: gone from exchangeInfo, -1121
            for interval in ("15m", "1h"):
                client = await WsClient.open(running.ws_url)
                try:
                    await client.send(data(name, interval, count=5))
                    init = await client.wait_for("data_init", key_of(name, interval))
                    assert init["data"] == []
                    await client.send({"type": "ping", "id": 1})
                    pong = await client.wait_for("pong")  # after every frame queued before
                    errors = client.of_type("error")
                    assert client.messages.index(pong) > client.messages.index(errors[-1])
                    assert [e["code"] for e in errors] == ["unknown_symbol"], errors
                finally:
                    await client.close()
            told = await chart.wait_for("error")
            assert (told["code"], told["request"]["interval"]) == ("unknown_symbol", "1m")
            assert len(chart.of_type("error")) == 1
        finally:
            await chart.close()


def test_a_symbol_that_stops_trading_is_found_by_the_listing_check_and_resumed_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A symbol in BREAK or HALT stays in exchangeInfo (its history still answers) but its
    streams send nothing: the periodic listing check drops them and tells the clients, and
    resumes them when the symbol trades again."""
    monkeypatch.setattr(binance_provider, "LISTING_EVERY", 0.5, raising=False)
    monkeypatch.setattr(binance_provider, "LISTING_MIN_GAP", 0.2, raising=False)
    events: list[Any] = []
    with FakeBinance(now_ms=frozen_ms(10), push_interval=0.1) as fake:
        provider = BinanceProvider()
        settings = config.load_settings(**fake.settings)
        provider._attach("binance", settings, events.append)
        provider.init()
        try:
            provider._subscribe(1, "BNBUSDT", "1m")
            provider._subscribe(1, "BTCUSDT", "1m")
            assert fake.wait_for(lambda: sorted(fake.streams_per_connection().values()) == [2])
            spec = fake.data.symbols["BNBUSDT"]
            fake.data.symbols["BNBUSDT"] = dataclasses.replace(spec, status="HALT")
            assert fake.wait_for(lambda: any(isinstance(e, Notice) for e in events), timeout=10)
            notices = [e for e in events if isinstance(e, Notice)]
            assert [(n.symbol, n.interval, n.code) for n in notices] == [
                ("BNBUSDT", "1m", "unknown_symbol")
            ]
            assert "status HALT" in notices[0].message
            assert fake.wait_for(lambda: list(fake.streams_per_connection().values()) == [1])
            mark = len(events)
            fake.data.symbols["BNBUSDT"] = spec  # trading again
            assert fake.wait_for(lambda: list(fake.streams_per_connection().values()) == [2])
            assert fake.wait_for(
                lambda: any(
                    isinstance(e, BarUpdate) and e.symbol == "BNBUSDT" for e in events[mark:]
                ),
                timeout=10,
            )
        finally:
            provider.shutdown()
        assert fake.violations == []


def stored_bars(db: str, name: str, interval: str) -> dict[int, tuple[Any, ...]]:
    """The bars of ``binance`` ``(name, interval)`` in the store: time -> (o, h, l, c, v,
    forming)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT t, o, h, l, c, v, forming FROM bars JOIN bar_series s ON s.id = bars.series"
            " WHERE s.source = 'binance' AND s.name = ? AND s.interval = ?",
            (name, interval),
        ).fetchall()
    return {row[0]: tuple(row[1:]) for row in rows}


async def until_stored(
    tmp_path: Path, name: str, interval: str, missed: dict[int, tuple[Any, ...]], timeout: float
) -> None:
    """Poll the store of the server in ``tmp_path`` until it holds every bar of ``missed``
    (time -> (o, h, l, c, v, forming)) with those values."""
    db = str(tmp_path / "candlewire.sqlite3")

    def filled() -> bool:
        bars = stored_bars(db, name, interval)
        return all(bars.get(t) == bar for t, bar in missed.items())

    assert await eventually(filled, timeout=timeout), (stored_bars(db, name, interval), missed)


async def test_a_rate_limited_gap_fill_lets_live_updates_go_on_and_fills_the_gap_later(
    tmp_path: Path,
) -> None:
    """A 429 on the REST fetch of the bars missed during a reconnect held every live update
    of the key for the whole Retry-After (and past 120 s the missed bars were never
    fetched). Now the live updates go on at once, the clients are told, and the missed
    bars reach the store with their final values once Binance allows."""
    name, interval, limit = "ETHUSDT", "1m", 10.0
    with own_exchange(tmp_path, now_ms=frozen_ms(10), push_interval=0.2) as (exchange, running):
        client = await WsClient.open(running.ws_url)
        try:
            await client.send(data(name, interval, count=5))
            init = await client.wait_for("data_init", key_of(name, interval))
            await first_update(client, exchange, name, interval)
            m0 = init["data"][-1]["date"]  # forming when the connection drops
            mark = len(client.messages)
            exchange.rate_limit(429, retry_after=limit)
            assert exchange.drop_connections() == 1
            exchange.advance(3 * 60)  # three bars close while we are away
            dropped = time.monotonic()
            newer = await client.wait_for(
                "data_update", lambda m: m["data"]["date"] > m0, after=mark, timeout=limit
            )
            assert time.monotonic() - dropped < limit / 2  # not held for the Retry-After
            assert newer["data"]["date"] == intervals.format_date(
                exchange.klines(name, interval, limit=1)[0][0] // 1000
            )
            error = await client.wait_for("error", after=mark)
            assert error["code"] == "rate_limited"
            assert m0 in error["message"]
            rows = exchange.klines(
                name, interval, start_time=intervals.parse_date(m0) * 1000, limit=3
            )
            missed = {row[0] // 1000: (*(float(v) for v in row[1:6]), 0) for row in rows}
            await until_stored(tmp_path, name, interval, missed, limit + seconds(10))
            dates = [m["data"]["date"] for m in client.of_type("data_update", mark)]
            assert dates == sorted(dates)  # no live update went back in time
            # The open chart got only the newer live bars; a chart that loads now, and a
            # scroll back over the gap, get the missed bars with their final values.
            later = await WsClient.open(running.ws_url)
            try:
                await later.send(data(name, interval, count=8, stream=False))
                init = await later.wait_for("data_init", key_of(name, interval))
                assert init["data"] == points(
                    exchange.klines(name, interval, limit=8), name, interval
                )
                last_missed = intervals.format_date(rows[-1][0] // 1000)
                await later.send(
                    {**data(name, interval, count=4), "type": "data_history", "end": last_missed}
                )
                older = await later.wait_for("data_history", key_of(name, interval))
                expected = exchange.klines(name, interval, end_time=rows[-1][0], limit=4)
                assert older["data"] == points(expected, name, interval)
                assert later.of_type("error") == []
            finally:
                await later.close()
        finally:
            await client.close()
        assert exchange.violations == []


async def test_a_second_drop_while_a_gap_fill_is_put_off_gets_its_bars_fetched_too(
    tmp_path: Path,
) -> None:
    """A reconnect's gap fill put off by a 429, then a second drop and reconnect before
    Binance allowed REST again: the put-off fill kept the end it had from the first
    reconnect, so it fetched only the bars before the first live one after it. The bar
    forming at the second drop stayed in the store with the partial values it had then
    (stored as closed), and the bars missed during the second drop were never fetched. Now
    the fill reaches the first live bar after the second reconnect."""
    name, interval, limit = "ETHUSDT", "1m", 10.0
    with own_exchange(tmp_path, now_ms=frozen_ms(12), push_interval=0.2) as (exchange, running):
        client = await WsClient.open(running.ws_url)
        try:
            await client.send(data(name, interval, count=5))
            init = await client.wait_for("data_init", key_of(name, interval))
            await first_update(client, exchange, name, interval)
            m0 = init["data"][-1]["date"]  # forming when the connection first drops
            seen = m0
            exchange.rate_limit(429, retry_after=limit)
            for _ in range(2):  # the second within the Retry-After: its fill is put off too
                mark = len(client.messages)
                assert exchange.drop_connections() == 1
                exchange.advance(3 * 60)
                newer = await client.wait_for(
                    "data_update",
                    lambda m, after=seen: m["data"]["date"] > after,  # type: ignore[misc]
                    after=mark,
                    timeout=limit,
                )
                seen = newer["data"]["date"]
            start, end = intervals.parse_date(m0), intervals.parse_date(seen)
            rows = exchange.klines(name, interval, start_time=start * 1000, limit=20)
            missed = {
                row[0] // 1000: (*(float(v) for v in row[1:6]), 0)
                for row in rows
                if row[0] // 1000 < end
            }
            assert len(missed) == 6
            await until_stored(tmp_path, name, interval, missed, limit + seconds(10))
        finally:
            await client.close()
        assert exchange.violations == []


def stored_coverage(db: str, name: str, interval: str) -> list[tuple[int, int]]:
    """The spans of ``binance`` ``(name, interval)`` the store counts as known."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT a, b FROM bar_coverage JOIN bar_series s ON s.id = bar_coverage.series"
            " WHERE s.source = 'binance' AND s.name = ? AND s.interval = ? ORDER BY a",
            (name, interval),
        ).fetchall()
    return [(int(a), int(b)) for a, b in rows]


async def test_a_gap_put_off_is_not_stored_as_known_when_the_provider_dies_before_the_fill(
    tmp_path: Path,
) -> None:
    """A reconnect's gap fill put off by a 429: the hub took the first live bar after the
    gap as the end of a span it knew, and stored the bar forming at the drop with its
    partial values as closed. The provider process killed (kill -9) before the fill landed,
    the hole and the partial bar stayed for good: a data_init, in the same run or after a
    restart, answered the history without the missed bars. Now the provider says the bars
    since the drop were missed; nothing stored counts them as known, and the next request
    fetches them."""
    name, interval = "ETHUSDT", "1m"
    with own_exchange(tmp_path, now_ms=frozen_ms(10), push_interval=0.2) as (exchange, running):
        db = running.env["DB"]
        client = await WsClient.open(running.ws_url)
        try:
            await client.send(data(name, interval, count=5))
            init = await client.wait_for("data_init", key_of(name, interval))
            await first_update(client, exchange, name, interval)
            m0 = intervals.parse_date(init["data"][-1]["date"])  # forming when it drops
            mark = len(client.messages)
            exchange.rate_limit(429, retry_after=600)  # the fill is not allowed in this test
            assert exchange.drop_connections() == 1
            exchange.advance(3 * 60 + 5)  # two bars close unseen, a third opens
            await client.wait_for(
                "data_update", lambda m: intervals.parse_date(m["data"]["date"]) > m0, after=mark
            )
            assert (await client.wait_for("error", after=mark))["code"] == "rate_limited"
            # The bar forming at the drop is stored once the next one opened (partial).
            assert await eventually(lambda: m0 in stored_bars(db, name, interval))
            # A chart loaded meanwhile is told the bars it gets are not all there is (it was
            # answered the hole as the whole history, without a word).
            other = await WsClient.open(running.ws_url)
            try:
                await other.send(data(name, interval, count=8, stream=False))
                await other.wait_for("data_init", key_of(name, interval))
                assert (await other.wait_for("error"))["code"] == "rate_limited"
            finally:
                await other.close()
            pid = running.get("/health")["providers"]["binance"]["pid"]
            os.kill(pid, signal.SIGKILL)
            assert await eventually(
                lambda: running.get("/health")["providers"]["binance"]["pid"] not in (None, pid),
                timeout=seconds(30),
            )
        finally:
            await client.close()
        running.stop()  # the server stops too: what it stored is all that is left
        # What the store counts as known is what the exchange has.
        closed = {row[0] // 1000: row for row in exchange.klines(name, interval, limit=20)[:-1]}
        bars = stored_bars(db, name, interval)
        for a, b in stored_coverage(db, name, interval):
            for t in (t for t in closed if a <= t <= b):
                assert bars.get(t) == (*(float(v) for v in closed[t][1:6]), 0), t
        with ServerProcess(running.env, tmp_path / "again.log") as again:
            later = await WsClient.open(again.ws_url)
            try:
                # 2 bars: the window of the last 2 minutes of the server's clock is past the
                # exchange's frozen one and empty, and was taken as "nothing after the
                # newest bar held" (the one forming at the drop); 8 bars reach back to it.
                for count in (2, 8):
                    mark = len(later.messages)
                    await later.send(data(name, interval, count=count, stream=False))
                    answer = await later.wait_for("data_init", key_of(name, interval), after=mark)
                    assert answer["data"] == points(
                        exchange.klines(name, interval, limit=count), name, interval
                    )
                assert later.of_type("error") == []
            finally:
                await later.close()


# ------------------------------------------------------------------ rate limits


async def test_a_429_stops_every_rest_request_until_retry_after_and_the_data_still_comes(
    fake: FakeBinance, server: ServerProcess, client: WsClient
) -> None:
    seen: set[str] = set()
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_status(server, seen, stop))
    before = len(fake.requests)
    fake.rate_limit(429, retry_after=2)
    await client.send(data("ETHUSDT", "4h", count=50, stream=False))
    init = await client.wait_for("data_init", key_of("ETHUSDT", "4h"), timeout=HISTORY_TIMEOUT)
    assert init["data"] == points(fake.klines("ETHUSDT", "4h", limit=50), "ETHUSDT", "4h")
    # The watcher has seen the limit and the provider is back to ok (polled, not slept).
    assert await eventually(lambda: "rate_limited" in seen and status(server) == "ok")
    stop.set()
    await watcher
    requests = fake.requests[before:]
    assert requests[0].status == 429
    assert requests[1].monotonic - requests[0].monotonic >= 2.0 - 0.05
    assert "rate_limited" in seen
    assert status(server) == "ok"


async def test_a_418_ban_is_obeyed_reported_and_clients_get_an_error_instead_of_hanging(
    fake: FakeBinance, server: ServerProcess, client: WsClient
) -> None:
    ban = 5.0  # longer than the provider's longest wait (2/3 of HISTORY_TIMEOUT)
    before = len(fake.requests)
    fake.rate_limit(418, retry_after=ban)
    started = time.monotonic()
    await client.send(data("ETHBTC", "12h", count=30, stream=False))
    init = await client.wait_for("data_init", key_of("ETHBTC", "12h"), timeout=HISTORY_TIMEOUT)
    error = await client.wait_for("error")
    assert init["data"] == []
    assert error["code"] == "rate_limited"
    assert "banned" in error["message"]
    assert time.monotonic() - started < seconds(2.0)  # told at once, not after a timeout
    assert status(server) == "banned"
    mark = len(client.messages)
    await client.send(data("ETHBTC", "8h", count=30, stream=False))
    await client.wait_for("error", after=mark, timeout=HISTORY_TIMEOUT)
    assert await eventually(lambda: status(server) == "ok", timeout=ban + seconds(5))
    assert time.monotonic() - started >= ban - 0.1
    assert len(fake.requests) == before + 1  # nothing was sent during the ban
    mark = len(client.messages)
    await client.send(data("ETHBTC", "12h", count=30, stream=False))
    again = await client.wait_for("data_init", key_of("ETHBTC", "12h"), after=mark)
    assert again["data"] == points(fake.klines("ETHBTC", "12h", limit=30), "ETHBTC", "12h")
    assert fake.requests[before + 1].monotonic - fake.requests[before].monotonic >= ban


# ------------------------------------------------------------------ the parts in-process


class Recorder:
    """Callbacks of a StreamManager, recorded."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.resumed: list[list[str]] = []
        self.refused: list[tuple[list[str], str]] = []

    def manager(self, fake: FakeBinance, **tuning: Any) -> StreamManager:
        manager = StreamManager(
            fake.stream_url,
            self.events.append,
            self.resumed.append,
            None,
            StreamTuning(**tuning),
            on_refused=lambda names, error: self.refused.append((names, error)),
        )
        manager.start()
        return manager


@contextlib.contextmanager
def running(manager: StreamManager) -> Iterator[StreamManager]:
    try:
        yield manager
    finally:
        manager.stop()


def test_streams_beyond_the_per_connection_cap_go_to_another_connection() -> None:
    names = [f"{s}@kline_{i}" for s in ("btcusdt", "ethusdt") for i in ("1m", "5m", "1h")]
    with FakeBinance(push_interval=0.1) as fake:
        recorder = Recorder()
        with running(recorder.manager(fake, max_streams=4)) as manager:
            manager.subscribe(names)
            assert fake.wait_for(lambda: sorted(fake.streams_per_connection().values()) == [2, 4])
            manager.unsubscribe(names[:4])
            assert fake.wait_for(lambda: list(fake.streams_per_connection().values()) == [2])
        assert fake.violations == []


def test_a_refused_subscribe_is_reported_and_sent_again_until_it_is_taken() -> None:
    """It was taken as done: no data, no error, nothing sent again for minutes."""
    with FakeBinance(push_interval=0.1) as fake:
        fake.refuse_subscribes(2)
        recorder = Recorder()
        with running(recorder.manager(fake)) as manager:
            manager.subscribe(["btcusdt@kline_1m"])
            assert fake.wait_for(lambda: len(recorder.refused) == 2, timeout=10)
            assert recorder.refused[0] == (
                ["btcusdt@kline_1m"],
                "2 Invalid request: temporarily refused",
            )
            assert fake.wait_for(lambda: fake.streams_per_connection() == {1: 1}, timeout=10)
            assert fake.wait_for(lambda: len(recorder.events) > 0, timeout=5)
            assert fake.connections_opened == 1  # the same connection asked again


@pytest.mark.parametrize(
    "server",
    [
        {"control": "ignore"},  # never answers a SUBSCRIBE
        {"control": "close"},  # closes the socket on one
        {"control": "close", "url_streams_required": True},  # and refuses a bare /stream
    ],
    ids=["ignores", "closes", "closes-and-wants-streams-in-the-url"],
)
def test_a_server_without_live_subscribe_gets_the_streams_in_the_url(
    server: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Relays and emulators of Binance that read streams only from the URL (the checklist
    of an emulator asks for ``/ws/<stream>`` and ``/stream?streams=``, not SUBSCRIBE)."""

    def streamed(name: str) -> bool:
        symbol, interval = name.split("@kline_")
        return any(e["s"].lower() == symbol and e["k"]["i"] == interval for e in recorder.events)

    with FakeBinance(push_interval=0.1, **server) as fake:
        recorder = Recorder()
        with running(recorder.manager(fake, answer_timeout=1.0)) as manager:
            manager.subscribe(["btcusdt@kline_1m"])
            assert fake.wait_for(lambda: streamed("btcusdt@kline_1m"), timeout=15)
            manager.subscribe(["ethusdt@kline_5m"])  # a new stream: a new socket names it
            assert fake.wait_for(lambda: streamed("ethusdt@kline_5m"), timeout=15)
            assert fake.wait_for(lambda: fake.open_connections == 1, timeout=15)
            assert fake.streams_per_connection() == {fake.connections[-1].id: 2}
            assert "takes no live SUBSCRIBE" in caplog.text
        assert fake.violations == []


def test_a_drop_while_a_subscribe_awaits_its_answer_does_not_give_up_live_subscribe(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One network drop between a SUBSCRIBE and Binance's answer was taken as a server that
    takes no SUBSCRIBE: the connection put its streams in the URL for good, and every new
    stream reopened the socket."""
    with FakeBinance(push_interval=0.1) as fake:
        fake.answer_delay = 0.5
        recorder = Recorder()
        with running(recorder.manager(fake)) as manager:
            manager.subscribe(["btcusdt@kline_1m"])
            assert fake.wait_for(lambda: fake.ws_frames != [])
            assert fake.drop_connections() == 1  # the answer was on its way
            fake.answer_delay = 0.0
            assert fake.wait_for(lambda: len(recorder.events) > 0, timeout=10)
            manager.subscribe(["ethusdt@kline_1m"])
            assert fake.wait_for(lambda: fake.streams_per_connection() == {2: 2}, timeout=10)
        assert [c.path for c in fake.connections] == ["/stream", "/stream"]
        assert "takes no live SUBSCRIBE" not in caplog.text


def test_one_slow_answer_to_a_subscribe_does_not_put_the_streams_in_the_url(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A loaded Binance answered one SUBSCRIBE later than ``answer_timeout``: the connection
    took it for a server without live SUBSCRIBE and named its streams in the URL for good,
    so every later chart reopened the socket (and fetched its gap by REST). Now the streams
    are sent again once; the late answer shows the server takes SUBSCRIBE."""

    def streamed(name: str) -> bool:
        symbol, interval = name.split("@kline_")
        return any(e["s"].lower() == symbol and e["k"]["i"] == interval for e in recorder.events)

    with FakeBinance(push_interval=0.1) as fake:
        fake.answer_delay = 1.5  # the answer (and the subscription) come after 1.5 s
        recorder = Recorder()
        with running(recorder.manager(fake, answer_timeout=1.0)) as manager:
            manager.subscribe(["btcusdt@kline_1m"])
            assert fake.wait_for(lambda: streamed("btcusdt@kline_1m"), timeout=10)
            fake.answer_delay = 0.0
            manager.subscribe(["ethusdt@kline_1m"])
            assert fake.wait_for(lambda: streamed("ethusdt@kline_1m"), timeout=10)
            assert fake.streams_per_connection() == {1: 2}
        assert [c.path for c in fake.connections] == ["/stream"]
        assert "takes no live SUBSCRIBE" not in caplog.text
        assert fake.violations == []


def test_a_new_stream_in_the_url_resumes_only_itself_not_every_stream_carried() -> None:
    """Each new stream reopens a URL-mode socket, the old one delivering until the new one
    is up; every stream of the connection was reported as resumed, so the provider fetched
    the klines of all of them by REST for each chart opened (1024 calls for a full one)."""

    def streamed(name: str) -> bool:
        symbol, interval = name.split("@kline_")
        return any(e["s"].lower() == symbol and e["k"]["i"] == interval for e in recorder.events)

    first = ["btcusdt@kline_1m", "ethusdt@kline_1m", "ethbtc@kline_1m"]
    with FakeBinance(push_interval=0.1, control="close", url_streams_required=True) as fake:
        recorder = Recorder()
        with running(recorder.manager(fake, answer_timeout=1.0)) as manager:
            manager.subscribe(first)
            assert fake.wait_for(lambda: all(streamed(n) for n in first), timeout=15)
            resumed = len(recorder.resumed)
            manager.subscribe(["bnbusdt@kline_5m"])
            assert fake.wait_for(lambda: streamed("bnbusdt@kline_5m"), timeout=15)
            assert recorder.resumed[resumed:] == [["bnbusdt@kline_5m"]]
        assert fake.violations == []


def test_a_silent_connection_is_replaced_and_its_streams_reported_as_resumed() -> None:
    with FakeBinance(push_interval=0.1) as fake:
        recorder = Recorder()
        with running(recorder.manager(fake, silence=0.5, ping_timeout=0.3)) as manager:
            manager.subscribe(["btcusdt@kline_1m"])
            assert fake.wait_for(lambda: len(recorder.events) > 0)
            fake.go_deaf(1.5)  # no event and no pong: a half-open connection
            assert fake.wait_for(lambda: recorder.resumed != [], timeout=5)
            assert recorder.resumed[0] == ["btcusdt@kline_1m"]
            # the fake counts a connection in its own handler, a moment after our side opened
            assert fake.wait_for(lambda: fake.connections_opened >= 2, timeout=5)
            assert fake.wait_for(lambda: fake.connections[0].closed_at is not None, timeout=5)
            count = len(recorder.events)
            assert fake.wait_for(lambda: len(recorder.events) > count, timeout=5)


def test_a_quiet_connection_that_answers_a_ping_is_kept() -> None:
    """Binance sends a kline event only when the kline changed: the streams of a thinly
    traded pair can be silent for minutes on a healthy socket. Such a connection was
    replaced every 30 s, each time with a REST gap fill of all its streams."""
    with FakeBinance(push_interval=0.1, ping_interval=None) as fake:
        recorder = Recorder()
        with running(recorder.manager(fake, silence=0.3, ping_timeout=1.0)) as manager:
            manager.subscribe(["btcusdt@kline_1m"])
            assert fake.wait_for(lambda: len(recorder.events) > 0)
            fake.go_silent(1.5)  # five silences in a row, each answered by a pong
            time.sleep(1.5)
            count = len(recorder.events)
            assert fake.wait_for(lambda: len(recorder.events) > count, timeout=5)
            assert fake.connections_opened == 1
            assert recorder.resumed == []


@pytest.mark.parametrize("trigger", ["renewal", "serverShutdown"])
def test_a_renewed_or_shut_down_connection_opens_the_new_socket_before_closing_the_old(
    trigger: str,
) -> None:
    renew = 1.5 if trigger == "renewal" else 3600.0
    with FakeBinance(push_interval=0.1) as fake:
        recorder = Recorder()
        with running(recorder.manager(fake, renew_after=renew)) as manager:
            manager.subscribe(["ethusdt@kline_1m", "ethusdt@kline_1h"])
            assert fake.wait_for(lambda: fake.streams_per_connection() == {1: 2})
            if trigger == "serverShutdown":
                assert fake.send_server_shutdown() == 1
            assert fake.wait_for(lambda: fake.streams_per_connection() == {2: 2}, timeout=5)
            old, new = fake.connections[:2]
            subscribed = next(f.at for f in fake.ws_frames if f.conn_id == new.id)
            assert old.closed_at is not None and subscribed < old.closed_at  # no gap
        assert (recorder.resumed != []) == (trigger == "serverShutdown")  # a gap is possible


def test_the_rolling_limiter_never_allows_more_than_its_limit_in_any_window() -> None:
    now = [0.0]
    limiter = RollingLimiter(4, 1.1, clock=lambda: now[0])
    sent = []
    for _ in range(12):
        now[0] += limiter.delay()
        limiter.record()
        sent.append(now[0])
        now[0] += 0.01
    assert all(b - a >= 1.1 - 1e-9 for a, b in zip(sent, sent[4:], strict=False))
    assert sent[3] < 0.1  # the first four go at once; no burst-then-refill drift afterwards


def test_reconnect_delays_double_from_one_second_to_a_minute_with_jitter() -> None:
    tuning = StreamTuning()
    assert [backoff_delay(n, tuning, rand=0.5) for n in range(8)] == [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0,
    ]  # fmt: skip
    assert 0.75 <= backoff_delay(0, tuning, rand=0.0) < backoff_delay(0, tuning, rand=1.0) <= 1.25
    assert backoff_delay(40, tuning, rand=1.0) == 60.0


def test_the_rest_gate_translates_unknown_symbols_and_stops_at_its_weight_budget() -> None:
    with FakeBinance() as fake, thread_event_loop():
        gate = RestGate(fake.api_url, budget=10)
        try:
            with pytest.raises(UnknownSymbol, match=r"unknown symbol 'FOOBAR' \(-1121 Invalid"):
                gate.klines("FOOBAR", "1h", 0, None, time.monotonic() + 5)
            recent = int(time.time() * 1000) - 10 * 3_600_000
            with pytest.raises(RateLimited) as limited:  # 2 per request, budget 10
                for _ in range(10):
                    sent = len(fake.requests)
                    gate.klines("BTCUSDT", "1h", recent, None, time.monotonic() + 1)
            assert limited.value.retry_after is not None and limited.value.retry_after <= 61
            assert len(fake.requests) == sent  # refused before sending
            assert 8 <= fake.used_weight() <= 10
        finally:
            gate.close()


def test_the_rest_gate_keeps_to_the_weight_limit_exchange_info_states() -> None:
    """Binance.US and other servers of Binance's API allow less than Binance.com's 6000
    weight a minute: a budget of 80 % of 6000 ran into a 429 every minute there (which
    Binance turns into an IP ban). ``rateLimits`` of ``exchangeInfo`` states the limit."""
    with FakeBinance(weight_limit=60) as fake, thread_event_loop():
        gate = RestGate(fake.api_url, wall=lambda: 1_800_000_000.0)  # no minute rolls
        try:
            gate.exchange_info(time.monotonic() + 5)  # weight 20
            recent = int(time.time() * 1000) - 10 * 3_600_000
            with pytest.raises(RateLimited):
                for _ in range(30):  # 2 per request: 14 fit in the 48
                    gate.klines("BTCUSDT", "1h", recent, None, time.monotonic() + 1)
        finally:
            gate.close()
        assert [r.status for r in fake.requests] == [200] * 15, fake.requests[-1]
        assert fake.used_weight() == 48
        assert (gate.limit, gate.budget) == (60, 48)


def test_a_429_that_names_the_weight_limit_lowers_the_budget_to_it() -> None:
    """A server's -1003 answer names its limit ("current limit of IP(...) is 10 requests per
    minute"): the budget follows it, so the next minute stays under it."""
    with FakeBinance(weight_limit=10) as fake, thread_event_loop():
        gate = RestGate(fake.api_url, wall=lambda: 1_800_000_000.0)
        try:
            recent = int(time.time() * 1000) - 10 * 3_600_000
            with pytest.raises(RateLimited):
                for _ in range(10):
                    gate.klines("BTCUSDT", "1h", recent, None, time.monotonic() + 1)
            assert [r.status for r in fake.requests] == [200] * 5 + [429]
            assert (gate.limit, gate.budget) == (10, 8)
        finally:
            gate.close()


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("Too much request weight used; current limit is 1200 request weight per 1 MINUTE."
         " Please use WebSocket Streams for live updates to avoid polling the API.", 1200),
        ("Too many requests; current limit of IP(203.0.113.7) is 6000 requests per minute."
         " Please use the websocket for live updates to avoid polling the API.", 6000),
        ("Way too much request weight used; IP banned until 1700000000000.", None),
        ("Connection throttled, current limit of IP(1.2.3.4) is 61000 requests per 5 MINUTE.",
         None),
    ],
)  # fmt: skip
def test_the_weight_limit_is_read_from_binance_texts(text: str, limit: int | None) -> None:
    assert rest_module._limit_in_text(text) == limit
    info = {"rateLimits": [{"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE",
                            "intervalNum": 5, "limit": 61000},
                           {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE",
                            "intervalNum": 1, "limit": 1200}]}  # fmt: skip
    assert rest_module.stated_limit(info) == 1200
    assert rest_module.stated_limit({"rateLimits": "n/a"}) is None


def test_history_pages_are_exact_across_the_thousand_row_limit() -> None:
    now = frozen_ms(0)
    with FakeBinance(now_ms=now) as fake, thread_event_loop():
        gate = RestGate(fake.api_url)
        try:
            start = now - now % MINUTE_MS - 2500 * MINUTE_MS
            rows = gate.klines("ETHUSDT", "1m", start, None, time.monotonic() + 10)
        finally:
            gate.close()
        assert len(rows) == 2501
        assert [r[0] for r in rows] == [start + i * MINUTE_MS for i in range(2501)]
        assert rows[-1] == fake.klines("ETHUSDT", "1m", limit=1)[0]
        assert [r.params["limit"] for r in fake.requests] == ["1000"] * 3


def test_a_server_that_pages_by_fewer_rows_is_asked_again_not_taken_as_the_end() -> None:
    """A relay or an emulator may cap pages below ``limit``: a short page that stops before
    the range's end is not its end (the rest would be remembered as a range without
    bars); the usual last page (the forming bar) ends it without another request."""
    now = frozen_ms(0)
    with FakeBinance(now_ms=now) as fake, thread_event_loop():
        fake.max_klines = 500
        gate = RestGate(fake.api_url)
        try:
            start = now - now % MINUTE_MS - 2500 * MINUTE_MS
            rows = gate.klines("ETHUSDT", "1m", start, None, time.monotonic() + 10)
            asked = len(fake.requests)
            ended = gate.klines(
                "ETHUSDT", "1m", start, start + 299 * MINUTE_MS, time.monotonic() + 10
            )
        finally:
            gate.close()
        assert [r[0] for r in rows] == [start + i * MINUTE_MS for i in range(2501)]
        assert asked == 6  # five pages of 500, then the forming bar alone
        assert len(ended) == 300 and len(fake.requests) == asked + 1


def test_a_server_that_ignores_start_time_is_not_asked_for_five_hundred_pages() -> None:
    """A relay answering the newest rows whatever startTime says: every page ended past the
    cursor's last move, and the loop asked 500 times (1000 weight) for one history."""
    now = frozen_ms(0)
    with FakeBinance(now_ms=now) as fake, thread_event_loop():
        fake.ignore_window = True
        gate = RestGate(fake.api_url)
        try:
            start = now - now % MINUTE_MS - 3000 * MINUTE_MS
            rows = gate.klines("ETHUSDT", "1m", start, None, time.monotonic() + 10)
        finally:
            gate.close()
        assert len(fake.requests) == 2  # the second page had nothing new
        assert rows[-1][0] == now - now % MINUTE_MS


@pytest.mark.parametrize(
    ("status", "body"),
    [(502, "<html><body>502 Bad Gateway</body></html>"), (503, ""), (200, "not json")],
)
def test_a_transient_failure_is_retried_within_the_deadline(status: int, body: str) -> None:
    now = frozen_ms(0)
    with FakeBinance(now_ms=now) as fake, thread_event_loop():
        gate = RestGate(fake.api_url)
        try:
            fake.fail_next(status, count=2, body=body)
            start = now - now % MINUTE_MS - 9 * MINUTE_MS
            # an end, not "until now": with the exchange's clock frozen, a wall clock that
            # turned a minute meanwhile would ask once more (rest.py ``_reached``), legitimately
            end = start + 9 * MINUTE_MS
            rows = gate.klines("ETHUSDT", "1m", start, end, time.monotonic() + 10)
            assert len(rows) == 10
            assert [r.status for r in fake.requests] == [status, status, 200]
            fake.fail_next(status, count=3, body=body)
            with pytest.raises(ProviderUnavailable):
                gate.klines("ETHUSDT", "1m", start, end, time.monotonic() + 10)
            fake.fail_next(500, count=1)
            with pytest.raises(ProviderUnavailable):  # no time left for a retry
                gate.klines("ETHUSDT", "1m", start, end, time.monotonic() + 0.5)
        finally:
            gate.close()


def test_provider_history_is_empty_before_the_listing_and_names_unknown_symbols() -> None:
    with FakeBinance(now_ms=frozen_ms(0)) as fake, thread_event_loop():
        provider = BinanceProvider()
        settings = config.load_settings(**fake.settings)
        provider._attach("binance", settings, lambda event: None)
        listed = intervals.format_date(DEFAULT_LISTED_AT // 1000)
        try:
            before = provider.get_history(
                "BTCUSDT", "1h", "2023-06-01 00:00:00", "2023-12-31 23:00:00", 10
            )
            first = provider.get_history("BTCUSDT", "1h", "2023-12-31 22:00:00", listed, 10)
            with pytest.raises(UnknownSymbol) as unknown:
                provider.get_history("FOOBAR", "1h", listed, "now UTC", 10)
        finally:
            provider.shutdown()
        assert before == []
        assert [intervals.format_date(bar[0]) for bar in first] == [listed]  # end inclusive
        assert str(unknown.value) == "binance: unknown symbol 'FOOBAR' (-1121 Invalid symbol.)"


def test_the_events_of_one_loop_turn_are_delivered_between_one_hold_and_one_release() -> None:
    """The provider holds what it publishes in a turn of the stream loop and hands the burst
    to the hub in one write (Provider.hold_updates/release_updates)."""
    log: list[Any] = []
    names = [f"{s}@kline_1m" for s in ("btcusdt", "ethusdt", "bnbusdt", "xrpusdt")]

    def bursts() -> list[list[Any]]:
        done, current = [], None
        for entry in list(log):
            if entry == "hold":
                assert current is None, "a hold inside a burst"
                current = []
            elif entry == "release":
                assert current is not None, "a release outside a burst"
                done.append(current)
                current = None
            else:
                assert current is not None, "an event outside a burst"
                current.append(entry)
        return done

    with FakeBinance(push_interval=0.1) as fake:
        manager = StreamManager(
            fake.stream_url,
            log.append,
            lambda names: None,
            None,
            StreamTuning(),
            bursts=(lambda: log.append("hold"), lambda: log.append("release")),
        )
        manager.start()
        with running(manager):
            manager.subscribe(names)
            # the fake pushes all four streams at once: some turn reads several of them
            assert fake.wait_for(lambda: any(len(b) > 1 for b in bursts()), timeout=10)
    assert all(burst for burst in bursts())


def test_a_quiet_key_is_not_restarted_every_two_minutes() -> None:
    """Binance is silent on a kline that does not change: the hub's default staleness (120
    s) restarted every quiet key every 2 minutes with a REST gap fill and two log lines
    (an independent fake: 100 quiet 1h keys, 200 klines calls and 400 lines in 250 s).
    A real wait would take a quarter of an hour, so the limit itself is checked."""
    provider = BinanceProvider()
    limits = {i: provider.staleness_limit("BTCUSDT", i) for i in ("1m", "1h", "1d")}
    assert limits == {"1m": 900.0, "1h": 7200.0, "1d": 172_800.0}


def test_a_stray_future_kline_does_not_move_where_the_gap_fill_starts() -> None:
    """The hub drops such a kline; the provider used to take it as the newest bar seen, and
    the next gap fill asked for the bars after it: none."""
    provider = BinanceProvider()
    settings = config.load_settings(PROVIDERS="binance")
    published: list[Any] = []
    provider._attach("binance", settings, published.append)
    state = _Key("btcusdt@kline_1m", 0)
    now = int(time.time()) // 60 * 60
    for t in (now, now + 10 * 365 * 86400):
        bar = (t, 1.0, 1.0, 1.0, 1.0, 1.0)
        provider._publish_update(("BTCUSDT", "1m"), state, KlineUpdate("BTCUSDT", "1m", bar, False))
    assert state.last_open_ms == now * 1000
    assert len(published) == 2  # both still go to the hub, which judges them


class _Klines:
    """A stand-in for the REST gate: ``klines`` answers the rows of ``rows`` at the time."""

    def __init__(self, rows: list[list[Any]]) -> None:
        self.rows = rows
        self.calls: list[int] = []

    def klines(
        self, symbol: str, interval: str, start_ms: int, end_ms: int | None, deadline: float
    ) -> list[list[Any]]:
        self.calls.append(start_ms)
        return [row for row in self.rows if row[0] >= start_ms]


def _row(open_ms: int, high: str, close: str, volume: str) -> list[Any]:
    return [open_ms, "1", high, "0.5", close, volume, open_ms + 59_999, "0", 1, "0", "0", "0"]


def test_a_bar_that_closed_before_the_resumed_stream_was_live_gets_its_final_values() -> None:
    """The gap fill's REST answer came while the bar was forming; it closed before the new
    subscription was live, so its final kline never came, and the next bar's first kline
    made the hub store the partial bar as closed: wrong for good."""
    provider = BinanceProvider()
    provider._attach("binance", config.load_settings(PROVIDERS="binance"), lambda e: None)
    published: list[tuple[Any, bool]] = []

    def publish(symbol: str, interval: str, bar: Any, *, final: bool = False) -> None:
        published.append((tuple(bar), final))

    provider.publish = publish  # type: ignore[method-assign]
    key, name = ("BTCUSDT", "1m"), "btcusdt@kline_1m"
    now_ms = int(time.time()) // 60 * 60_000 + 60_000  # forming for a minute at least
    rest = _Klines([_row(now_ms, "2", "1.5", "10")])  # the forming bar
    provider._rest = rest  # type: ignore[assignment]
    provider._gaps = ThreadPoolExecutor(1)
    state = _Key(name, now_ms, last_open_ms=now_ms)
    provider._keys[key], provider._by_stream[name] = state, key
    try:
        provider._on_resume([name])
        assert provider._gaps.submit(lambda: None).result(5) is None  # the gap fill is done
        # the bar closes and the next one opens before the subscription is live
        rest.rows = [_row(now_ms, "3", "2.5", "15"), _row(now_ms + 60_000, "2.6", "2.55", "1")]
        next_bar = (now_ms // 1000 + 60, 2.5, 2.7, 2.4, 2.65, 2.0)
        kline = {"t": now_ms + 60_000, "s": "BTCUSDT", "i": "1m", "x": False}
        kline.update(o="2.5", h="2.7", l="2.4", c="2.65", v="2")
        provider._on_event({"e": "kline", "k": kline})
        assert provider._gaps.submit(lambda: None).result(5) is None  # the refetch is done
    finally:
        provider._gaps.shutdown(wait=True)
    closed = (now_ms // 1000, 1.0, 3.0, 0.5, 2.5, 15.0)
    assert (closed, True) in published, published
    assert published.index((closed, True)) < published.index((next_bar, False))
    assert len(rest.calls) == 2 and not state.resuming


def test_late_klines_of_a_replaced_socket_do_not_take_a_bar_back() -> None:
    """A renewal (or serverShutdown) hands over from a socket that delivers until the new
    one carries every stream: a late kline of the old socket came after newer ones of the
    new socket and was published, so the forming bar's values went back and a closed bar
    was corrected to (and stored with) its values from before it closed."""
    provider = BinanceProvider()
    provider._attach("binance", config.load_settings(PROVIDERS="binance"), lambda e: None)
    published: list[tuple[Any, bool]] = []

    def publish(symbol: str, interval: str, bar: Any, *, final: bool = False) -> None:
        published.append((tuple(bar), final))

    provider.publish = publish  # type: ignore[method-assign]
    key, name = ("BTCUSDT", "1m"), "btcusdt@kline_1m"
    t = int(time.time()) // 60 * 60 - 60  # the bar that closes during the handover
    provider._keys[key], provider._by_stream[name] = _Key(name, t * 1000), key

    def kline(open_s: int, close: str, volume: str, final: bool, event_ms: int) -> None:
        k = {"t": open_s * 1000, "s": "BTCUSDT", "i": "1m", "x": final}
        k.update(o="1", h="3", l="0.5", c=close, v=volume)
        provider._on_event({"e": "kline", "E": event_ms, "s": "BTCUSDT", "k": k})

    e0 = t * 1000 + 59_000
    kline(t, "2", "10", False, e0)  # both sockets carry the stream
    kline(t, "2.5", "12", True, e0 + 1_000)  # the new socket: the bar closes ...
    kline(t + 60, "2.6", "1", False, e0 + 2_000)  # ... and the next one opens
    kline(t, "2", "10", False, e0)  # the old socket, late: the closed bar as it was
    kline(t + 60, "2.6", "0.5", False, e0 + 1_500)  # an older state of the forming bar
    kline(t, "2.5", "12", True, e0 + 1_000)  # its copy of the close: a duplicate
    kline(t + 60, "2.7", "2", False, e0 + 3_000)  # the new socket goes on ...
    kline(t + 60, "2.7", "2", False, e0 + 3_000)  # ... and the old one sends the same
    assert published == [
        ((t, 1.0, 3.0, 0.5, 2.0, 10.0), False),
        ((t, 1.0, 3.0, 0.5, 2.5, 12.0), True),
        ((t + 60, 1.0, 3.0, 0.5, 2.6, 1.0), False),
        ((t + 60, 1.0, 3.0, 0.5, 2.7, 2.0), False),
    ]


def test_rest_that_fails_after_its_retries_shows_unavailable_until_it_answers() -> None:
    """A REST outage (5xx after the retries) left /health at ok while every history request
    failed, and a proxy's HTML error page reached the clients in the error text."""
    now = frozen_ms(0)
    reports: list[tuple[str, str]] = []
    with FakeBinance(now_ms=now) as fake, thread_event_loop():
        gate = RestGate(fake.api_url, report=lambda state, detail: reports.append((state, detail)))
        try:
            start = now - now % MINUTE_MS - 9 * MINUTE_MS
            end = start + 9 * MINUTE_MS
            fake.fail_next(502, count=3, body="<html><body>502 Bad Gateway</body></html>")
            with pytest.raises(ProviderUnavailable) as failed:
                gate.klines("ETHUSDT", "1m", start, end, time.monotonic() + 10)
            assert str(failed.value) == "binance: klines of 'ETHUSDT' 1m: server error HTTP 502"
            assert reports == [("unavailable", str(failed.value))]
            assert gate.state == "unavailable"
            assert len(gate.klines("ETHUSDT", "1m", start, end, time.monotonic() + 10)) == 10
            assert reports[-1] == ("ok", "")
        finally:
            gate.close()


def test_a_shorter_429_during_a_418_ban_neither_ends_nor_understates_the_ban() -> None:
    """Requests in flight when a ban begins come back 429 with a shorter Retry-After: the
    status turned from banned to rate_limited, and its detail named the shorter wait."""
    now = [100.0]
    reports: list[tuple[str, str]] = []
    gate = RestGate(
        "http://127.0.0.1:9", report=lambda s, d: reports.append((s, d)), clock=lambda: now[0]
    )

    class Answer:
        def __init__(self, seconds: int) -> None:
            self.headers = {"Retry-After": str(seconds)}

    gate._limited(418, Answer(3600), "klines of 'BTCUSDT' 1m")
    now[0] += 1.0
    gate._limited(429, Answer(10), "klines of 'ETHUSDT' 1m")
    assert gate.state == "banned"
    assert reports[-1] == (
        "banned",
        "HTTP 429 on klines of 'ETHUSDT' 1m; no REST request for 3599 s",
    )
    gate.close()


def test_a_rest_call_after_the_gate_closed_fails_instead_of_opening_a_new_client() -> None:
    """At shutdown a gap or listing thread could still call REST after close(): it made a
    new client (and an asyncio loop nobody closed, a ResourceWarning in a later test)."""
    now = frozen_ms(0)
    outcome: list[BaseException | int] = []
    with FakeBinance(now_ms=now) as fake:
        gate = RestGate(fake.api_url)
        gate.close()

        def late_call() -> None:
            start = now - now % MINUTE_MS - 9 * MINUTE_MS
            try:
                outcome.append(len(gate.klines("ETHUSDT", "1m", start, None, time.monotonic() + 5)))
            except ProviderUnavailable as exc:
                outcome.append(exc)

        thread = threading.Thread(target=late_call)
        thread.start()
        thread.join(10)
        assert len(outcome) == 1 and isinstance(outcome[0], ProviderUnavailable)
        assert fake.requests == []
        gate.close()
