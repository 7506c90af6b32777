"""A provider node (``--role providers``, or inside ``--role all``): the real supervisor's
provider processes, leases, demand-driven streams and the history service.

Every node runs every enabled provider's process (a warm standby: ``init()`` done, nothing
streamed). Per provider one node holds the lease ``{p}:lease:{source}`` (``SET NX PX``,
renewed every third of ``BUS_LEASE_SECONDS`` while its process runs); only the holder
streams. It reads the hubs' demand (at once when a hub says it changed, else every tick),
starts each demanded key once, stops a key whose hubs withdrew at once and one whose hub
died (its entry expired) after ``STREAM_LINGER_SECONDS``. It publishes each event batch
once on ``{p}:updates:{source}`` (what arrived while the previous publish was in flight
goes as one message) and answers history requests, one provider call per
distinct window whatever the number of hubs asking (single flight; a window that ends now
also joins a call in flight for the same count of bars of the series that started less
than one bar interval earlier, and gets its answer cut at its own start).

A holder that cannot renew (Redis lost) stops its streams when its lease would have
expired, so two nodes never stream one provider longer than one lease; a holder whose
process dies gives the lease up so that a standby takes over. With each renewal the
provider process learns until when the lease runs (``StreamUntil``): if this process
freezes, the provider process stops itself then, before a standby can take over. A new
holder announces itself (``codec.Active``): hubs treat it as a provider restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from backend.bus import codec, datasets, link
from backend.bus.names import Names, parse_member
from backend.errors import ProviderError
from backend.model import intervals
from backend.model.bars import Bar
from backend.runtime.messages import (
    Clock,
    NoUpdate,
    StartStreaming,
    Status,
    StopStreaming,
    StreamUntil,
    WireEvent,
)
from backend.runtime.supervisor import ProviderState, Supervisor, unserved
from backend.tasks import Tasks, cancel_owned, start_owned

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from backend.settings import Settings

logger = logging.getLogger(__name__)

NODE_CLIENT = 1  # the one client id the node's provider process sees per key
HISTORY_POLL_SECONDS = 1.0
MAX_PENDING_EVENTS = 200_000  # per provider, waiting for Redis; more are dropped (counted)

Key = tuple[str, str]
# A history window: (source, symbol, interval, start, end, count), and who waits for it:
# (hub, request id, the first bar time it wants; None: all).
Window = tuple[str, str, str, str, str, int]
Waiter = tuple[str, int, int | None]
NOW = "now UTC"  # the end of a window that reaches the present


@dataclass
class Lease:
    """One provider's lease as this node holds it (or not)."""

    source: str
    active: bool = False
    valid_until: float = 0.0  # monotonic: stop streaming after this without a renewal
    streaming: set[Key] = field(default_factory=set)
    desired: set[Key] = field(default_factory=set)
    stopping: dict[Key, asyncio.TimerHandle] = field(default_factory=dict)
    state: dict[object, WireEvent] = field(default_factory=dict)  # last clocks and status
    announce: bool = False  # announce (again) at the next demand round
    expiry: asyncio.TimerHandle | None = None
    acquired: int = 0


