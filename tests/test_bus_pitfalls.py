"""Redis pitfalls that users of redis-py's asyncio pub/sub meet in production, against the
shared Redis (under a prefix of this test, left empty) through a TCP relay of the test.

A subscription whose TCP connection dies silently (a NAT or firewall that forgot it, a
network blip, a failover that moved the address: no FIN, no RST) is never noticed by a
reader that only waits for messages: ``get_message`` keeps answering "nothing yet" while the
rest of the process, on new connections, is fine (redis/redis-py#2417; celery/kombu#2590:
redis-py's own pub/sub health check only sends its PING, which a dead socket swallows).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from backend.bus import codec, link
from backend.bus import node as node_module
from backend.bus.hubside import BusProviderSet
from backend.bus.link import Publisher
from backend.bus.node import ProviderNode
from backend.runtime.messages import NoUpdate, StartStreaming
from backend.settings import load_settings
from tests import bus_deploy, harness
from tests.bus_deploy import PrivateRedis

SHARED = ("127.0.0.1", 6379)


class Relay:
    """A TCP relay to the shared Redis. ``blackhole`` makes every connection open now
    silently dead (what passes is dropped, nothing is closed), as a NAT that lost its
    state does; connections opened later pass."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.dead: set[int] = set()
        self.open: set[int] = set()
        self.writers: list[asyncio.StreamWriter] = []
        self._ids = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    def blackhole(self) -> int:
        self.dead |= self.open
        return len(self.open)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._ids += 1
        ident = self._ids
        self.open.add(ident)
        up_reader, up_writer = await asyncio.open_connection(*SHARED)
        self.writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if ident not in self.dead:
                        dst.write(data)
                        await dst.drain()
            if ident not in self.dead:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self.open.discard(ident)

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    relay = Relay()
    yield relay
    await relay.close()


async def _publish_until(
    shared: aioredis.Redis, channel: str, data: bytes, heard: Callable[[], object], what: str
) -> None:
    """Publish ``data`` every 0.1 s until ``heard()`` (polling, scaled by ``seconds``)."""
    deadline = time.monotonic() + harness.seconds(8)
    while not heard():
        assert time.monotonic() < deadline, f"{what} did not happen within 8 s"
        await shared.publish(channel, data)
        await asyncio.sleep(0.1)


async def _subscribed(shared: aioredis.Redis, channel: str) -> bool:
    counts = await shared.pubsub_numsub(channel)
    return bool(counts and counts[0][1])


async def _clear(prefix: str) -> None:
    shared = aioredis.Redis(host=SHARED[0], port=SHARED[1])
    keys = [key async for key in shared.scan_iter(f"{prefix}:*")]
    if keys:
        await shared.delete(*keys)
    await shared.aclose()


async def test_a_hub_whose_subscription_died_silently_subscribes_again(relay: Relay) -> None:
    """The hub's reader waited for messages on a connection that had died without a word:
    it never heard another update while ``/health`` said the bus was up (its writer, on new
    connections, was fine). It now pings a quiet subscription and takes one whose answer
    does not come within the command timeout for down: it subscribes again."""
    url = await relay.start()
    prefix = bus_deploy.new_prefix()
    settings = load_settings(PROVIDERS="csv", BUS_URL=url, BUS_PREFIX=prefix, BUS_LEASE_SECONDS=1.5)
    readies: list[str] = []
    bus = BusProviderSet(settings, lambda source, events: None, readies.append)
    shared = aioredis.Redis(host=SHARED[0], port=SHARED[1])
    await bus.start()
    try:
        await harness.eventually(lambda: bus._listening.is_set() and bus.up, 10, "listening")
        channel = bus.names.updates("csv")
        assert await _subscribed(shared, channel)
        assert relay.blackhole() > 0
        announcement = codec.encode(codec.Active("node-x", 1, True, [], True))
        # lease 1.5 s: quiet for 0.5 s, then 0.75 s for the pong; before: never heard
        await _publish_until(shared, channel, announcement, lambda: readies, "an update")
    finally:
        await bus.stop()
        await shared.aclose()
        await _clear(prefix)


