"""The Redis side of the bus: clients, the Lua scripts, and the reconnect backoff.

The scripts read Redis's own clock (``TIME``), so hubs and nodes on machines whose clocks
disagree still agree on when a demand entry expires. A command that fails raises
``BusDown`` (a ``redis`` connection or timeout error, wrapped): callers degrade, back off
and try again; nothing loops hot.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline, PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoPermissionError, RedisError

from backend.errors import CandlewireError
from backend.tasks import Tasks, cancel_owned, start_owned

CONNECT_TIMEOUT = 2.0
MAX_CONNECTIONS = 16  # per client (a process has a few); commands take milliseconds
BACKOFF_INITIAL = 0.2
BACKOFF_MAX = 5.0


class BusDown(CandlewireError):
    """Redis did not answer (down, restarting, unreachable, or too slow)."""


# KEYS[1] demand set; ARGV[1] lease (ms); ARGV[2..] members: renew (or add) them.
RENEW_DEMAND = """
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], expiry, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 4)
return #ARGV - 1
"""

# KEYS[1] demand set: {live members, members that expired now (removed)}.
READ_DEMAND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) end
return {redis.call('ZRANGE', KEYS[1], 0, -1), expired}
"""

# KEYS[1] lease, KEYS[2] announcement; ARGV[1] node, ARGV[2] lease (ms): 1 if still ours.
RENEW_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] lease, KEYS[2] announcement; ARGV[1] node: give it up if it is ours.
RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
"""


def new_id(role: str) -> str:
    """A node or hub id: readable in ``/health`` and unique across restarts."""
    return f"{role}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def client(url: str, timeout: float | None) -> aioredis.Redis:
    """A client that fails fast (``timeout`` per command, no retries of its own): the
    callers own the backoff. Its pool holds at most :data:`MAX_CONNECTIONS`; a command
    waits for a free one (as long as a command may take, then :class:`BusDown`). redis-py's
    default pool opens one per concurrent command and keeps them all: a burst of history
    requests left tens of idle connections per hub process, towards Redis's ``maxclients``
    across many hubs."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=CONNECT_TIMEOUT if timeout is None else max(timeout, CONNECT_TIMEOUT),
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
    return aioredis.Redis.from_pool(pool)


