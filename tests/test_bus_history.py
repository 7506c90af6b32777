"""History over the bus (issue 14): single flight across hubs and ``HISTORY_TIMEOUT`` end
to end, with real hubs and a real provider node on the shared Redis.

The node runs ``SlowHistoryProvider``: each ``get_history`` call is logged with its window
and takes a few seconds, so that requests of two hubs meet while it is in flight. Two hubs
asking for the same window at once cause one provider call and get the same bars; so do
two hubs asking for the latest bars a second apart (their windows start a second apart).
A node that holds the lease but never answers: the hub answers with an error when
``HISTORY_TIMEOUT`` has passed, and the socket stays served. The joining rule is also
checked on its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis

from backend.bus import codec
from backend.bus.names import Names
from backend.bus.node import ProviderNode, Waiter
from backend.model import intervals
from backend.settings import load_settings
from tests import bus_deploy, harness
from tests.bus_deploy import SHARED_REDIS
from tests.harness import ServerProcess, WsClient, same_key

DELAY = harness.seconds(3.0)  # each provider history call takes this long
TIMEOUT = 2.0  # HISTORY_TIMEOUT of the silent-node test


@dataclass
class Deployment:
    node: ServerProcess
    hubs: list[ServerProcess]

    def windows(self, name: str, end: str | None = None) -> list[str]:
        """The windows of the provider's history calls for ``name`` 1m (``start|end|count``),
        those ending at ``end`` when given."""
        found = []
        for line in bus_deploy.lines(self.node.env):
            if line.startswith(f"window {name} 1m "):
                window = line.split(" ", 3)[3]
                if end is None or window.split("|")[1] == end:
                    found.append(window)
        return found


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("bus_history")
    prefix = bus_deploy.new_prefix()

    def env(name: str) -> dict[str, str]:
        values = bus_deploy.bus_env(
            tmp,
            SHARED_REDIS,
            prefix,
            name,
            EXTRA_PROVIDERS="counting=tests.providers:SlowHistoryProvider",
            CANDLEWIRE_TEST_HISTORY_DELAY=str(DELAY),
        )
        return {**values, "HISTORY_TIMEOUT": str(3 * DELAY)}

    assert harness.populate(env("symbols")).returncode == 0
    node = bus_deploy.node(env("node"), tmp, "node")
    hubs: list[ServerProcess] = []
    try:
        harness.until(lambda: bus_deploy.holds_lease(node), 20, "the node's lease")
        symbols = tmp / "symbols.sqlite3"
        hubs = bus_deploy.start_all(
            *(partial(bus_deploy.hub, env(n), tmp, n, symbols=symbols) for n in ("hubA", "hubB"))
        )
        yield Deployment(node, hubs)
    finally:
        for process in [*hubs, node]:
            process.stop()


async def clients(deployment: Deployment) -> tuple[WsClient, WsClient]:
    first, second = deployment.hubs
    return await WsClient.open(first.ws_url), await WsClient.open(second.ws_url)


def latest(name: str) -> dict[str, Any]:
    return {
        "type": "data",
        "source": "counting",
        "name": name,
        "interval": "1m",
        "count": 5,
        "stream": False,  # no live update lands in either hub's answer
    }


async def test_two_hubs_asking_for_one_window_at_once_share_one_provider_call(
    deployment: Deployment,
) -> None:
    a, b = await clients(deployment)
    try:
        end = intervals.format_date(int(time.time()) // 3600 * 3600 - 2 * 86400)
        request = {
            "type": "data_history",
            "source": "counting",
            "name": "AAA",
            "interval": "1m",
            "end": end,
            "count": 10,
        }
        await asyncio.gather(a.send(request), b.send(request))
        wait = DELAY + 10
        got_a, got_b = await asyncio.gather(
            a.wait_for("data_history", same_key("AAA", "1m"), wait),
            b.wait_for("data_history", same_key("AAA", "1m"), wait),
        )
        assert len(got_a["data"]) == 10 and got_a["data"][-1]["date"] == end
        assert got_b["data"] == got_a["data"]
        assert deployment.windows("AAA") == [deployment.windows("AAA")[0]]
    finally:
        await a.close()
        await b.close()


async def test_the_latest_bars_asked_by_two_hubs_a_second_apart_share_one_provider_call(
    deployment: Deployment,
) -> None:
    a, b = await clients(deployment)
    try:
        await a.send(latest("BBB"))
        await harness.eventually(lambda: deployment.windows("BBB"), 10, "hub A's provider call")
        [first] = deployment.windows("BBB")
        start, end, count = first.split("|")
        assert end == "now UTC" and count == "5"
        # Hub B's clock reads a later second: its window starts later than hub A's.
        later = intervals.parse_date(start) + 5 * 60 + 1
        await harness.eventually(lambda: time.time() >= later, 5, "the next second")
        await b.send(latest("BBB"))
        wait = 2 * DELAY + 10
        got_a, got_b = await asyncio.gather(
            a.wait_for("data_init", same_key("BBB", "1m"), wait),
            b.wait_for("data_init", same_key("BBB", "1m"), wait),
        )
        assert len(got_a["data"]) == 5
        assert got_b["data"] == got_a["data"]
        assert deployment.windows("BBB", end="now UTC") == [first]
    finally:
        await a.close()
        await b.close()


async def test_a_node_that_never_answers_gets_the_hub_an_error_within_history_timeout(
    tmp_path: Path,
) -> None:
    names = Names(bus_deploy.new_prefix())
    silent = codec.Active("silent-node", None, True, [])
    store = redis.Redis.from_url(SHARED_REDIS)
    keys = [names.lease("counting"), names.active("counting"), names.history("counting")]
    # A "node" that holds the lease and announced itself, but never pops a request.
    store.set(keys[0], "silent-node", px=120_000)
    store.set(keys[1], codec.encode(silent), px=120_000)
    env = bus_deploy.bus_env(tmp_path, SHARED_REDIS, names.prefix, "hub")
    env["HISTORY_TIMEOUT"] = str(TIMEOUT)
    assert harness.populate(env).returncode == 0
    hub = ServerProcess(env, tmp_path / "hub.server.log", args=("--role", "hub"))
    try:
        hub.start()
        await harness.eventually(
            lambda: hub.get("/health")["providers"]["counting"]["node"] == "silent-node",
            10,
            "the hub to see the silent node",
        )
        client = await WsClient.open(hub.ws_url)
        asked = time.monotonic()
        await client.send(latest("CCC"))
        init = await client.wait_for("data_init", same_key("CCC", "1m"), TIMEOUT + 10)
        took = time.monotonic() - asked
        error = await client.wait_for("error", timeout=1)
        assert init["data"] == []
        assert "did not answer" in error["message"] and error["code"] == "provider_unavailable"
        assert TIMEOUT - 0.1 <= took < TIMEOUT + harness.seconds(2)
        assert store.llen(keys[2]) >= 1  # the request is there: nobody took it
        mark = len(client.messages)
        await client.send({"type": "ping"})
        await client.wait_for("pong", after=mark)
        await client.close()
    finally:
        hub.stop()
        store.delete(*keys)
        store.close()


async def test_with_no_node_at_all_a_chart_gets_its_error_within_one_history_timeout(
    tmp_path: Path,
) -> None:
    """No node holds the provider: the hub waited HISTORY_TIMEOUT for one to be ready, then
    as long again for the answer, so the chart's error came after twice the timeout."""
    names = Names(bus_deploy.new_prefix())
    env = bus_deploy.bus_env(tmp_path, SHARED_REDIS, names.prefix, "hub")
    env["HISTORY_TIMEOUT"] = str(TIMEOUT)
    assert harness.populate(env).returncode == 0
    hub = ServerProcess(env, tmp_path / "hub.server.log", args=("--role", "hub"))
    store = redis.Redis.from_url(SHARED_REDIS)
    try:
        hub.start(healthy=False)
        # "unreachable" until the hub's first link to Redis is up (a loaded machine)
        await harness.eventually(
            lambda: hub.get("/health")["providers"]["counting"]["state"] == "no_node",
            what="the hub knows no node holds the provider",
        )
        client = await WsClient.open(hub.ws_url)
        asked = time.monotonic()
        await client.send(latest("CCC"))
        init = await client.wait_for("data_init", same_key("CCC", "1m"), 2 * TIMEOUT + 10)
        took = time.monotonic() - asked
        error = await client.wait_for("error", timeout=1)
        assert init["data"] == [] and error["code"] == "provider_unavailable"
        assert took < TIMEOUT + harness.seconds(1.5), took
        # Known unready: the next chart does not wait again.
        asked = time.monotonic()
        await client.send(latest("AAA"))
        await client.wait_for("data_init", same_key("AAA", "1m"), TIMEOUT + 10)
        assert time.monotonic() - asked < harness.seconds(1.5)
        # A node comes: the provider is ready again and history flows.
        node = bus_deploy.node(env | {"DB": str(tmp_path / "node.sqlite3")}, tmp_path, "node")
        try:
            await harness.eventually(
                lambda: hub.get("/health")["providers"]["counting"]["state"] == "running",
                harness.seconds(15),
                "the node to take the provider",
            )
            mark = len(client.messages)
            await client.send(latest("BBB"))
            init = await client.wait_for("data_init", same_key("BBB", "1m"), 20, after=mark)
            assert len(init["data"]) == 5
        finally:
            node.stop()
        await client.close()
    finally:
        hub.stop()
        for key in store.scan_iter(names.prefix + "*"):
            store.delete(key)
        store.close()


