"""The provider node's pipelined publisher (``backend.bus.link.Publisher``) on a private
``redis-server`` of this test (the shared one is never stopped): every batch arrives, in
order, although it never waits for Redis's answer to the one before; when Redis goes away a
publish raises ``BusDown`` (never hangs), and once Redis is back the publisher connects
again by itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from backend.bus import link
from backend.bus.link import BusDown, Publisher
from tests import harness
from tests.bus_deploy import PrivateRedis

CHANNEL = "cwtest:publisher"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path).start()
    yield server
    server.stop()


async def _received(url: str, count: int, publish: asyncio.Future[None]) -> list[bytes]:
    """Subscribe, let ``publish`` start, and collect ``count`` messages."""
    client = aioredis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(CHANNEL)
    publish.set_result(None)
    got: list[bytes] = []
    deadline = time.monotonic() + harness.seconds(10)
    while len(got) < count and time.monotonic() < deadline:
        message = await pubsub.get_message(timeout=0.5)
        if message is not None:
            got.append(message["data"])
    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
    await client.aclose()
    return got


async def test_pipelined_batches_all_arrive_in_order(private_redis: PrivateRedis) -> None:
    publisher = Publisher(private_redis.url, timeout=harness.seconds(2))
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    count = 3 * Publisher.MAX_UNANSWERED + 7  # more than may be unanswered at once
    receiving = asyncio.create_task(_received(private_redis.url, count, ready))
    await ready
    try:
        for i in range(count):
            await publisher.publish(CHANNEL, f"batch {i}".encode())
        got = await receiving
    finally:
        await publisher.close()
    assert got == [f"batch {i}".encode() for i in range(count)]


async def test_a_dead_redis_raises_bus_down_and_a_restarted_one_is_used_again(
    private_redis: PrivateRedis,
) -> None:
    publisher = Publisher(private_redis.url, timeout=harness.seconds(1))
    try:
        await publisher.publish(CHANNEL, b"before")
        private_redis.stop()
        # The first publish after the stop may still be written into the closing socket;
        # within a few the publisher must notice and raise, never hang.
        with pytest.raises(BusDown):
            for _ in range(Publisher.MAX_UNANSWERED + 2):
                await asyncio.wait_for(
                    publisher.publish(CHANNEL, b"while down"), harness.seconds(5)
                )
                await asyncio.sleep(0.05)  # let the answers task see the closed socket
        private_redis.start()
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        receiving = asyncio.create_task(_received(private_redis.url, 1, ready))
        await ready

        async def publish_until_it_works() -> None:
            while True:
                try:
                    await publisher.publish(CHANNEL, b"after")
                    return
                except BusDown:
                    await asyncio.sleep(0.05)

        await asyncio.wait_for(publish_until_it_works(), harness.seconds(10))
        assert await receiving == [b"after"]
    finally:
        await publisher.close()


async def test_a_burst_of_commands_opens_at_most_the_pools_connections(
    private_redis: PrivateRedis,
) -> None:
    """redis-py's default pool opens a connection per concurrent command and keeps them all:
    after a burst of history requests, a hub process held tens of idle connections."""
    client = link.client(private_redis.url, 2.0)
    counter = aioredis.Redis.from_url(private_redis.url)
    try:
        before = len(await counter.client_list())
        await asyncio.gather(*(client.set(f"cwtest:burst:{i}", i) for i in range(200)))
        assert await client.dbsize() == 200  # every command ran, each waiting for its turn
        opened = len(await counter.client_list()) - before
        assert 1 <= opened <= link.MAX_CONNECTIONS
    finally:
        await client.aclose()
        await counter.aclose()


async def test_a_connection_redis_closed_while_idle_loses_no_batch(
    private_redis: PrivateRedis,
) -> None:
    """Redis's ``timeout`` (managed Redis sets one; ``CLIENT KILL`` and proxies do the same)
    closes a connection that sent nothing for that long. A node whose provider was quiet
    (a market closed) wrote its next batch into the closed socket, where it was lost, and
    the one after raised ``BusDown`` and was dropped: two batches gone. The publisher now
    looks at an idle connection before it writes, and connects again when Redis closed it."""
    admin = aioredis.Redis.from_url(private_redis.url)
    await admin.config_set("timeout", 1)
    publisher = Publisher(private_redis.url, timeout=harness.seconds(2))
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    try:
        await publisher.publish(CHANNEL, b"before")

        async def publishers() -> int:
            clients = await admin.client_list()
            return sum(client["cmd"] == "publish" for client in clients)

        deadline = time.monotonic() + harness.seconds(15)
        while await publishers():  # Redis closes it within a second or so of the timeout
            assert time.monotonic() < deadline, "Redis did not close the idle connection"
            await asyncio.sleep(0.1)
        receiving = asyncio.create_task(_received(private_redis.url, 2, ready))
        await ready
        await publisher.publish(CHANNEL, b"after 1")  # before: lost in the closed socket
        await harness.eventually(  # answered (before: the answers task saw the close)
            lambda: publisher._unanswered == 0 or publisher._failed is not None, 5, "answer"
        )
        await publisher.publish(CHANNEL, b"after 2")  # before: BusDown, dropped
        assert await receiving == [b"after 1", b"after 2"]
    finally:
        await publisher.close()
        await admin.aclose()
