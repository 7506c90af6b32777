"""Fakes to drive the real :class:`backend.hub.hub.Hub` without processes or sockets.

``FakeProvider`` keeps the per-client bookkeeping with the real ``Provider`` base class (the
same ``_subscribe``/``_unsubscribe`` a provider process runs), so what it believes is what a
real provider would believe. ``FakeClock`` is the hub's linger timer, advanced by hand.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any

import orjson

from backend.hub.clients import Client
from backend.hub.handles import EventSink, ReadySink
from backend.hub.hub import Hub
from backend.hub.metrics import Metrics
from backend.model.bars import Bar, SeriesId
from backend.runtime.messages import Command, StartStreaming, StopStreaming
from backend.runtime.provider import Provider
from backend.settings import Settings, load_settings
from backend.wire.frames import payloads_of

SOURCE = "fake"
INTERVALS = ("1m", "5m")


class RecordingProvider(Provider):
    """The base class's bookkeeping, with its first/last hooks recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.hooks: list[tuple[str, str, str]] = []

    def on_first_subscriber(self, symbol: str, interval: str) -> None:
        self.hooks.append(("first", symbol, interval))

    def on_last_subscriber(self, symbol: str, interval: str) -> None:
        self.hooks.append(("last", symbol, interval))


class FakeProvider:
    """A provider process as the hub sees it; ``alive`` False drops commands (it is down)."""

    def __init__(self) -> None:
        self.persist = False
        self.budgeted = True
        self.last_update: float | None = None
        self.alive = True
        self.inner = RecordingProvider()
        self.commands: list[Command] = []
        self.history: list[Bar] = []
        self.gates: dict[str, asyncio.Event] = {}  # symbol -> history calls wait for it
        self.history_calls = 0

    def send(self, command: Command) -> None:
        if not self.alive:
            return
        self.commands.append(command)
        match command:
            case StartStreaming(client, symbol, interval):
                self.inner._subscribe(client, symbol, interval)
            case StopStreaming(client, symbol, interval):
                self.inner._unsubscribe(client, symbol, interval)

    def die(self) -> None:
        """The process died: commands are lost until a new one is spawned."""
        self.alive = False

    def spawn(self) -> None:
        """A new process, not ready yet: empty bookkeeping; commands queue up for it (a real
        process runs them after ``init``, before or after the hub sees ``Ready``)."""
        self.alive = True
        self.inner = RecordingProvider()

    def believes(self, key: SeriesId) -> frozenset[int]:
        return self.inner.subscribers(key.name, key.interval)

    def streaming(self) -> set[SeriesId]:
        return {SeriesId(SOURCE, s, i) for s, i in self.inner.streaming_keys()}

    async def wait_ready(self, timeout: float) -> bool:
        return True

    async def get_history(
        self, symbol: str, interval: str, start: str, end: str, count: int, timeout: float
    ) -> list[Bar]:
        self.history_calls += 1
        gate = self.gates.get(symbol)
        if gate is not None:
            await gate.wait()
        return list(self.history)

    def health(self) -> dict[str, Any]:
        return {"alive": self.alive}


class FakeSupervisor:
    def __init__(self, on_events: EventSink, on_ready: ReadySink) -> None:
        self.providers = {SOURCE: FakeProvider()}
        self.on_events = on_events
        self.on_ready = on_ready

    def get(self, key: str) -> FakeProvider | None:
        return self.providers.get(key)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class FakeHandle:
    def __init__(self, clock: FakeClock, due: float) -> None:
        self.clock = clock
        self.due = due
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """``call_later`` on a clock that only moves when ``advance`` is called."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, FakeHandle, Callable[[], None]]] = []
        self._seq = itertools.count()

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeHandle:
        handle = FakeHandle(self, self.now + delay)
        heapq.heappush(self._timers, (handle.due, next(self._seq), handle, callback))
        return handle

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while self._timers and self._timers[0][0] <= self.now:
            _, _, handle, callback = heapq.heappop(self._timers)
            if not handle.cancelled:
                callback()

    def pending(self) -> int:
        return sum(1 for _, _, handle, _ in self._timers if not handle.cancelled)


class FakeSymbols:
    """The symbol index: every name of ``names`` exists with ``INTERVALS``."""

    def __init__(self, names: tuple[str, ...] = ("AAA", "BBB", "CCC")) -> None:
        self.names = names
        self.search_gates: dict[str, asyncio.Event] = {}

    async def details(self, source: str, name: str) -> dict[str, Any] | None:
        if source != SOURCE or name not in self.names:
            return None
        return {"source": source, "name": name, "type": "candlestick", "intervals": INTERVALS}

    async def search(self, query: str, limit: int = 100, source: str | None = None) -> list[Any]:
        gate = self.search_gates.get(query)
        if gate is not None:
            await gate.wait()
        return [{"id": f"{SOURCE}-{n}", "name": n} for n in self.names if query.upper() in n]


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"PROVIDERS": "csv", "STREAM_LINGER_SECONDS": 1.0}
    values.update(overrides)
    return load_settings(**values)


def make_hub(
    clock: FakeClock | None = None,
    store: Any = None,
    tick_seconds: float = 1.0,
    **overrides: Any,
) -> tuple[Hub, FakeProvider]:
    """A real hub over a fake provider ``fake``; timers on ``clock`` (else the loop);
    ``overrides`` are settings."""
    extra: dict[str, Any] = {"tick_seconds": tick_seconds}
    if clock is not None:
        extra["call_later"] = clock.call_later
    hub = Hub(
        settings(**overrides),
        FakeSymbols(),  # type: ignore[arg-type]
        Metrics(),
        store,
        providers=lambda s, on_events, on_ready: FakeSupervisor(on_events, on_ready),
        **extra,
    )
    provider = hub.supervisor.get(SOURCE)
    assert isinstance(provider, FakeProvider)
    return hub, provider


def connect(hub: Hub) -> Client:
    client = hub.add_client("test", lambda code, reason: None)
    assert client is not None
    return client


def request(kind: str, key: SeriesId, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "source": key.source, "name": key.name, "interval": key.interval, **extra}


async def send(hub: Hub, client: Client, *requests: dict[str, Any], settle: bool = True) -> None:
    """One frame of ``requests``; with ``settle``, wait until every reply was queued."""
    await hub.handle_frame(client, orjson.dumps(list(requests)))
    if settle:
        await client.replies.idle()


def taken(client: Client) -> list[dict[str, Any]]:
    """The messages queued for ``client`` since the last call, oldest first."""
    return [orjson.loads(p) for entry in client.outbox.drain() for p in payloads_of(entry)]


def about(message: dict[str, Any]) -> SeriesId | None:
    """The key a reply is about (``error`` replies name it in their request)."""
    body = message.get("request") if message.get("type") == "error" else message
    if not isinstance(body, dict) or "name" not in body:
        return None
    return SeriesId(body["source"], body["name"], body["interval"])


def close_above_alert(level: float = 1000, name: str = "AAA") -> dict[str, Any]:
    """An ``alert`` request (no message, owner or subscription yet) whose one rule is
    ``close > level`` of ``name`` 1m of the fake source."""
    rule = {
        "type1": "data",
        "source1": SOURCE,
        "name1": name,
        "interval1": "1m",
        "key1": "close",
        "comparator": ">",
        "type2": "value",
        "value2": f"{level:g}",
    }
    return {"type": "alert", "rules": [rule], "operators": [], "indicators": {}}