def test_which_window_joins_a_call_in_flight() -> None:
    """The rule on its own: same series, both ending now, same count, a start at most one
    bar interval later; identical windows always share."""
    node = ProviderNode(load_settings(PROVIDERS="csv", BUS_URL=SHARED_REDIS))
    in_flight = ("csv", "AAA", "1m", "2026-12-03 07:00:30", "now UTC", 5)
    waiters: list[Waiter] = [("hubA", 1, None)]
    node._inflight[in_flight] = waiters
    cut = intervals.parse_date("2026-12-03 07:01:29")
    assert node._containing(("csv", "AAA", "1m", "2026-12-03 07:01:29", "now UTC", 5)) == (
        waiters,
        cut,
    )
    for other in (
        ("csv", "AAA", "1m", "2026-12-03 07:01:30", "now UTC", 5),  # a whole bar later
        ("csv", "AAA", "1m", "2026-12-03 07:00:29", "now UTC", 5),  # earlier
        ("csv", "AAA", "1m", "2026-12-03 07:00:31", "now UTC", 6),  # another count
        ("csv", "AAA", "5m", "2026-12-03 07:00:31", "now UTC", 5),  # another interval
        ("csv", "AAA", "1m", "2026-12-03 07:00:31", "2026-12-03 07:05:00", 5),  # not now
        ("csv", "AAA", "1m", "yesterday", "now UTC", 5),  # not a hub's window
    ):
        assert node._containing(other) is None, other


