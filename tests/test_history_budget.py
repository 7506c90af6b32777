"""The history budget of a connection (``HISTORY_BARS_PER_SECOND`` / ``HISTORY_BARS_BURST``):
one socket asking for all the history it can read is slowed down, never refused, and only
its own history replies wait."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.ratelimits import WorkBudget
from tests.harness import ServerProcess, WsClient, populated_server

BARS = 1_000
KEYS = ("AAA", "BBB", "CCC")


def test_a_budget_lets_its_burst_through_then_waits_out_each_debt() -> None:
    budget = WorkBudget(rate=100.0, burst=50.0, now=0.0)
    assert budget.wait(0.0) == 0.0
    budget.charge(50, 0.0)
    assert budget.wait(0.0) == 0.0  # spent, not in debt: the next piece may start
    budget.charge(30, 0.0)  # work is charged after it is done, whatever its size
    assert budget.wait(0.0) == pytest.approx(0.3)
    assert budget.wait(0.25) == pytest.approx(0.05)
    assert budget.wait(0.5) == 0.0  # 20 units in hand again
    budget.charge(-100, 0.5)  # a reply smaller than charged gives the rest back, up to the burst
    budget.charge(50, 0.5)
    assert budget.wait(0.5) == 0.0
    assert budget.wait(100.0) == 0.0
    budget.charge(80, 100.0)  # refilled to the burst, no further
    assert budget.wait(100.0) == pytest.approx(0.3)


def history(name: str, hours_ago: int, count: int = BARS) -> dict[str, object]:
    end = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() - hours_ago * 3600))
    return {
        "type": "data_history",
        "source": "counting",
        "name": name,
        "interval": "1m",
        "end": end,
        "count": count,
    }


def paced_total(server: ServerProcess) -> float:
    for line in str(server.get("/metrics")).splitlines():
        if line.startswith("candlewire_history_paced_total "):
            return float(line.split()[1])
    raise AssertionError("candlewire_history_paced_total is not exported")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with populated_server(
        tmp_path_factory.mktemp("budget"),
        PROVIDERS="counting",
        HISTORY_BARS_PER_SECOND="2000",
        HISTORY_BARS_BURST="1000",
    ) as running:
        yield running


async def test_a_greedy_socket_gets_all_its_history_slower_while_others_are_answered(
    server: ServerProcess,
) -> None:
    assert paced_total(server) == 0
    greedy = await WsClient.open(server.ws_url)
    bystander = await WsClient.open(server.ws_url)
    try:
        # six answers of 1,000 bars at 2,000 bars/s with a burst of 1,000: the third and
        # later ones wait half a second each (their lanes are the three keys)
        requests = [history(KEYS[i % 3], 24 + 24 * i) for i in range(6)]
        started = time.monotonic()
        await greedy.send(*requests)
        await greedy.send({"type": "ping", "id": "greedy"})
        await bystander.send({"type": "ping", "id": "bystander"})
        await bystander.wait_for("pong", timeout=30)
        await greedy.wait_for("pong", timeout=30)
        # the pings were answered while the greedy socket's history still waited
        assert len(greedy.of_type("data_history")) < len(requests)

        deadline = time.monotonic() + 60
        while len(greedy.of_type("data_history")) < len(requests):
            assert time.monotonic() < deadline, greedy.of_type("data_history")
            await greedy.wait_for("data_history", after=len(greedy.messages), timeout=30)
        elapsed = time.monotonic() - started
        answers = greedy.of_type("data_history")
        assert [len(answer["data"]) for answer in answers] == [BARS] * len(requests)
        assert not greedy.of_type("error")  # slowed down, never refused
        assert elapsed >= 1.5  # the last of them waited for at least its 2 s less rounding
        assert paced_total(server) >= 1
    finally:
        await greedy.close()
        await bystander.close()


async def test_a_window_sent_from_the_cache_of_encoded_frames_costs_nothing(
    server: ServerProcess,
) -> None:
    window = history("AAA", 500)  # one end time: the same window every time
    warmer = await WsClient.open(server.ws_url)
    client = await WsClient.open(server.ws_url)
    try:
        await warmer.send(window)  # encoded once, for (and charged to) another socket
        await warmer.wait_for("data_history", timeout=30)
        before = paced_total(server)
        # eight answers of the whole burst each: all the cached frame, and nothing waits
        for _ in range(8):
            count = len(client.of_type("data_history"))
            await client.send(window)
            while len(client.of_type("data_history")) == count:
                await client.wait_for("data_history", after=len(client.messages), timeout=30)
        assert [len(m["data"]) for m in client.of_type("data_history")] == [BARS] * 8
        assert paced_total(server) == before
    finally:
        await warmer.close()
        await client.close()


async def test_without_a_history_budget_nothing_waits(tmp_path: Path) -> None:
    with populated_server(
        tmp_path, PROVIDERS="counting", HISTORY_BARS_PER_SECOND="0", HISTORY_BARS_BURST="1"
    ) as running:
        client = await WsClient.open(running.ws_url)
        try:
            await client.send(*[history(KEYS[i % 3], 24 + 24 * i) for i in range(6)])
            deadline = time.monotonic() + 60
            while len(client.of_type("data_history")) < 6:
                assert time.monotonic() < deadline
                await client.wait_for("data_history", after=len(client.messages), timeout=30)
            assert paced_total(running) == 0
        finally:
            await client.close()


async def test_requests_under_100_bars_each_count_once_they_add_up(
    server: ServerProcess,
) -> None:
    """Requests under 100 bars were never counted on a socket that asked for nothing
    larger: one asking 99-bar windows got them as fast as the hub encoded them (69,000
    bars/s here against a budget of 2,000), never paced."""
    warmer = await WsClient.open(server.ws_url)
    greedy = await WsClient.open(server.ws_url)
    try:
        await warmer.send(history("BBB", 300))  # the bars of the windows below, stored
        await warmer.wait_for("data_history", timeout=30)
        before = paced_total(server)
        # 40 windows of 99 bars, each a new one (a minute apart): 3,960 bars, twice the
        # burst and a second's rate more
        windows = [history("BBB", 300, count=99) for _ in range(40)]
        for minutes, window in enumerate(windows):
            stamp = time.gmtime(time.time() - 300 * 3600 - 60 * (minutes + 1))
            window["end"] = time.strftime("%Y-%m-%d %H:%M:%S", stamp)
        await greedy.send(*windows)
        deadline = time.monotonic() + 60
        while len(greedy.of_type("data_history")) < len(windows):
            assert time.monotonic() < deadline, greedy.of_type("data_history")
            await greedy.wait_for("data_history", after=len(greedy.messages), timeout=30)
        assert [len(m["data"]) for m in greedy.of_type("data_history")] == [99] * len(windows)
        assert paced_total(server) > before
    finally:
        await warmer.close()
        await greedy.close()


def sma(chart_id: str, count: int) -> dict[str, object]:
    column = {"source": "counting", "name": "CCC", "interval": "1m"}
    return {
        "type": "indicator",
        "id": chart_id,
        "indicator": {"id": "talib.overlap.SMA", "type": "indicator"},
        "inputs": {"timeperiod": 5},
        "dataMap": {"close": column | {"value": "counting-CCC-1m-close", "dataKey": "close"}},
        "count": count,
        "stream": False,
    }


async def test_indicator_rows_count_as_history_bars(server: ServerProcess) -> None:
    """An ``indicator`` answer is history too (its bars read, computed and encoded): one
    socket asking for indicators over 10,000 bars got 321,000 rows a second against a
    budget of 100,000 bars (2,000 here, never paced), and a bystander's ping p99 went
    from 4 ms to 136 ms."""
    warmer = await WsClient.open(server.ws_url)
    greedy = await WsClient.open(server.ws_url)
    try:
        await warmer.send(sma("warm", BARS))  # the bars read below, stored
        await warmer.wait_for("indicator_init", timeout=30)
        before = paced_total(server)
        # six answers of 1,000 rows (three times the burst and a second's rate more)
        requests = [sma(f"sma-{i}", BARS) for i in range(6)]
        await greedy.send(*requests)
        deadline = time.monotonic() + 60
        while len(greedy.of_type("indicator_init")) < len(requests):
            assert time.monotonic() < deadline, greedy.messages
            await greedy.wait_for("indicator_init", after=len(greedy.messages), timeout=30)
        assert [len(m["data"]) for m in greedy.of_type("indicator_init")] == [BARS] * 6
        assert not greedy.of_type("error")  # slowed down, never refused
        assert paced_total(server) > before
    finally:
        await warmer.close()
        await greedy.close()


async def test_each_paced_socket_is_named_once_in_the_log(server: ServerProcess) -> None:
    """The warning came at every wait: the first greedy socket's filled the log's ten lines
    a minute for that place within half a second, and a second greedy socket was never
    named. It comes once per socket now, at its first wait."""
    log = server.log_path
    sockets = [await WsClient.open(server.ws_url) for _ in range(2)]
    try:
        for index, client in enumerate(sockets):
            # each waits more than ten times (the log's lines a minute for one place): so
            # many that a loaded machine, slow to answer, cannot keep a socket within budget
            asked = 24
            requests = [
                history(KEYS[i % 3], 200 + 4 * i + 100 * index, count=200) for i in range(asked)
            ]
            await client.send(*requests)
            deadline = time.monotonic() + 60
            while len(client.of_type("data_history")) < len(requests):
                assert time.monotonic() < deadline
                await client.wait_for("data_history", after=len(client.messages), timeout=30)
            assert [len(m["data"]) for m in client.of_type("data_history")] == [200] * asked
        peers = [client.connection.local_address for client in sockets]

        def named(peer: tuple[str, int]) -> int:
            text = log.read_text()
            mark = f"({peer[0]}:{peer[1]}) is over its history budget"
            return text.count(mark)

        assert [named(peer) for peer in peers] == [1, 1]
    finally:
        for client in sockets:
            await client.close()