async def test_a_node_whose_subscription_died_silently_subscribes_again(relay: Relay) -> None:
    """The node's "demand changed" subscription (and the ``NoUpdate`` forwards it carries)
    went deaf the same way; the node reacted only at its next tick and lost every forward."""
    url = await relay.start()
    prefix = bus_deploy.new_prefix()
    settings = load_settings(PROVIDERS="csv", BUS_URL=url, BUS_PREFIX=prefix, BUS_LEASE_SECONDS=1.5)
    node = ProviderNode(settings)
    forwarded: list[object] = []
    node._forward = lambda source, command: forwarded.append(command)  # type: ignore[method-assign]
    shared = aioredis.Redis(host=SHARED[0], port=SHARED[1])
    loop = asyncio.create_task(node._notify_loop())
    channel = node.names.demand_changed("csv")
    try:
        deadline = time.monotonic() + harness.seconds(10)
        while not await _subscribed(shared, channel):
            assert time.monotonic() < deadline, "the node did not subscribe"
            await asyncio.sleep(0.05)
        assert relay.blackhole() > 0
        forward = codec.encode(NoUpdate("AAA", "1m"))
        await _publish_until(shared, channel, forward, lambda: forwarded, "a forward")
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
        await shared.aclose()
        await _clear(prefix)


# The README's ACL for a deployment whose BUS_PREFIX is cw (README, Scale-out, "Redis ACL").
README_ACL = (
    "resetchannels ~cw:* &cw:* -@all +ping +get +set +del +pexpire +zadd +zrem +zrange"
    " +zrangebyscore +zremrangebyscore +rpush +blpop +publish +subscribe +unsubscribe"
    " +evalsha +eval +script|load +script|exists +time"
)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path).start()
    yield server
    server.stop()


async def _hub_on(url: str) -> BusProviderSet:
    settings = load_settings(PROVIDERS="csv", BUS_URL=url, BUS_PREFIX="cw", BUS_LEASE_SECONDS=1.5)
    bus = BusProviderSet(settings, lambda source, events: None, lambda source: None)
    await bus.start()
    bus.providers["csv"].send(StartStreaming(1, "AAA", "1m"))
    return bus


async def test_a_redis_user_without_channel_rights_is_told_what_to_grant(
    private_redis: PrivateRedis,
) -> None:
    """Redis 7 gives a new ACL user no pub/sub channel (``acl-pubsub-default
    resetchannels``; redis/redis#12418): the hub said "Redis unavailable (NoPermissionError:
    ... one of the channels used as arguments); retrying", which no retry mends. The reason
    now names the missing ACL right and where the README lists the ACL."""
    admin = aioredis.Redis(port=private_redis.port)
    await admin.execute_command("ACL", "SETUSER", "cw", "on", ">pw", "~cw:*", "+@all")
    bus = await _hub_on(f"redis://cw:pw@127.0.0.1:{private_redis.port}/0")
    try:
        await harness.eventually(lambda: "NoPermissionError" in bus.reason, 10, "refused")
        assert "&{prefix}:*" in bus.reason and "README" in bus.reason
        assert not bus.up
    finally:
        await bus.stop()
        await admin.aclose()


