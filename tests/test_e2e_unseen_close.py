"""End to end: a bar that a history answer gave while it was forming, and that closed
before the stream that started behind it ever updated it, does not stay half made.

Seen from clients that reconnected after a server restart (the CSV replay at 60x closes a
bar every second): a ``data_init`` answered just before the bar closed held it partial, the
new stream's first update was of the next bar, and the partial bar became a closed bar of
the cache, of every later ``data_init`` and of ``/api/history``, with values no history of
the provider has. The hub now refills from that bar (as after a provider restart): its
clients get its final values as a ``data_update`` before the next bar's.

The same when a stream had updated the bar and stopped (its last chart closed), and a new
chart got the bar half made just before it closed: the new stream's first kline was of the
next bar, and the hub took the bar as one its stream had updated (Binance, end to end).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import harness
from tests.fakes.binance import FakeBinance
from tests.harness import (
    ServerProcess,
    WsClient,
    base_env,
    populate,
    populated_server,
    same_key,
)

AAA = {"type": "data", "source": "late", "name": "AAA", "interval": "1m", "count": 5}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with populated_server(
        tmp_path_factory.mktemp("unseen"),
        PROVIDERS="late",
        EXTRA_PROVIDERS="late=tests.providers:LateStreamProvider",
        CANDLEWIRE_TEST_STREAM_DELAY="0.5",
    ) as running:
        yield running


async def test_a_forming_bar_closed_unseen_by_the_stream_gets_its_final_values(
    server: ServerProcess,
) -> None:
    # The provider's next bar is "now"'s bar plus a minute: keep clear of a minute's turn.
    harness.until(lambda: 2 < time.time() % 60 < 50, timeout=20, what="mid-minute")
    client = await WsClient.open(server.ws_url)
    try:
        await client.send(AAA)
        init = await client.wait_for("data_init", same_key("AAA", "1m"))
        forming = init["data"][-1]
        assert forming["late-AAA-1m-close"] == 1.0  # half made, as the provider gave it
        date = forming["date"]

        def final_of_forming(m: dict[str, object]) -> bool:
            data = m["data"]
            return isinstance(data, dict) and data["date"] == date

        update = await client.wait_for("data_update", final_of_forming, timeout=5)
        assert update["data"]["late-AAA-1m-close"] == 2.0
        updates = [m["data"]["date"] for m in client.of_type("data_update")]
        assert updates.index(date) == 0  # before the next bar's update
        await client.wait_for("data_update", lambda m: m["data"]["date"] > date)

        history = server.get("/api/history?source=late&name=AAA&interval=1m&count=5")
        closed = {bar["date"]: bar for bar in history["data"]}
        assert closed[date]["late-AAA-1m-close"] == 2.0
        assert not client.of_type("error")
    finally:
        await client.close()


async def test_a_bar_a_stopped_stream_had_updated_gets_its_final_values(tmp_path: Path) -> None:
    minute = (int(time.time()) // 60 - 6) * 60  # the exchange's clock: frozen, behind ours
    with FakeBinance(now_ms=minute * 1000 + 20_000, push_interval=0.2) as exchange:
        env = base_env(
            tmp_path,
            **exchange.settings,
            STREAM_LINGER_SECONDS="0.3",
        )
        assert populate(env).returncode == 0
        with ServerProcess(env, tmp_path / "server.log") as server:
            btc = {"type": "data", "source": "binance", "name": "BTCUSDT", "interval": "1m"}
            date = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(minute))
            first = await WsClient.open(server.ws_url)
            await first.send(btc | {"count": 3})
            await first.wait_for("data_init", timeout=30)
            exchange.advance(0.001)  # a kline the stream has not sent yet
            await first.wait_for("data_update", lambda m: m["data"]["date"] == date, timeout=30)
            await first.close()  # the stream stops: its last update of the bar is as of :20
            harness.until(lambda: exchange.open_connections == 0, what="the stream stopped")
            exchange.advance(30)
            exchange.go_silent(5)  # the new stream's first kline comes after the bar closed
            chart = await WsClient.open(server.ws_url)
            try:
                await chart.send(btc | {"count": 3})
                init = await chart.wait_for("data_init", timeout=30)
                assert init["data"][-1]["date"] == date  # forming, as of :50
                exchange.advance(30)  # it closes; the next bar forms
                rows = exchange.klines("BTCUSDT", "1m", start_time=minute * 1000, limit=2)
                fields = ("open", "high", "low", "close", "volume")
                final = {"date": date} | {
                    f"binance-BTCUSDT-1m-{f}": float(v)
                    for f, v in zip(fields, rows[0][1:6], strict=True)
                }
                assert final != init["data"][-1]
                after = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(minute + 60))
                await chart.wait_for("data_update", lambda m: m["data"]["date"] == after)
                updates = [m["data"] for m in chart.of_type("data_update")]
                assert updates[0] == final  # before the next bar's
                history = server.get("/api/history?source=binance&name=BTCUSDT&interval=1m&count=3")
                assert final in history["data"]
            finally:
                await chart.close()