class Scripts:
    """The Lua scripts, registered on one client."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.renew_demand = redis.register_script(RENEW_DEMAND)
        self.read_demand = redis.register_script(READ_DEMAND)
        self.renew_lease = redis.register_script(RENEW_LEASE)
        self.release_lease = redis.register_script(RELEASE_LEASE)


async def call(awaitable: Any) -> Any:
    """Await a Redis command; ``BusDown`` for any Redis or socket failure."""
    try:
        return await awaitable
    except (RedisError, OSError, TimeoutError) as exc:
        raise BusDown(_why(exc)) from exc


ACL_HINT = (
    "the Redis user of BUS_URL lacks a right: it needs the ACL of README, Scale-out, "
    "'Redis setup' (channels too: &{prefix}:*, which Redis 7 grants no new user)"
)


def _why(exc: BaseException) -> str:
    """The failure as ``/health`` and the log show it; a missing ACL right says which fix
    (retrying never helps, and "unavailable" alone sent users looking at the network)."""
    why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return f"{why} ({ACL_HINT})" if isinstance(exc, NoPermissionError) else why


async def execute(pipe: Pipeline) -> list[Any]:
    """Run a pipeline (``BusDown`` on failure) and release its connection either way."""
    try:
        result: list[Any] = await call(pipe.execute())
        return result
    finally:
        with contextlib.suppress(RedisError, OSError):
            await pipe.reset()  # type: ignore[no-untyped-call, unused-ignore]


class Publisher:
    """``PUBLISH`` on a connection of its own, pipelined: the node's live batches go out as
    soon as they are there, without waiting for Redis's answer to the one before (a wait
    that, on a busy machine, also waited for the node's turn on a CPU), and a task of the
    publisher's reads the answers. At most ``MAX_UNANSWERED`` are outstanding; an answer
    later than ``timeout``, an error, or a closed socket makes the next call raise
    ``BusDown``, and the call after that connects again. No pool checkout and no retry
    wrapper per message: a third of the CPU of ``Redis.publish``."""

    MAX_UNANSWERED = 64
    IDLE_CHECK = 1.0  # a connection quiet this long is looked at before a write
    IDLE_PING = 30.0  # and one quiet this long must answer a PING (NATs forget in minutes)

    def __init__(self, url: str, timeout: float) -> None:
        self._pool = aioredis.ConnectionPool.from_url(
            url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=None
        )
        self._timeout = timeout
        self._connection: aioredis.Connection | None = None
        self._unanswered = 0
        self._waiting = asyncio.Event()  # set while answers are outstanding
        self._room = asyncio.Event()  # set while fewer than MAX_UNANSWERED are
        self._failed: BaseException | None = None
        self._tasks: Tasks = set()
        self._sent = 0.0  # monotonic time of the last write

    async def publish(self, channel: str, data: bytes) -> None:
        if self._failed is not None:
            failed = self._failed
            await self.close()
            raise BusDown(_why(failed))
        connection = self._connection
        try:
            if connection is not None and await self._closed_while_idle(connection):
                await self.close()
                connection = None
            if connection is None:
                connection = await self._connect()
            if not self._room.is_set():
                async with asyncio.timeout(self._timeout):
                    await self._room.wait()
            command = connection.pack_command("PUBLISH", channel, data)
            await connection.send_packed_command(command, check_health=False)
        except BaseException as exc:  # cancelled too: a command may be half written
            await self.close()
            if isinstance(exc, RedisError | OSError | TimeoutError):
                raise BusDown(_why(exc)) from exc
            raise
        self._sent = time.monotonic()
        self._unanswered += 1
        self._waiting.set()
        if self._unanswered >= self.MAX_UNANSWERED:
            self._room.clear()

    async def _closed_while_idle(self, connection: aioredis.Connection) -> bool:
        """Whether a connection that has been quiet (nothing unanswered, nothing sent for
        ``IDLE_CHECK``) is gone: Redis closed it (its ``timeout``, ``CLIENT KILL``, a proxy's
        idle limit), or, quiet for ``IDLE_PING``, it does not answer a ``PING`` within the
        timeout (a NAT or firewall dropped it without a word). A batch written into such a
        socket was lost, and the next one raised."""
        idle = time.monotonic() - self._sent
        if self._unanswered or idle < self.IDLE_CHECK:
            return False
        try:
            if await connection.can_read():  # stray bytes; EOF raises
                return True
            if idle < self.IDLE_PING:
                return False
            await connection.send_command("PING", check_health=False)
            answer = await connection.read_response(timeout=self._timeout)
        except (RedisError, OSError, TimeoutError):
            return True
        return answer not in (b"PONG", "PONG")

    async def _connect(self) -> aioredis.Connection:
        connection: aioredis.Connection = self._pool.make_connection()  # type: ignore[no-untyped-call, unused-ignore]
        await connection.connect()  # type: ignore[no-untyped-call, unused-ignore]
        self._connection, self._unanswered, self._failed = connection, 0, None
        self._waiting.clear()
        self._room.set()
        start_owned(self._tasks, self._answers(connection), "bus-publisher-answers")
        return connection

    async def _answers(self, connection: aioredis.Connection) -> None:
        try:
            while True:
                await self._waiting.wait()
                if await connection.read_response(timeout=self._timeout) is None:
                    raise TimeoutError(f"no answer to PUBLISH within {self._timeout:g} s")
                self._unanswered -= 1
                if self._unanswered == 0:
                    self._waiting.clear()
                self._room.set()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed = exc  # the next publish raises BusDown and reconnects

    async def close(self) -> None:
        await cancel_owned(self._tasks)
        connection, self._connection = self._connection, None
        self._failed = None
        if connection is not None:
            with contextlib.suppress(RedisError, OSError):
                await connection.disconnect()
        with contextlib.suppress(RedisError, OSError):
            await self._pool.disconnect()


class Listener:
    """Messages of a subscription that cannot go deaf unnoticed. A pub/sub connection that
    died without a word (a NAT or firewall that forgot it, a network blip, a failover that
    moved Redis's address: no FIN, no RST) never raises: ``get_message`` keeps answering
    "nothing yet" while the rest of the process, on new connections, works. So after
    ``quiet`` seconds without a message it sends ``PING`` on the subscription, and when
    neither the answer nor anything else comes within ``answer`` seconds it raises
    ``BusDown``: the caller subscribes again on a new connection (and resyncs)."""

    def __init__(self, pubsub: PubSub, quiet: float, answer: float) -> None:
        self.pubsub = pubsub
        self.quiet = quiet
        self.answer = answer
        self._heard = time.monotonic()
        self._pinged: float | None = None

    async def get(self) -> dict[str, Any] | None:
        """The next message; None when nothing came within a second (or a pong came)."""
        message: dict[str, Any] | None = await call(
            self.pubsub.get_message(timeout=min(1.0, self.quiet))
        )
        now = time.monotonic()
        if message is not None:
            self._heard, self._pinged = now, None
            return None if message.get("type") == "pong" else message
        if self._pinged is not None:
            if now - self._pinged >= self.answer:
                raise BusDown(
                    f"TimeoutError: the subscription went silent (no answer to PING within "
                    f"{self.answer:g} s)"
                )
        elif now - self._heard >= self.quiet:
            try:  # a send on a dead socket can block once its buffer is full
                async with asyncio.timeout(self.answer):
                    await call(self.pubsub.ping())
            except TimeoutError as exc:
                raise BusDown(f"TimeoutError: PING on the subscription: {exc}") from exc
            self._pinged = now
        return None


class RedisClock:
    """This machine's wall clock set to Redis's (``TIME``): the deadlines that cross the bus
    (history and dataset requests) are in Redis's clock, so a node whose clock is ahead of
    its hubs' does not drop their requests as given up (as the demand's expiry, whose
    scripts read ``TIME`` themselves). Until the first ``sync`` it is the machine's clock."""

    RESYNC = 60.0  # seconds between syncs once known

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        self.offset = 0.0
        self.known = False

    def now(self) -> float:
        return self.wall() + self.offset

    async def sync(self, redis: aioredis.Redis) -> None:
        """Learn the offset (``BusDown`` when Redis does not answer)."""
        before = self.wall()
        answer = await call(redis.time())
        self.learn(before, answer, self.wall())

    def learn(self, before: float, answer: Sequence[int], after: float) -> None:
        """The offset from ``TIME``'s ``answer`` (seconds, microseconds), asked between
        ``before`` and ``after``: half the round trip is the error, which a deadline of
        seconds does not notice."""
        seconds, micros = answer
        self.offset = seconds + micros / 1e6 - (before + after) / 2
        self.known = True


def as_str(values: Sequence[Any]) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


class Backoff:
    """Delays that double from ``BACKOFF_INITIAL`` to ``BACKOFF_MAX``; ``reset`` on success."""

    def __init__(self, initial: float = BACKOFF_INITIAL, maximum: float = BACKOFF_MAX) -> None:
        self.initial = initial
        self.maximum = maximum
        self.delay = initial

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self.delay = self.initial
