"""Redis stopped and restarted under a running deployment (issue 14), on a private
``redis-server`` of this test (the shared one is never touched): ``--role all`` with
``BUS_URL`` (a hub and a provider node in one process tree).

While Redis is down the hub keeps its sockets, answers from its caches and its symbol
database, and ``/health`` says ``degraded`` with the reason; the node stops streaming once
its lease would have expired. When Redis is back (empty: it keeps nothing on disk) the node
takes the lease again, the hub registers its demand again and the client updates again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import bus_deploy, harness
from tests.bus_deploy import LEASE, PrivateRedis
from tests.harness import ServerProcess, WsClient, same_key


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path).start()
    yield server
    server.stop()


def status(server: ServerProcess) -> str:
    health: dict[str, str] = server.get("/health")
    return health["status"]


async def test_a_redis_restart_degrades_then_everything_resumes(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    env = bus_deploy.bus_env(tmp_path, private_redis.url, bus_deploy.new_prefix(), "all")
    assert harness.populate(env).returncode == 0
    with ServerProcess(env, tmp_path / "all.server.log", args=("--role", "all")) as server:
        client = await WsClient.open(server.ws_url)
        await client.send(
            {"type": "data", "source": "counting", "name": "AAA", "interval": "1m", "count": 5}
        )
        await client.wait_for("data_update", same_key("AAA", "1m"))
        private_redis.stop()
        await harness.eventually(lambda: status(server) == "degraded", 10, "degraded health")
        health = server.get("/health")
        assert health["reason"].startswith("bus: ")
        assert health["bus"]["state"] == "down"
        # The node stops streaming when its lease would have expired.
        await harness.eventually(
            lambda: "last AAA 1m" in bus_deploy.lines(env), LEASE + 5, "the stream to stop"
        )
        # The socket stays open and is answered from the hub's own data.
        mark = len(client.messages)
        await client.send({"type": "search_data", "search": "bbb"})
        reply = await client.wait_for("search_data_done", after=mark)
        assert reply["results"][0]["name"] == "BBB"
        await client.send(
            {"type": "data", "source": "counting", "name": "AAA", "interval": "1m", "count": 3}
        )
        init = await client.wait_for("data_init", same_key("AAA", "1m"), after=mark)
        assert len(init["data"]) == 3
        # A miss is answered at once: the hub knows the bus is down (it waited HISTORY_TIMEOUT).
        mark = len(client.messages)
        asked = time.monotonic()
        await client.send(
            {"type": "data", "source": "counting", "name": "CCC", "interval": "1m", "count": 3}
        )
        init = await client.wait_for("data_init", same_key("CCC", "1m"), 15, after=mark)
        error = await client.wait_for("error", after=mark)
        assert init["data"] == [] and error["code"] == "provider_unavailable"
        assert "bus is down" in error["message"]
        assert time.monotonic() - asked < harness.seconds(2), "waited for the bus"
        private_redis.start()
        await harness.eventually(lambda: status(server) == "ok", LEASE + 15, "health ok again")
        mark = len(client.messages)
        await client.wait_for("data_update", same_key("AAA", "1m"), LEASE + 10, after=mark)
        assert bus_deploy.lines(env).count("first AAA 1m") == 2
        await client.close()
