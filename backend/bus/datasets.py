"""``populate.py --from-bus``: a hub fills its symbol database from the provider nodes.

The hub pushes a :class:`~backend.bus.codec.DatasetRequest` on ``{p}:datasets:{source}``;
whichever node pops it first (every node has the provider's credentials, no hub needs
them) runs the provider's ``init``/``get_dataset``/``shutdown`` in a thread, as
``populate.py`` does locally, and pushes the rows in chunks on ``{p}:dataset:{request}``,
then a ``DatasetEnd``. The hub stores the rows as they come
(``symbols.writer.replace_provider_rows``: atomically, per provider).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import redis
from redis.exceptions import RedisError

from backend.bus import codec, link
from backend.bus.names import Names
from backend.errors import ProviderUnavailable
from backend.runtime.registry import load_provider_class

if TYPE_CHECKING:
    from backend.bus.node import ProviderNode
    from backend.settings import Settings

logger = logging.getLogger(__name__)

CHUNK_ROWS = 2_000
POLL_SECONDS = 1.0
REPLY_TTL_MS = 120_000


def read_dataset(settings: Settings, key: str) -> list[Mapping[str, Any]]:
    """Run provider ``key``'s ``get_dataset`` here (in a worker thread of the node)."""
    provider = load_provider_class(settings.provider_registry()[key])()
    provider._attach(key, settings, lambda event: None)
    provider.init()
    try:
        return list(provider.get_dataset())
    finally:
        provider.shutdown()


async def serve(node: ProviderNode) -> None:
    """The node's side: answer dataset requests for its providers."""
    names = node.names
    queues = {names.datasets(key): key for key in node.leases}
    backoff = link.Backoff()
    while True:
        assert node._blocking is not None and node._redis is not None
        try:
            popped = await link.call(node._blocking.blpop(list(queues), POLL_SECONDS))
        except link.BusDown:
            await asyncio.sleep(backoff.next())
            continue
        backoff.reset()
        if popped is None:
            continue
        queue = popped[0].decode() if isinstance(popped[0], bytes) else str(popped[0])
        request = codec.decode(popped[1], queue)
        if not isinstance(request, codec.DatasetRequest) or request.deadline < node._clock.now():
            continue
        key = queues[queue]
        reply = names.dataset(request.request)
        try:
            rows = await asyncio.to_thread(read_dataset, node.settings, key)
            end = codec.DatasetEnd(len(rows))
        except Exception as exc:  # a provider's own code may raise anything
            logger.exception("bus: dataset of %s failed", key)
            rows, end = [], codec.DatasetEnd(0, f"{type(exc).__name__}: {exc}")
        pipe = node._redis.pipeline(transaction=False)
        for start in range(0, len(rows), CHUNK_ROWS):
            pipe.rpush(reply, codec.encode(rows[start : start + CHUNK_ROWS]))
        pipe.rpush(reply, codec.encode(end))
        pipe.pexpire(reply, REPLY_TTL_MS)
        try:
            await link.execute(pipe)
        except link.BusDown:
            logger.warning("bus: could not send the dataset of %s", key)
        logger.info("bus: sent the dataset of %s (%d rows)", key, end.rows)


def fetch_dataset(settings: Settings, key: str, timeout: float) -> Iterator[Mapping[str, Any]]:
    """The hub's side (blocking): the rows of provider ``key`` from a node, as they come.
    ``ProviderUnavailable`` when no node answers within ``timeout`` or it failed."""
    names = Names(settings.BUS_PREFIX)
    request = uuid.uuid4().hex
    reply = names.dataset(request)
    client = redis.Redis.from_url(
        settings.BUS_URL, socket_connect_timeout=link.CONNECT_TIMEOUT, socket_timeout=timeout + 5
    )
    try:
        queue = names.datasets(key)
        seconds, micros = client.time()  # the deadline in Redis's clock, as the node reads it
        until = seconds + micros / 1e6 + timeout
        client.rpush(queue, codec.encode(codec.DatasetRequest(request, until)))
        client.pexpire(queue, int(timeout * 1000))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProviderUnavailable(f"no provider node sent the dataset of {key!r}")
            popped = client.blpop([reply], max(1, int(remaining)))
            if popped is None:
                continue
            message = codec.decode(popped[1], reply)
            if isinstance(message, codec.DatasetEnd):
                if message.error:
                    raise ProviderUnavailable(f"the node failed: {message.error}")
                return
            if isinstance(message, list):
                deadline = time.monotonic() + timeout  # it is coming: the clock restarts
                yield from message
    except RedisError as exc:
        raise ProviderUnavailable(f"the bus is unreachable: {exc}") from None
    finally:
        client.close()
