"""The hub's providers over Redis: :class:`BusProviderSet` is the hub's ``ProviderSet``
when ``BUS_URL`` is set (``--role hub`` and ``--role all``).

Per provider a :class:`BusHandle` turns the hub's start/stop commands (one per client, from
``hub.upstream``) into *demand*: one entry per key per hub in ``{p}:demand:{source}``,
renewed every third of ``BUS_LEASE_SECONDS`` (so a hub that dies stops counting after one
lease), plus a notification so the active node reacts at once. The active node's event
batches arrive on ``{p}:updates:{source}`` and go straight to the hub's fan-out; its
``Active`` announcement is a provider restart for the hub (demand replayed, gaps refilled
from history as after an upstream reconnect). History requests go on a list that the
active node pops; answers come back on this hub's reply channel.

Redis down: the hub keeps its clients and caches, ``/health`` says ``degraded`` with the
reason, both loops retry with backoff, and when Redis is back every held key is registered
again and every provider is treated as restarted (what was missed is refilled).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from backend.bus import codec, link
from backend.bus.names import Names, demand_member
from backend.errors import ProviderUnavailable
from backend.model.bars import Bar
from backend.runtime.messages import (
    Command,
    NoUpdate,
    StartStreaming,
    Status,
    StopStreaming,
    WireEvent,
)
from backend.runtime.supervisor import DISPATCH_BUDGET, DISPATCH_SLICE
from backend.tasks import Tasks, cancel_owned, start_owned

if TYPE_CHECKING:
    from collections.abc import Callable

    import redis.asyncio as aioredis

    from backend.settings import Settings

    EventSink = Callable[[str, list[WireEvent]], None]
    ReadySink = Callable[[str], None]

logger = logging.getLogger(__name__)

RENEW_CHUNK = 2_000  # demand members per script call


class BusHandle:
    """One provider as the hub sees it through the bus."""

    def __init__(self, source: str, owner: BusProviderSet) -> None:
        self.source = source
        self.owner = owner
        self.persist = True
        self.budgeted = True
        self.last_update: float | None = None
        self.holder: str | None = None
        self.last_holder: str | None = None  # the latest holder, also while none holds it
        self.pid: int | None = None
        self.status = Status("unknown")
        self.clients: dict[tuple[str, str], set[int]] = {}
        self.ready = asyncio.Event()

    def send(self, command: Command) -> None:
        match command:
            case StartStreaming(client, symbol, interval):
                ids = self.clients.setdefault((symbol, interval), set())
                if not ids:
                    self.owner.demand_changed(self.source, (symbol, interval), True)
                ids.add(client)
            case StopStreaming(client, symbol, interval):
                held = self.clients.get((symbol, interval))
                if held is None:
                    return
                held.discard(client)
                if not held:
                    del self.clients[(symbol, interval)]
                    self.owner.demand_changed(self.source, (symbol, interval), False)
            case NoUpdate():
                self.owner.forward(self.source, command)
            case _:
                pass  # pings and shutdowns are the node's business

    async def wait_ready(self, timeout: float) -> bool:
        """Until a node holds the provider, or the bus is known down: then the history call
        answers at once that it is down (what a hub that never reached Redis has not, it
        cannot get), instead of the hub waiting ``timeout`` for a holder it cannot learn of
        and calling the provider "not ready"."""
        if self.ready.is_set() or self.owner.down.is_set():
            return True
        waits = [
            asyncio.ensure_future(self.ready.wait()),
            asyncio.ensure_future(self.owner.down.wait()),
        ]
        try:  # not wait_for: it may drop a cancel on 3.11 (ProviderProcess.get_history)
            async with asyncio.timeout(timeout):
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            return False
        finally:
            for wait in waits:
                wait.cancel()
        return True

    async def get_history(
        self, symbol: str, interval: str, start: str, end: str, count: int, timeout: float
    ) -> list[Bar]:
        return await self.owner.history(self.source, symbol, interval, start, end, count, timeout)

    def health(self) -> dict[str, Any]:
        # The hub's link to the provider: up whether or not a node holds it yet (``node``
        # says which does: a hub may start before any node).
        up = self.owner.up
        state = "running" if self.holder is not None else "no_node"
        return {
            "state": state if up else "unreachable",
            "node": self.holder,
            "pid": self.pid if self.holder is not None else None,
            "restarts": 0,
            "last_update": self.last_update,
            "last_error": self.owner.reason
            if not up
            else (None if self.holder is not None else "no provider node holds it"),
            "status": self.status.state,
            "status_detail": self.status.detail,
            "keys": len(self.clients),
        }


class BusProviderSet:
    """Every provider of the hub, reached through Redis."""

    def __init__(self, settings: Settings, on_events: EventSink, on_ready: ReadySink) -> None:
        self.settings = settings
        self.on_events = on_events
        self.on_ready = on_ready
        self.names = Names(settings.BUS_PREFIX)
        self.lease = settings.BUS_LEASE_SECONDS
        self.hub_id = link.new_id("hub")
        self.providers: dict[str, BusHandle] = {
            key: BusHandle(key, self) for key in settings.PROVIDERS
        }
        self.up = False
        self.reason = "connecting"
        self.down = asyncio.Event()  # set while Redis is known unreachable (not at start-up)
        self._redis: aioredis.Redis | None = None
        self._scripts: link.Scripts | None = None
        self._clock = link.RedisClock()  # history deadlines are in Redis's clock
        self._added: dict[str, set[tuple[str, str]]] = {}
        self._removed: dict[str, set[tuple[str, str]]] = {}
        self._forwards: list[tuple[str, NoUpdate]] = []
        self._wake = asyncio.Event()
        self._listening = asyncio.Event()  # subscribed to the updates and replies
        self._resync = True  # register everything at the first successful round
        self._pending: dict[int, asyncio.Future[list[Bar]]] = {}
        # request id -> (source, the encoded request): asked again of a node that takes
        # over, since the one that died may have taken them from the queue with it
        self._asked: dict[int, tuple[str, bytes]] = {}
        self._again: list[tuple[str, bytes]] = []
        self._ids = itertools.count(1)
        self._tasks: Tasks = set()
        self._stopping = False
        self._updates = {self.names.updates(key): key for key in settings.PROVIDERS}
        self._reply = self.names.reply(self.hub_id)

    # ------------------------------------------------------------------ ProviderSet

    def get(self, key: str) -> BusHandle | None:
        return self.providers.get(key)

    async def start(self) -> None:
        self._redis = link.client(self.settings.BUS_URL, max(0.5, self.lease / 2))
        self._scripts = link.Scripts(self._redis)
        self._start_loops()
        logger.info(
            "bus: hub %s on %s (prefix %s)",
            self.hub_id,
            _safe(self.settings.BUS_URL),
            self.names.prefix,
        )

    def _start_loops(self, error: BaseException | None = None) -> None:
        """The writer and the reader; one that died of a bug (logged by ``start_owned``)
        is started again, or the hub would lose the bus for good."""
        running = {task.get_name() for task in self._tasks}
        if self._stopping:
            return
        if "bus-hub-writer" not in running:
            start_owned(self._tasks, self._write_loop(), "bus-hub-writer", self._restart)
        if "bus-hub-reader" not in running:
            start_owned(self._tasks, self._read_loop(), "bus-hub-reader", self._restart)

    def _restart(self, error: BaseException) -> None:
        asyncio.get_running_loop().call_later(1.0, self._start_loops)

    async def stop(self) -> None:
        self._stopping = True
        await cancel_owned(self._tasks)
        if self._redis is not None:
            with contextlib.suppress(link.BusDown):
                await link.call(self._withdraw())
            await self._redis.aclose()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ProviderUnavailable("the hub is stopping"))

    async def _withdraw(self) -> None:
        """Remove this hub's demand at once (a clean stop), instead of after a lease."""
        assert self._redis is not None
        pipe = self._redis.pipeline(transaction=False)
        for source, handle in self.providers.items():
            members = [demand_member(self.hub_id, s, i) for s, i in handle.clients]
            if members:
                pipe.zrem(self.names.demand(source), *members)
                pipe.publish(self.names.demand_changed(source), b"")
        await link.execute(pipe)

    def bus_health(self) -> dict[str, Any]:
        return {
            "state": "up" if self.up else "down",
            "reason": "" if self.up else self.reason,
            "role": "hub",
            "hub": self.hub_id,
            "prefix": self.names.prefix,
            "lease_seconds": self.lease,
            "holders": {key: h.holder for key, h in self.providers.items()},
            "held_keys": sum(len(h.clients) for h in self.providers.values()),
        }

    # ------------------------------------------------------------------ demand

    def demand_changed(self, source: str, key: tuple[str, str], held: bool) -> None:
        (self._added if held else self._removed).setdefault(source, set()).add(key)
        (self._removed if held else self._added).get(source, set()).discard(key)
        self._wake.set()

    def forward(self, source: str, command: NoUpdate) -> None:
        self._forwards.append((source, command))
        self._wake.set()

    async def _write_loop(self) -> None:
        """Demand changes at once; every third of a lease: renew all, read the holders."""
        backoff = link.Backoff()
        tick = self.lease / 3
        next_renew = 0.0
        renewed_at: float | None = None
        lapse_told = False  # one warning per lapse (an outage retries many times)
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_renew - time.monotonic())):
                    await self._wake.wait()
            self._wake.clear()
            renew = time.monotonic() >= next_renew or self._resync
            if renew and renewed_at is not None and time.monotonic() - renewed_at > self.lease:
                # This hub's demand expired meanwhile (its loop stalled, the process was
                # stopped): the nodes may have stopped its keys and it missed their bars.
                if not lapse_told:
                    logger.warning(
                        "bus: no demand renewed for %.1f s (lease %.1f s): every provider"
                        " counts as restarted",
                        time.monotonic() - renewed_at,
                        self.lease,
                    )
                    lapse_told = True
                self._resync = True
            # A renewal counts from when it was sent: a hub stopped while one was in flight
            # (SIGSTOP, a long stall) must still see the lapse once it runs again.
            sent = time.monotonic()
            try:
                await self._write(renew)
            except link.BusDown as exc:
                self._down(str(exc))
                self._added.clear()
                self._removed.clear()
                self._forwards.clear()
                self._resync = True
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            if renew:
                renewed_at = sent
                next_renew = renewed_at + tick
                lapse_told = False

    async def _write(self, renew: bool) -> None:
        assert self._redis is not None and self._scripts is not None
        resync, self._resync = self._resync, False
        added, self._added = self._added, {}
        removed, self._removed = self._removed, {}
        forwards, self._forwards = self._forwards, []
        lease_ms = int(self.lease * 1000)
        pipe = self._redis.pipeline(transaction=False)
        changed: set[str] = set()
        for source, keys in removed.items():
            if keys:
                members = [demand_member(self.hub_id, s, i) for s, i in keys]
                pipe.zrem(self.names.demand(source), *members)
                changed.add(source)
        for source, handle in self.providers.items():
            keys = set(handle.clients) if renew else added.get(source, set())
            members = [demand_member(self.hub_id, s, i) for s, i in keys]
            for start in range(0, len(members), RENEW_CHUNK):
                chunk = members[start : start + RENEW_CHUNK]
                await self._scripts.renew_demand(
                    keys=[self.names.demand(source)], args=[lease_ms, *chunk], client=pipe
                )
            if added.get(source):
                changed.add(source)
        for source in changed | ({*self.providers} if resync else set()):
            pipe.publish(self.names.demand_changed(source), b"")
        for source, command in forwards:
            pipe.publish(self.names.demand_changed(source), codec.encode(command))
        again, self._again = self._again, []
        for source, request in again:
            pipe.rpush(self.names.history(source), request)
            pipe.pexpire(self.names.history(source), int(self.settings.HISTORY_TIMEOUT * 2000))
        if renew:
            pipe.time()  # Redis's clock, for the deadlines of history requests
            for source in self.providers:
                pipe.get(self.names.active(source))
        before = self._clock.wall()
        results = await link.execute(pipe)
        if renew:
            self._clock.learn(before, results[-len(self.providers) - 1], self._clock.wall())
            announcements = results[-len(self.providers) :]
            for source, raw in zip(self.providers, announcements, strict=True):
                self._learn(source, codec.decode(raw, "active") if raw else None, resync)
            self._up()

    def _learn(self, source: str, active: Any, resync: bool) -> None:
        """What the holder announcement says; a new holder (or a return of Redis) is a
        provider restart for the hub."""
        handle = self.providers[source]
        if isinstance(active, codec.Active) and not codec.active_ok(active):
            logger.warning("bus: dropped a malformed holder announcement of %s", source)
            active = None
        if not isinstance(active, codec.Active):
            if handle.holder is not None:
                logger.warning("bus: provider %s has no active node", source)
            handle.holder = None
            handle.ready.clear()
            return
        if active.node != handle.holder or resync:
            self._activate(source, active)

    def _activate(self, source: str, active: codec.Active) -> None:
        handle = self.providers[source]
        known, before = handle.holder, handle.last_holder
        handle.holder, handle.pid, handle.persist = active.node, active.pid, active.persist
        handle.budgeted = getattr(active, "budgeted", True)  # a node of an older version
        handle.last_holder = active.node
        for event in active.state:
            if isinstance(event, Status):
                handle.status = event
        if active.state:
            self.on_events(source, codec.well_formed(list(active.state)))
        handle.ready.set()
        if known != active.node:
            logger.info("bus: provider %s is on node %s (was %s)", source, active.node, known)
            again = [asked for asked in self._asked.values() if asked[0] == source]
            if before not in (None, active.node) and again:  # also after a gap with none
                logger.info("bus: %d history requests asked again of %s", len(again), active.node)
                self._again += again
                self._wake.set()
        self.on_ready(source)

    def _up(self) -> None:
        if not self.up:
            logger.info("bus: connected")
        self.up, self.reason = True, ""
        self.down.clear()

    def _down(self, reason: str) -> None:
        if self.up or self.reason == "connecting":
            logger.warning("bus: Redis unavailable (%s); serving from caches, retrying", reason)
        self.up, self.reason = False, reason
        self.down.set()

    # ------------------------------------------------------------------ updates and replies

    async def _read_loop(self) -> None:
        backoff = link.Backoff()
        subscribed = False
        while True:
            sub = link.client(self.settings.BUS_URL, None)
            pubsub: PubSub = sub.pubsub(ignore_subscribe_messages=True)
            try:
                await link.call(pubsub.subscribe(*self._updates, self._reply))
                if subscribed and self._asked:
                    # An answer published while this hub was not subscribed is lost, and a
                    # restarted Redis lost the queued requests: ask again (a node that
                    # answers twice: the second answer is ignored).
                    logger.info(
                        "bus: %d history requests asked again after the bus came back",
                        len(self._asked),
                    )
                    self._again += self._asked.values()
                subscribed = True
                self._listening.set()
                self._resync = True  # missed updates: every provider counts as restarted
                self._wake.set()
                backoff.reset()
                # A silent subscription is taken for down after one command timeout.
                await self._read(link.Listener(pubsub, self.lease / 3, max(0.5, self.lease / 2)))
            except link.BusDown as exc:
                self._listening.clear()
                self._down(str(exc))
                await asyncio.sleep(backoff.next())
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
                with contextlib.suppress(RedisError, OSError):
                    await sub.aclose()

    async def _read(self, listener: link.Listener) -> None:
        """Dispatch what arrives, as the pipe reader does: a node's batch (everything that
        came while its previous publish was in flight: large once the hub is behind) goes to
        the fan-out ``DISPATCH_SLICE`` events at a time, and after ``DISPATCH_BUDGET`` of
        dispatching the client writers get their turn before the next slice. A read of an
        already buffered message does not suspend, so the budget is the only yield then."""
        deadline = time.perf_counter() + DISPATCH_BUDGET
        while True:
            message = await listener.get()
            if message is None:
                deadline = time.perf_counter() + DISPATCH_BUDGET
                continue
            taken = self._take(message)
            if taken is None:
                continue
            source, events = taken
            for start in range(0, len(events), DISPATCH_SLICE):
                if time.perf_counter() >= deadline:
                    await asyncio.sleep(0)
                    deadline = time.perf_counter() + DISPATCH_BUDGET
                self.on_events(source, events[start : start + DISPATCH_SLICE])

    def _take(self, message: dict[str, Any]) -> tuple[str, list[WireEvent]] | None:
        """``(source, events)`` of an update batch; other messages are handled here."""
        try:
            return self._on_message(message)
        except (IndexError, TypeError, ValueError, AttributeError) as exc:
            # Not what a node sends (another program on this prefix?): dropped, logged.
            where = message.get("channel")
            logger.warning("bus: dropped a malformed message on %s: %r", where, exc)
            return None

    def _on_message(self, message: dict[str, Any]) -> tuple[str, list[WireEvent]] | None:
        channel = message.get("channel")
        name = channel.decode() if isinstance(channel, bytes) else str(channel)
        data = codec.decode(message.get("data"), name)
        source = self._updates.get(name)
        if source is not None:
            handle = self.providers[source]
            if type(data) is list:
                handle.last_update = time.time()
                data = codec.well_formed(data)
                for event in data:
                    if type(event) is not tuple and isinstance(event, Status):
                        handle.status = event
                return source, data
            if isinstance(data, codec.Active) and codec.active_ok(data):
                self._activate(source, data)
            elif data is not None:  # None: undecodable, logged by decode
                logger.warning("bus: dropped a message on %s that no node writes", name)
        elif isinstance(data, codec.HistoryAnswer):
            future = self._pending.get(data.request_id) if type(data.request_id) is int else None
            if future is None or future.done():
                return None
            if not codec.answer_ok(data):
                logger.warning("bus: a malformed answer to history request %d", data.request_id)
                future.set_exception(
                    ProviderUnavailable("the provider node's answer was malformed")
                )
            elif data.error is None:
                future.set_result(data.bars)
            elif isinstance(data.error, ProviderUnavailable) or not isinstance(
                data.error, Exception
            ):
                future.set_exception(ProviderUnavailable(str(data.error)))
            else:
                future.set_exception(data.error)
        return None

    # ------------------------------------------------------------------ history

    async def history(
        self,
        source: str,
        symbol: str,
        interval: str,
        start: str,
        end: str,
        count: int,
        timeout: float,
    ) -> list[Bar]:
        """Ask the active node; ``ProviderUnavailable`` when the bus is down or the answer
        does not come within ``timeout`` (end to end). Once the bus is known down (not
        merely connecting at start-up), a request fails at once instead of waiting for it."""
        if self._redis is None:
            raise ProviderUnavailable(f"provider {source}: the bus is not started")
        if not self._listening.is_set() and not self.up and self.reason != "connecting":
            # Known down: answer now (the caller serves what it has) rather than wait out
            # the timeout for a node this hub cannot reach.
            raise ProviderUnavailable(f"provider {source}: the bus is down ({_kind(self.reason)})")
        deadline = time.monotonic() + timeout
        # asyncio.timeout, not wait_for: on 3.11 wait_for may drop a cancel that comes as
        # what it waits for is done, and the cancelled caller goes on (a stopped scan)
        try:  # an answer needs this hub's reply channel subscribed
            async with asyncio.timeout(timeout):
                await self._listening.wait()
        except TimeoutError:
            why = _kind(self.reason) if self.reason else "not subscribed"
            raise ProviderUnavailable(f"provider {source}: the bus is down ({why})") from None
        request_id = next(self._ids)
        future: asyncio.Future[list[Bar]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        request = codec.HistoryRequest(
            self.hub_id,
            request_id,
            symbol,
            interval,
            start,
            end,
            count,
            self._clock.now() + timeout,
        )
        queue = self.names.history(source)
        encoded = codec.encode(request)
        self._asked[request_id] = (source, encoded)
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.rpush(queue, encoded)
            pipe.pexpire(queue, int(timeout * 2000))
            await link.execute(pipe)
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await future
        except link.BusDown as exc:
            why = _kind(str(exc))
            raise ProviderUnavailable(f"provider {source}: the bus is down ({why})") from None
        except TimeoutError:
            if self.down.is_set() or not self._listening.is_set():  # not the provider's doing
                why = _kind(self.reason) if self.reason else "not subscribed"
                raise ProviderUnavailable(f"provider {source}: the bus is down ({why})") from None
            raise ProviderUnavailable(
                f"provider {source} did not answer history of {symbol} {interval} "
                f"within {timeout:g} s"
            ) from None
        finally:
            self._pending.pop(request_id, None)
            self._asked.pop(request_id, None)


def _kind(reason: str) -> str:
    """The kind of a bus failure (``ConnectionError``) without its text, which names the
    Redis host and port: what a client is told; the log and ``/health`` keep the rest."""
    return reason.split(":", 1)[0].strip() or "unavailable"


def _safe(url: str) -> str:
    """The URL without its password (in the user part or as ``?password=``), for logs."""
    head, at, tail = url.rpartition("@")
    url = f"{head.split('//')[0]}//***@{tail}" if at else url
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url)


def factory(settings: Settings, on_events: EventSink, on_ready: ReadySink) -> BusProviderSet:
    """The hub's ``ProviderSetFactory`` over the bus."""
    return BusProviderSet(settings, on_events, on_ready)


__all__ = ["BusHandle", "BusProviderSet", "factory"]
