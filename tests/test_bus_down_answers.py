"""A hub whose Redis is down answers what it does not have at once (DESIGN section 6:
"Losing Redis degrades (cached answers, /health says so)").

While the hub knows the bus is down, a history request it cannot serve from its own store
gets its empty ``data_init`` and ``error provider_unavailable`` right away, rather than
after waiting out ``HISTORY_TIMEOUT`` for a node it cannot reach; the message names the
kind of failure, never the Redis host and port; so does a hub started while Redis is
unreachable (it has never seen a node). A history request in flight when Redis restarts
is asked again once the hub's reply channel is back, not left to ``HISTORY_TIMEOUT``; one
whose timeout passes while Redis stays away is told the bus is down.
Redis is a private ``redis-server`` of this test (the shared one is never touched).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import bus_deploy, harness
from tests.bus_deploy import PrivateRedis
from tests.harness import ServerProcess, WsClient, same_key


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path).start()
    yield server
    server.stop()


async def refused_at_once(client: WsClient) -> dict[str, str]:
    """Ask for AAA 1m while the bus is down: an empty ``data_init`` within seconds and its
    ``error`` saying so (returned)."""
    started = time.monotonic()
    await client.send(
        {"type": "data", "source": "counting", "name": "AAA", "interval": "1m", "count": 5}
    )
    init = await client.wait_for("data_init", same_key("AAA", "1m"), 20)
    assert time.monotonic() - started < harness.seconds(5)
    error: dict[str, str] = await client.wait_for(
        "error", lambda m: m["request"]["name"] == "AAA", 1
    )
    assert init["data"] == []
    assert error["code"] == "provider_unavailable"
    assert "bus is down" in error["message"]
    return error


async def ask_as_the_provider_calls(client: WsClient, env: dict[str, str]) -> None:
    """Ask for AAA 1m; back once the provider's history call for it has begun."""
    await client.send(
        {"type": "data", "source": "counting", "name": "AAA", "interval": "1m", "count": 5}
    )
    await harness.eventually(
        lambda: any(line.startswith("window AAA 1m") for line in bus_deploy.lines(env)),
        10,
        "the provider's history call",
    )


def _get(server: ServerProcess, path: str) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(server.url + path, timeout=harness.seconds(10)) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_an_uncached_request_is_answered_at_once_while_redis_is_down(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    env = bus_deploy.bus_env(tmp_path, private_redis.url, bus_deploy.new_prefix(), "all")
    env["HISTORY_TIMEOUT"] = "30"
    assert harness.populate(env).returncode == 0
    port = private_redis.url.rsplit(":", 1)[1].split("/")[0]
    with ServerProcess(env, tmp_path / "all.server.log", args=("--role", "all")) as server:
        private_redis.stop()
        await harness.eventually(
            lambda: server.get("/health")["status"] == "degraded", 10, "degraded health"
        )
        client = await WsClient.open(server.ws_url)
        error = await refused_at_once(client)
        assert port not in error["message"] and "127.0.0.1" not in error["message"]
        started = time.monotonic()
        status, body = _get(server, "/api/history?source=counting&name=BBB&interval=1h&count=3")
        assert time.monotonic() - started < harness.seconds(5)
        assert status == 503 and body["error"] == "provider_unavailable"
        assert port not in body["message"]
        await client.close()


async def test_a_hub_started_while_redis_is_down_answers_at_once(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    """It had never seen a holder, so it waited out ``HISTORY_TIMEOUT`` for a node to take
    the provider and then said "not ready", although it knew the bus was down."""
    prefix = bus_deploy.new_prefix()
    env = bus_deploy.bus_env(tmp_path, private_redis.url, prefix, "hub")
    env["HISTORY_TIMEOUT"] = "30"
    assert harness.populate(env).returncode == 0
    private_redis.stop()
    server = ServerProcess(env, tmp_path / "hub.server.log", args=("--role", "hub"))
    server.start(healthy=False)
    try:
        await harness.eventually(
            lambda: server.get("/health")["providers"]["counting"]["state"] == "unreachable",
            10,
            "the hub to know the bus is down",
        )
        client = await WsClient.open(server.ws_url)
        await refused_at_once(client)
        # Once Redis is up, the provider is asked as usual (not refused as "not ready").
        private_redis.start()
        node_env = bus_deploy.bus_env(tmp_path, private_redis.url, prefix, "node")
        node = bus_deploy.node(node_env, tmp_path, "node")
        try:
            mark = len(client.messages)
            await client.send(
                {"type": "data", "source": "counting", "name": "BBB", "interval": "1m", "count": 5}
            )
            init = await client.wait_for("data_init", same_key("BBB", "1m"), 20, mark)
            assert len(init["data"]) == 5, client.of_type("error", mark)
        finally:
            node.stop()
        await client.close()
    finally:
        server.stop()


async def test_history_in_flight_across_a_redis_restart_is_asked_again(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    """The node's answer was published while Redis was down (lost), or the request went
    with an emptied Redis: the hub waited out ``HISTORY_TIMEOUT`` for it and answered
    ``provider_unavailable``. Now the requests it waits for are asked again once its reply
    channel is subscribed again."""
    delay = 2.0
    env = bus_deploy.bus_env(
        tmp_path,
        private_redis.url,
        bus_deploy.new_prefix(),
        "all",
        EXTRA_PROVIDERS="counting=tests.providers:SlowHistoryProvider",
        CANDLEWIRE_TEST_HISTORY_DELAY=str(delay),
    )
    env["HISTORY_TIMEOUT"] = "30"
    assert harness.populate(env).returncode == 0
    with ServerProcess(env, tmp_path / "all.server.log", args=("--role", "all")) as server:
        client = await WsClient.open(server.ws_url)
        started = time.monotonic()
        await ask_as_the_provider_calls(client, env)
        private_redis.stop()
        # the call answers while Redis is down (the provider logs ``history`` as it returns
        # its bars): its reply is lost
        await harness.eventually(
            lambda: any(line.startswith("history AAA 1m") for line in bus_deploy.lines(env)),
            delay + 10,
            "the provider's answer",
        )
        private_redis.start()
        init = await client.wait_for("data_init", same_key("AAA", "1m"), 40)
        took = time.monotonic() - started
        assert len(init["data"]) == 5, client.of_type("error")
        assert not client.of_type("error")
        assert took < harness.seconds(15), f"answered after {took:.1f} s"
        await client.close()


async def test_history_in_flight_while_redis_stays_down_says_the_bus_is_down(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    """A request the hub waited for when Redis went away got "provider ... did not answer",
    blaming the provider for what the bus did; it still waits ``HISTORY_TIMEOUT`` (Redis may
    come back, and the request is asked again) and then names the bus."""
    env = bus_deploy.bus_env(
        tmp_path,
        private_redis.url,
        bus_deploy.new_prefix(),
        "all",
        EXTRA_PROVIDERS="counting=tests.providers:SlowHistoryProvider",
        CANDLEWIRE_TEST_HISTORY_DELAY="2",
    )
    env["HISTORY_TIMEOUT"] = "4"
    assert harness.populate(env).returncode == 0
    with ServerProcess(env, tmp_path / "all.server.log", args=("--role", "all")) as server:
        client = await WsClient.open(server.ws_url)
        await ask_as_the_provider_calls(client, env)
        private_redis.stop()
        error = await client.wait_for("error", lambda m: m["request"]["name"] == "AAA", 10)
        assert error["code"] == "provider_unavailable"
        assert "the bus is down" in error["message"], error["message"]
        assert "127.0.0.1" not in error["message"]
        await client.close()
