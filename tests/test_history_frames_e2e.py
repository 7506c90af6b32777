"""The encoded-history cache end to end: the real server with ``PROVIDERS=binance`` against the
fake exchange on loopback, real WebSocket clients. Identical requests are answered from one
encoding, and no answer is ever stale: after a forming-bar update, a new bar, scroll-back
history, and for every request parameter, each ``data_init`` / ``data_history`` equals the
exchange's klines exactly.

The fake's clock is frozen minutes behind the real time (as in ``test_binance_provider``) and
moved forward by the tests, so the exchange's bars are known exactly at every step.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.model import intervals
from tests.fakes.binance import FakeBinance
from tests.harness import ServerProcess, WsClient, base_env, populate

FIELDS = ("open", "high", "low", "close", "volume")
MINUTE_MS = 60_000
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBinance]:
    frozen = (int(time.time()) // 60 - 8) * MINUTE_MS + 10_000  # 10 s into a minute
    with FakeBinance(now_ms=frozen, push_interval=0.05) as exchange:
        yield exchange
        assert exchange.violations == []
        assert exchange.errors == []


@pytest.fixture(scope="module")
def server(fake: FakeBinance, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = base_env(
        tmp_path_factory.mktemp("frames"),
        **fake.settings,
        HISTORY_TIMEOUT="6",
        STREAM_LINGER_SECONDS="0.3",
    )
    result: subprocess.CompletedProcess[str] = populate(env)
    assert result.returncode == 0, result.stderr
    with ServerProcess(env, Path(env["DB"]).parent / "server.log") as running:
        yield running


def data(name: str, interval: str, **extra: Any) -> dict[str, Any]:
    return {"type": "data", "source": "binance", "name": name, "interval": interval, **extra}


def history(name: str, interval: str, end: str, count: int) -> dict[str, Any]:
    return {
        "type": "data_history",
        "source": "binance",
        "name": name,
        "interval": interval,
        "end": end,
        "count": count,
    }


def points(fake: FakeBinance, name: str, interval: str, **query: Any) -> list[dict[str, Any]]:
    """What the wire should carry: the exchange's klines for ``query``, now."""
    base = f"binance-{name}-{interval}"
    return [
        {"date": intervals.format_date(row[0] // 1000)}
        | {f"{base}-{f}": float(v) for f, v in zip(FIELDS, row[1:6], strict=True)}
        for row in fake.klines(name, interval, **query)
    ]


def frames_metric(server: ServerProcess, how: str) -> int:
    text = server.get("/metrics")
    found = re.search(rf'candlewire_history_frames_total{{frame="{how}"}} (\d+)', text)
    return int(found.group(1)) if found else 0


async def ask(ws: WsClient, kind: str, request: dict[str, Any]) -> dict[str, Any]:
    """Send one request and wait for its answer (the next ``kind`` about its key)."""
    mark = len(ws.messages)
    await ws.send(request)
    return await ws.wait_for(
        kind,
        lambda m: m.get("name") == request["name"] and m.get("interval") == request["interval"],
        timeout=TIMEOUT,
        after=mark,
    )


async def wait_for_update(ws: WsClient, expected: dict[str, Any], after: int) -> None:
    """Until the live stream brought ``expected`` (the exchange's newest bar now)."""
    await ws.wait_for("data_update", lambda m: m["data"] == expected, timeout=TIMEOUT, after=after)


async def test_a_storm_of_identical_requests_costs_one_encoding(
    fake: FakeBinance, server: ServerProcess
) -> None:
    clients = [await WsClient.open(server.ws_url) for _ in range(20)]
    try:
        request = data("BTCUSDT", "1m", count=700, stream=False)
        await clients[0].send(request)  # a cold key: one provider call, one encoding
        await clients[0].wait_for("data_init", timeout=TIMEOUT)
        encoded = frames_metric(server, "encoded")
        cached = frames_metric(server, "cached")
        answers = await asyncio.gather(*(ask(ws, "data_init", request) for ws in clients))
        expected = points(fake, "BTCUSDT", "1m", limit=700)
        assert len(expected) == 700
        assert all(answer["data"] == expected for answer in answers)
        assert frames_metric(server, "encoded") - encoded <= 1  # a tail refresh at most
        assert frames_metric(server, "cached") - cached >= 19
    finally:
        for ws in clients:
            await ws.close()


async def test_answers_after_a_forming_bar_update_and_a_new_bar_have_them(
    fake: FakeBinance, server: ServerProcess
) -> None:
    name, interval = "ETHUSDT", "1m"
    live, asker = await WsClient.open(server.ws_url), await WsClient.open(server.ws_url)
    try:
        await live.send(data(name, interval, count=50))
        await live.wait_for("data_init", timeout=TIMEOUT)
        request = data(name, interval, count=50, stream=False)
        for _ in range(2):  # the second from the cache
            answer = await ask(asker, "data_init", request)
            assert answer["data"] == points(fake, name, interval, limit=50)
        for step in (20, 15, 60, 60):  # two updates of the forming bar, then two new bars
            before = points(fake, name, interval, limit=50)
            mark = len(live.messages)
            fake.advance(step)
            expected = points(fake, name, interval, limit=50)
            assert expected != before
            await wait_for_update(live, expected[-1], mark)
            # The hub applied the update before the subscriber got it: any later answer has it.
            answer = await ask(asker, "data_init", request)
            assert answer["data"] == expected
            assert (await ask(asker, "data_init", request))["data"] == expected
        assert frames_metric(server, "spliced") >= 1  # a forming-bar update re-encodes one bar
    finally:
        await live.close()
        await asker.close()


async def test_scroll_back_history_is_merged_into_the_next_answers(
    fake: FakeBinance, server: ServerProcess
) -> None:
    name, interval = "BNBUSDT", "1m"
    ws = await WsClient.open(server.ws_url)
    try:
        await ws.send(data(name, interval, count=20))
        first = await ws.wait_for("data_init", timeout=TIMEOUT)
        assert first["data"] == points(fake, name, interval, limit=20)
        oldest_ms = intervals.parse_date(first["data"][0]["date"]) * 1000
        end = intervals.format_date(oldest_ms // 1000 - 60)
        older = await ask(ws, "data_history", history(name, interval, end, 30))
        assert older["data"] == points(fake, name, interval, end_time=oldest_ms - 1, limit=30)
        for count in (20, 50, 20):
            answer = await ask(ws, "data_init", data(name, interval, count=count))
            assert answer["data"] == points(fake, name, interval, limit=count)
        again = await ask(ws, "data_history", history(name, interval, end, 30))
        assert again["data"] == older["data"]
    finally:
        await ws.close()


async def test_every_request_parameter_that_changes_the_answer_gets_its_own_frame(
    fake: FakeBinance, server: ServerProcess
) -> None:
    ws = await WsClient.open(server.ws_url)
    try:
        name = "ETHBTC"
        for interval, count in (("1m", 10), ("1m", 11), ("5m", 10), ("1h", 10), ("1m", 10)):
            answer = await ask(ws, "data_init", data(name, interval, count=count, stream=False))
            assert answer["data"] == points(fake, name, interval, limit=count)
            assert answer["metadata"]["name"] == name
        newest_ms = intervals.parse_date(answer["data"][-1]["date"]) * 1000
        for back in (0, 1, 3, 1):
            end_ms = newest_ms - back * MINUTE_MS
            end = intervals.format_date(end_ms // 1000)
            older = await ask(ws, "data_history", history(name, "1m", end, 5))
            assert older["data"] == points(fake, name, "1m", end_time=end_ms, limit=5)
            assert older["metadata"] is None
    finally:
        await ws.close()