async def test_history_a_dying_node_took_with_it_is_asked_of_the_node_that_takes_over(
    tmp_path: Path,
) -> None:
    """The request waited out HISTORY_TIMEOUT and the chart got an error, though the
    standby held the lease a lease later."""
    names = Names(bus_deploy.new_prefix())
    store = redis.Redis.from_url(SHARED_REDIS)
    keys = [names.lease("counting"), names.active("counting"), names.history("counting")]
    store.set(keys[0], "old-node", px=120_000)
    store.set(keys[1], codec.encode(codec.Active("old-node", None, True, [])), px=120_000)
    env = bus_deploy.bus_env(tmp_path, SHARED_REDIS, names.prefix, "hub")
    env["HISTORY_TIMEOUT"] = "30"
    assert harness.populate(env).returncode == 0
    hub = ServerProcess(env, tmp_path / "hub.server.log", args=("--role", "hub"))
    try:
        hub.start()
        await harness.eventually(
            lambda: hub.get("/health")["providers"]["counting"]["node"] == "old-node",
            10,
            "the hub to see the old node",
        )
        client = await WsClient.open(hub.ws_url)
        await client.send(latest("CCC"))
        await harness.eventually(lambda: store.llen(keys[2]) >= 1, 10, "the request")
        taken = codec.decode(store.lpop(keys[2]), "test")  # the old node took it, then died
        assert isinstance(taken, codec.HistoryRequest)
        store.delete(keys[0], keys[1])  # its lease and announcement expire: a gap, no holder
        await harness.eventually(
            lambda: hub.get("/health")["providers"]["counting"]["state"] == "no_node",
            10,
            "the hub to see no holder",
        )
        health = hub.get("/health")
        assert health["status"] == "degraded" and "counting" in health["reason"]
        new = codec.Active("new-node", None, True, [])
        store.set(keys[0], "new-node", px=120_000)
        store.set(keys[1], codec.encode(new), px=120_000)
        store.publish(names.updates("counting"), codec.encode(new))
        await harness.eventually(lambda: store.llen(keys[2]) >= 1, 10, "the request again")
        again = codec.decode(store.lpop(keys[2]), "test")
        assert again == taken
        t = intervals.floor(int(time.time()), "1m")
        bars = [(t - 60 * i, 1.0, 2.0, 0.5, 1.5, 3.0) for i in range(4, -1, -1)]
        store.publish(
            names.reply(taken.hub), codec.encode(codec.HistoryAnswer(taken.request_id, bars))
        )
        init = await client.wait_for("data_init", same_key("CCC", "1m"), 10)
        assert [point["date"] for point in init["data"]] == [
            intervals.format_date(bar[0]) for bar in bars
        ]
        assert client.of_type("error") == []
        await client.close()
    finally:
        hub.stop()
        store.delete(*keys)
        store.close()
