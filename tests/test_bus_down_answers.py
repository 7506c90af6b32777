"""A hub whose Redis is down answers what it does not have at once (DESIGN section 6:
"Losing Redis degrades (cached answers, /health says so)").

While the hub knows the bus is down, a history request it cannot serve from its own store
gets its empty ``data_init`` and ``error provider_unavailable`` right away, rather than
after waiting out ``HISTORY_TIMEOUT`` for a node it cannot reach; the message names the
kind of failure, never the Redis host and port; so does a hub started while Redis is
unreachable (it has never seen a node). Redis is a private ``redis-server`` of
this test (the shared one is never touched).
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
        started = time.monotonic()
        await client.send(
            {"type": "data", "source": "counting", "name": "AAA", "interval": "1m", "count": 5}
        )
        init = await client.wait_for("data_init", same_key("AAA", "1m"), 20)
        assert time.monotonic() - started < harness.seconds(5)
        error = await client.wait_for("error", lambda m: m["request"]["name"] == "AAA", 1)
        assert init["data"] == []
        assert error["code"] == "provider_unavailable"
        assert "bus is down" in error["message"]
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
        started = time.monotonic()
        await client.send(
            {"type": "data", "source": "counting", "name": "AAA", "interval": "1m", "count": 5}
        )
        init = await client.wait_for("data_init", same_key("AAA", "1m"), 20)
        assert time.monotonic() - started < harness.seconds(5)
        error = await client.wait_for("error", lambda m: m["request"]["name"] == "AAA", 1)
        assert init["data"] == []
        assert error["code"] == "provider_unavailable"
        assert "bus is down" in error["message"]
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