class ProviderNode:
    """The providers of one node, behind leases."""

    def __init__(self, settings: Settings, node_id: str | None = None) -> None:
        self.settings = settings
        self.names = Names(settings.BUS_PREFIX)
        self.lease_seconds = settings.BUS_LEASE_SECONDS
        self.node_id = node_id or link.new_id("node")
        self.supervisor = Supervisor(settings, self._on_events, self._on_ready)
        self.leases = {key: Lease(key) for key in settings.PROVIDERS}
        self.up = False
        self.reason = "connecting"
        self.counters: dict[str, int] = {
            "batches_published": 0,
            "batches_dropped": 0,
            "events_dropped": 0,
            "history_requests": 0,
            "history_calls": 0,
            "leases_acquired": 0,
            "leases_lost": 0,
        }
        self._redis: aioredis.Redis | None = None
        self._blocking: aioredis.Redis | None = None
        self._scripts: link.Scripts | None = None
        self._publisher: link.Publisher | None = None
        # history and dataset deadlines are in Redis's clock (this machine's may be off)
        self._clock = link.RedisClock(time.time)
        self._out: dict[str, list[WireEvent]] = {}  # channel -> events not yet published
        self._out_ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._inflight: dict[Window, list[Waiter]] = {}
        self._tasks: Tasks = set()
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        tick = self.lease_seconds / 3
        self._redis = link.client(self.settings.BUS_URL, max(0.2, tick))
        self._blocking = link.client(self.settings.BUS_URL, HISTORY_POLL_SECONDS + tick + 1)
        self._publisher = link.Publisher(self.settings.BUS_URL, max(0.2, tick))
        self._scripts = link.Scripts(self._redis)
        await self.supervisor.start()
        self._start_loops()
        logger.info("bus: provider node %s (prefix %s)", self.node_id, self.names.prefix)

    def _loops(self) -> dict[str, Callable[[], Coroutine[Any, Any, None]]]:
        loops: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "lease": self._lease_loop,
            "demand": self._demand_loop,
            "notify": self._notify_loop,
            "clock": self._clock_loop,
            "publish": self._publish_loop,
            "datasets": lambda: datasets.serve(self),
        }
        for key in self.leases:
            loops[f"history-{key}"] = partial(self._history_loop, key)
        return loops

    def _start_loops(self, error: BaseException | None = None) -> None:
        """Every loop of the node; one that died of a bug (logged by ``start_owned``) is
        started again a second later, or the node would stop renewing or serving."""
        if self._stopping:
            return
        running = {task.get_name() for task in self._tasks}
        for name, loop in self._loops().items():
            if f"bus-node-{name}" not in running:
                start_owned(self._tasks, loop(), f"bus-node-{name}", self._restart)

    def _restart(self, error: BaseException) -> None:
        asyncio.get_running_loop().call_later(1.0, self._start_loops)

    async def stop(self) -> None:
        self._stopping = True
        await cancel_owned(self._tasks)
        for lease in self.leases.values():
            if lease.active:
                self._deactivate(lease, "stopping")
                with contextlib.suppress(link.BusDown):
                    await link.call(self._release(lease.source))
        await self.supervisor.stop()
        if self._publisher is not None:
            await self._publisher.close()
        for client in (self._redis, self._blocking):
            if client is not None:
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()

    async def _release(self, source: str) -> Any:
        assert self._scripts is not None
        return await self._scripts.release_lease(
            keys=[self.names.lease(source), self.names.active(source)], args=[self.node_id]
        )

    # ------------------------------------------------------------------ leases

    def _healthy(self, source: str) -> bool:
        process = self.supervisor.get(source)
        return process is not None and process.state is ProviderState.RUNNING

    async def _lease_loop(self) -> None:
        backoff = link.Backoff()
        tick = self.lease_seconds / 3
        while True:
            try:
                reached = False
                for lease in self.leases.values():
                    reached = await self._lease_tick(lease) or reached
                if not reached:  # no lease to renew or take (no provider running): ask Redis
                    assert self._redis is not None
                    await link.call(self._redis.ping())
            except link.BusDown as exc:
                self._down(str(exc))
                await asyncio.sleep(min(tick, backoff.next()))
                continue
            backoff.reset()
            self._up()
            await asyncio.sleep(tick)

    async def _lease_tick(self, lease: Lease) -> bool:
        """Renew, take or give up ``lease`` as its provider process's health says; whether
        that asked Redis anything (a standby whose process is down asks nothing)."""
        assert self._redis is not None and self._scripts is not None
        lease_ms = int(self.lease_seconds * 1000)
        keys = [self.names.lease(lease.source), self.names.active(lease.source)]
        sent = time.monotonic()
        if lease.active and not self._healthy(lease.source):
            self._deactivate(lease, "its provider process is not running")
            await link.call(self._release(lease.source))
            return True
        if lease.active:
            renewed = await link.call(
                self._scripts.renew_lease(keys=keys, args=[self.node_id, lease_ms])
            )
            if renewed:
                self._extend(lease, sent)
                return True
            # Not ours any more: taken by another node, or Redis lost it (restarted empty).
            if await link.call(self._redis.set(keys[0], self.node_id, nx=True, px=lease_ms)):
                self._extend(lease, sent)  # nobody held it: keep streaming, tell the hubs
                lease.announce = True
                self._wake.set()
            else:
                self._deactivate(lease, "another node holds the lease")
            return True
        if not self._healthy(lease.source):
            return False
        got = await link.call(self._redis.set(keys[0], self.node_id, nx=True, px=lease_ms))
        if got:
            lease.active = True
            self._extend(lease, sent)
            lease.acquired += 1
            lease.streaming.clear()
            lease.announce = True
            self.counters["leases_acquired"] += 1
            logger.info("bus: node %s holds the lease of %s", self.node_id, lease.source)
            self._wake.set()
        return True

    def _extend(self, lease: Lease, sent: float) -> None:
        """A renewal sent at ``sent`` succeeded: the lease is ours until one lease later;
        past that, without another renewal, the streams stop by themselves."""
        lease.valid_until = sent + self.lease_seconds
        self._fence(lease)
        if lease.expiry is not None:
            lease.expiry.cancel()
        lease.expiry = asyncio.get_running_loop().call_later(
            max(0.0, lease.valid_until - time.monotonic()), self._expired, lease
        )

    def _expired(self, lease: Lease) -> None:
        lease.expiry = None
        if lease.active and time.monotonic() >= lease.valid_until:
            self._deactivate(lease, "the lease could not be renewed in time")

    def _deactivate(self, lease: Lease, why: str) -> None:
        if not lease.active:
            return
        logger.warning("bus: node %s gives up %s: %s", self.node_id, lease.source, why)
        self.counters["leases_lost"] += 1
        lease.active = False
        if lease.expiry is not None:
            lease.expiry.cancel()
            lease.expiry = None
        for handle in lease.stopping.values():
            handle.cancel()
        lease.stopping.clear()
        process = self.supervisor.get(lease.source)
        for symbol, interval in lease.streaming:
            if process is not None:
                process.send(StopStreaming(NODE_CLIENT, symbol, interval))
        lease.streaming.clear()
        lease.desired.clear()
        self._fence(lease)

    def _fence(self, lease: Lease) -> None:
        """Tell the provider process until when it may stream (``StreamUntil``): the end of
        the lease while this node holds it, no limit while it streams nothing. A frozen node
        renews nothing, and its process stops by itself at the end of the lease."""
        process = self.supervisor.get(lease.source)
        if process is not None:
            process.send(StreamUntil(lease.valid_until if lease.active else None))

    # ------------------------------------------------------------------ demand

    async def _clock_loop(self) -> None:
        """Keep :attr:`_clock` set to Redis's (every ``RESYNC`` seconds; sooner until known)."""
        backoff = link.Backoff()
        while True:
            assert self._redis is not None
            try:
                await self._clock.sync(self._redis)
            except link.BusDown:
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            await asyncio.sleep(self._clock.RESYNC)

    async def _demand_loop(self) -> None:
        backoff = link.Backoff()
        tick = self.lease_seconds / 3
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await self._wake.wait()
            self._wake.clear()
            try:
                for lease in self.leases.values():
                    if lease.active:
                        await self._demand_round(lease)
            except link.BusDown as exc:
                self._down(str(exc))
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()

    async def _demand_round(self, lease: Lease) -> None:
        assert self._redis is not None and self._scripts is not None
        source = lease.source
        if lease.announce:
            await self._announce(lease)
        live, expired = await link.call(self._scripts.read_demand(keys=[self.names.demand(source)]))
        if not lease.active:
            return  # lost while we waited
        parsed_live = [parse_member(m) for m in live]
        if None in parsed_live:  # another program wrote them: a hub writes none
            logger.warning(
                "%s: %d demand entries that no hub writes ignored (a bad symbol or interval)",
                source,
                parsed_live.count(None),
            )
        desired = {parsed[1:] for parsed in parsed_live if parsed is not None}
        died = {parsed[1:] for m in expired if (parsed := parse_member(m)) is not None}
        lease.desired = desired
        process = self.supervisor.get(source)
        for key in desired:
            handle = lease.stopping.pop(key, None)
            if handle is not None:
                handle.cancel()
            if key not in lease.streaming and process is not None:
                process.send(StartStreaming(NODE_CLIENT, *key))
                lease.streaming.add(key)
        for key in lease.streaming - desired:
            if key in lease.stopping:
                continue
            if key in died:  # its hub is gone: the linger it would have applied
                lease.stopping[key] = asyncio.get_running_loop().call_later(
                    self.settings.STREAM_LINGER_SECONDS, self._stop_key, lease, key
                )
            else:
                self._stop_key(lease, key)

    def _stop_key(self, lease: Lease, key: Key) -> None:
        lease.stopping.pop(key, None)
        if key in lease.desired or key not in lease.streaming:
            return
        lease.streaming.discard(key)
        process = self.supervisor.get(lease.source)
        if process is not None:
            process.send(StopStreaming(NODE_CLIENT, *key))

    async def _announce(self, lease: Lease) -> None:
        """Tell the hubs this node streams the provider now (a restart for them)."""
        assert self._redis is not None
        process = self.supervisor.get(lease.source)
        active = codec.Active(
            self.node_id,
            process.pid if process is not None else None,
            process.persist if process is not None else True,
            list(lease.state.values()),
            process.budgeted if process is not None else True,
        )
        data = codec.encode(active)
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self.names.active(lease.source), data, px=int(self.lease_seconds * 1000))
        pipe.publish(self.names.updates(lease.source), data)
        await link.execute(pipe)
        lease.announce = False

    async def _notify_loop(self) -> None:
        """Hubs' "demand changed" notes (and forwarded ``NoUpdate``): react at once."""
        backoff = link.Backoff()
        channels = {self.names.demand_changed(key): key for key in self.leases}
        while True:
            sub = link.client(self.settings.BUS_URL, None)
            pubsub = sub.pubsub(ignore_subscribe_messages=True)
            try:
                await link.call(pubsub.subscribe(*channels))
                backoff.reset()
                tick = self.lease_seconds / 3
                listener = link.Listener(pubsub, tick, max(0.2, tick))
                while True:
                    message = await listener.get()
                    if message is None:
                        continue
                    channel = message.get("channel")
                    name = channel.decode() if isinstance(channel, bytes) else str(channel)
                    source = channels.get(name)
                    data = message.get("data")
                    if source is not None and data:
                        self._forward(source, codec.decode(data, name))
                    self._wake.set()
            except link.BusDown as exc:
                self._down(str(exc))
                await asyncio.sleep(backoff.next())
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
                with contextlib.suppress(RedisError, OSError):
                    await sub.aclose()

    def _forward(self, source: str, command: object) -> None:
        lease = self.leases[source]
        if not isinstance(command, NoUpdate) or not lease.active:
            return
        if type(command.symbol) is not str or type(command.interval) is not str:
            logger.warning("bus: dropped a malformed NoUpdate for %s", source)
            return
        process = self.supervisor.get(source)
        if (command.symbol, command.interval) in lease.streaming and process is not None:
            process.send(command)

    # ------------------------------------------------------------------ events out

    def _on_events(self, source: str, events: list[WireEvent]) -> None:
        lease = self.leases.get(source)
        if lease is None:
            return
        for event in events:
            if isinstance(event, Clock):
                lease.state[("clock", event.symbol)] = event
            elif isinstance(event, Status):
                lease.state["status"] = event
        if lease.active:
            pending = self._out.setdefault(self.names.updates(source), [])
            if len(pending) >= MAX_PENDING_EVENTS:  # Redis is not keeping up: shed, count
                self.counters["events_dropped"] += len(events)
            else:
                pending.extend(events)
            self._out_ready.set()
            process = self.supervisor.get(source)
            if process is not None:
                process.last_update = time.time()

    def _on_ready(self, source: str) -> None:
        """A provider process (re)started: if we hold its lease, it streams nothing yet."""
        lease = self.leases.get(source)
        if lease is not None and lease.active:
            lease.streaming.clear()
            lease.announce = True
            self._fence(lease)
            self._wake.set()

    async def _publish_loop(self) -> None:
        backoff = link.Backoff()
        while True:
            await self._out_ready.wait()
            self._out_ready.clear()
            if not self._out:
                continue
            assert self._redis is not None
            # Everything that came while the last publish was in flight goes as one message
            # per provider: fewer, larger messages when busy, one per batch when not.
            batch, self._out = self._out, {}
            try:
                await self._publish(batch)
            except link.BusDown as exc:
                self.counters["batches_dropped"] += len(batch)
                self._down(str(exc))
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            self.counters["batches_published"] += len(batch)

    async def _publish(self, batch: dict[str, list[WireEvent]]) -> None:
        """One message per channel (per provider), on the publisher's own connection: a
        pipeline's round of redis-py cost the node three times as much CPU per batch."""
        assert self._publisher is not None
        for channel, events in batch.items():
            await self._publisher.publish(channel, codec.encode(events))

    # ------------------------------------------------------------------ history

    async def _history_loop(self, source: str) -> None:
        backoff = link.Backoff()
        queue = self.names.history(source)
        lease = self.leases[source]
        while True:
            if not lease.active:
                await asyncio.sleep(self.lease_seconds / 3)
                continue
            assert self._blocking is not None
            try:
                popped = await link.call(self._blocking.blpop([queue], HISTORY_POLL_SECONDS))
            except link.BusDown as exc:
                self._down(str(exc))
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            if popped is None:
                continue
            request = codec.decode(popped[1], queue)
            if isinstance(request, codec.HistoryRequest) and _well_formed(request):
                self._take_history(source, request)
            else:
                logger.warning("bus: dropped a malformed history request on %s", queue)

    def _take_history(self, source: str, request: codec.HistoryRequest) -> None:
        self.counters["history_requests"] += 1
        if request.deadline <= self._clock.now():
            return  # the hub gave up on it already
        key = (source, request.symbol, request.interval, request.start, request.end, request.count)
        waiters = self._inflight.get(key)
        if waiters is not None:
            waiters.append((request.hub, request.request_id, None))
            return
        joined = self._containing(key)
        if joined is not None:
            waiters, cut = joined
            waiters.append((request.hub, request.request_id, cut))
            return
        self._inflight[key] = [(request.hub, request.request_id, None)]
        start_owned(self._tasks, self._serve_history(key, request), f"bus-history-{source}")

    def _containing(self, key: Window) -> tuple[list[Waiter], int] | None:
        """The waiters of a call in flight whose answer serves this window, and where to cut
        it. Two hubs asking for "the latest N bars" at about the same moment count back from
        their own clocks, so their starts differ by the time between them: a window that
        ends now joins a call in flight for the same series, end and count whose start is at
        most one bar interval earlier. The only bar it can miss is the one that opened
        since: the forming bar, which a hub never stores as final (as when a request waits
        for the hub's own single flight)."""
        source, symbol, interval, start, end, count = key
        if end != NOW:
            return None
        step = intervals.nominal_seconds(interval)
        try:
            first = intervals.parse_date(start)
            for (s, sym, iv, other, e, n), waiters in self._inflight.items():
                same = (s, sym, iv, e, n) == (source, symbol, interval, NOW, count)
                if same and 0 <= first - intervals.parse_date(other) < step:
                    return waiters, first
        except ValueError:
            return None  # not a window a hub asks for
        return None

    async def _serve_history(self, key: Window, request: codec.HistoryRequest) -> None:
        source = key[0]
        bars: list[Bar] = []
        error: BaseException | None = None
        process = self.supervisor.get(source)
        self.counters["history_calls"] += 1
        try:
            if process is None:
                raise ProviderError(f"provider {source} is not enabled on this node")
            timeout = max(0.1, request.deadline - self._clock.now())
            bars = await process.get_history(
                request.symbol, request.interval, request.start, request.end, request.count, timeout
            )
        except ProviderError as exc:
            error = exc
        finally:
            waiters = self._inflight.pop(key, [])
        assert self._redis is not None
        pipe = self._redis.pipeline(transaction=False)
        for hub, request_id, cut in waiters:
            mine = bars if cut is None else [bar for bar in bars if bar[0] >= cut]
            answer = codec.HistoryAnswer(request_id, mine, error)
            pipe.publish(self.names.reply(hub), codec.encode(answer))
        with contextlib.suppress(link.BusDown):
            await link.execute(pipe)

    # ------------------------------------------------------------------ introspection

    def _up(self) -> None:
        if not self.up:
            logger.info("bus: node %s connected", self.node_id)
        self.up, self.reason = True, ""

    def _down(self, reason: str) -> None:
        if self.up or self.reason == "connecting":
            logger.warning("bus: node %s: Redis unavailable (%s); retrying", self.node_id, reason)
        self.up, self.reason = False, reason

    def health(self) -> dict[str, Any]:
        providers = {}
        for key, process in self.supervisor.providers.items():
            lease = self.leases[key]
            providers[key] = {
                **process.health(),
                "lease": "active" if lease.active else "standby",
                "streams": sorted(f"{symbol} {interval}" for symbol, interval in lease.streaming),
            }
        troubled = unserved(providers)
        return {
            "status": "ok" if self.up and not troubled else "degraded",
            "reason": self.reason if not self.up else "; ".join(troubled),
            "role": "providers",
            "node": self.node_id,
            "bus": {
                "state": "up" if self.up else "down",
                "reason": "" if self.up else self.reason,
                "prefix": self.names.prefix,
                "lease_seconds": self.lease_seconds,
            },
            "leases": {key: lease.active for key, lease in self.leases.items()},
            "providers": providers,
        }


def _well_formed(request: codec.HistoryRequest) -> bool:
    """A history request of the shapes a hub writes (another program on the prefix could
    write anything: a bad interval killed the history loop)."""
    texts = (request.hub, request.symbol, request.start, request.end)
    return (
        all(type(text) is str for text in texts)
        and request.interval in intervals.INTERVALS
        and type(request.request_id) is int
        and type(request.count) is int
        and type(request.deadline) in (int, float)
    )