async def test_the_readme_acl_is_enough_for_a_hub_and_a_node(private_redis: PrivateRedis) -> None:
    """A hub and a node's commands under exactly the README's ACL line."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert f"ACL SETUSER candlewire on >PASSWORD {README_ACL}" in readme
    admin = aioredis.Redis(port=private_redis.port)
    await admin.execute_command("ACL", "SETUSER", "candlewire", "on", ">pw", *README_ACL.split())
    url = f"redis://candlewire:pw@127.0.0.1:{private_redis.port}/0"
    bus = await _hub_on(url)
    node = ProviderNode(load_settings(PROVIDERS="csv", BUS_URL=url, BUS_PREFIX="cw"))
    node._redis = link.client(url, 1.0)
    node._blocking = link.client(url, 3.0)
    node._publisher = link.Publisher(url, 1.0)
    node._scripts = link.Scripts(node._redis)
    lease = node.leases["csv"]
    try:
        await harness.eventually(lambda: bus.up and bus._listening.is_set(), 10, "hub up")
        node._healthy = lambda source: True  # type: ignore[method-assign]
        assert await node._lease_tick(lease) and lease.active  # SET NX PX
        assert await node._lease_tick(lease) and lease.active  # the renewal script
        await node._demand_round(lease)  # the demand script, the announcement
        assert lease.desired == {("AAA", "1m")}
        await harness.eventually(lambda: bus.providers["csv"].holder == node.node_id, 10, "held")
        await node._publisher.publish(node.names.updates("csv"), codec.encode([]))
        await node._publisher.publish(node.names.updates("csv"), codec.encode([]))
        assert await link.call(node._blocking.blpop([node.names.history("csv")], 0.1)) is None
        assert await link.call(node._release("csv")) == 1
    finally:
        await bus.stop()
        await node._publisher.close()
        await node._redis.aclose()
        await node._blocking.aclose()
        await admin.aclose()


async def test_a_batch_after_a_quiet_spell_on_a_silently_dropped_connection_arrives(
    relay: Relay,
) -> None:
    """A NAT or firewall forgets an idle connection in minutes (a quiet provider: a market
    closed), without a word: the node's next batch went into the void, its publish returned
    as if it had been sent, and the hubs never got it. A connection quiet for ``IDLE_PING``
    must now answer a ``PING`` first; one that does not is replaced."""
    url = await relay.start()
    publisher = Publisher(url, timeout=harness.seconds(1))
    publisher.IDLE_PING = 0.5
    channel = f"{bus_deploy.new_prefix()}:updates:csv"
    shared = aioredis.Redis(host=SHARED[0], port=SHARED[1])
    pubsub = shared.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)
    try:
        await publisher.publish(channel, b"before")
        await harness.eventually(lambda: publisher._unanswered == 0, 5, "the answer")
        assert relay.blackhole() > 0
        await harness.eventually(  # the quiet spell itself (what the test is about)
            lambda: time.monotonic() - publisher._sent >= max(Publisher.IDLE_CHECK, 0.5), 5, "quiet"
        )
        await publisher.publish(channel, b"after")  # before: into the void, no error
        got: list[bytes] = []
        deadline = time.monotonic() + harness.seconds(5)
        while b"after" not in got and time.monotonic() < deadline:
            message = await pubsub.get_message(timeout=0.2)
            if message is not None:
                got.append(message["data"])
        assert got == [b"before", b"after"]
    finally:
        await publisher.close()
        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
        await shared.aclose()


class _SkewedTime:
    """The ``time`` module as a machine whose wall clock is ``skew`` seconds ahead sees it."""

    def __init__(self, skew: float) -> None:
        self.skew = skew

    def time(self) -> float:
        return time.time() + self.skew

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class _Process:
    pid = 1
    persist = True
    budgeted = True

    async def get_history(self, *args: object) -> list[object]:
        return []


async def test_history_is_served_by_a_node_whose_clock_is_a_minute_ahead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A history request carried its hub's wall-clock deadline, which the node compared with
    its own clock: a node a minute ahead (no NTP on its machine) dropped every request as
    given up already, without a word, and the hub answered "did not answer" after
    ``HISTORY_TIMEOUT``. Deadlines are now in Redis's clock (each side learns its offset
    from ``TIME``), as the demand's already were."""
    prefix = bus_deploy.new_prefix()
    settings = load_settings(
        PROVIDERS="csv", BUS_URL=bus_deploy.SHARED_REDIS, BUS_PREFIX=prefix, BUS_LEASE_SECONDS=1.5
    )
    bus = BusProviderSet(settings, lambda source, events: None, lambda source: None)
    monkeypatch.setattr(node_module, "time", _SkewedTime(60.0))
    node = ProviderNode(settings)
    node._redis = link.client(settings.BUS_URL, 1.0)
    node._blocking = link.client(settings.BUS_URL, 3.0)
    node._scripts = link.Scripts(node._redis)
    node.supervisor.get = lambda source: _Process()  # type: ignore[assignment, method-assign, return-value]
    node.leases["csv"].active = True
    await bus.start()
    tasks = [
        asyncio.create_task(node._history_loop("csv")),
        asyncio.create_task(node._clock_loop()),
    ]
    try:
        await harness.eventually(lambda: bus.up and bus._listening.is_set(), 10, "hub up")
        await harness.eventually(lambda: node._clock.known, 10, "the node's offset")
        assert 59 < node._clock.now() - node._clock.offset - time.time() < 61  # skewed
        bars = await bus.history("csv", "AAA", "1m", "2024-01-01", "now UTC", 5, 4.0)
        assert bars == []
        assert node.counters["history_calls"] == 1
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await bus.stop()
        await node._redis.aclose()
        await node._blocking.aclose()
        await _clear(prefix)
