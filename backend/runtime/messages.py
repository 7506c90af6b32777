"""Typed messages between the hub and a provider process.

Commands go hub -> provider over a ``multiprocessing`` queue; events go provider -> hub over
a pipe, pickled in batches (a list of events per write, :func:`encode_batch`). Both sides
dispatch with ``match``, except for bar updates: they are nearly all of the traffic, so they
cross the pipe as plain tuples (a plain tuple unpickles about 40 times faster than a
dataclass instance) and the hub takes them first.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import NamedTuple

from backend.model.bars import Bar

# ---------------------------------------------------------------- hub -> provider commands


@dataclass(frozen=True, slots=True)
class StartStreaming:
    """A client subscribed to ``(symbol, interval)``; ``client`` is its integer id."""

    client: int
    symbol: str
    interval: str


@dataclass(frozen=True, slots=True)
class StopStreaming:
    """A client left ``(symbol, interval)`` (the seed's ``on_close``)."""

    client: int
    symbol: str
    interval: str


@dataclass(frozen=True, slots=True)
class NoUpdate:
    """The hub saw no update on a streamed key for longer than the staleness limit."""

    symbol: str
    interval: str


@dataclass(frozen=True, slots=True)
class GetHistory:
    """Ask for bars of ``(symbol, interval)`` between two ``%Y-%m-%d %H:%M:%S`` UTC times."""

    request_id: int
    symbol: str
    interval: str
    start: str
    end: str
    count: int


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Stop streaming, call the provider's ``shutdown`` hook and exit."""


@dataclass(frozen=True, slots=True)
class StreamUntil:
    """Stream no longer than ``deadline`` (``time.monotonic()``: one clock for every process
    of a machine) unless another comes first; ``None``: no limit. A bus node sends one with
    every renewal of its lease, so that a provider process whose node froze (a SIGSTOP, a
    stalled event loop) stops streaming by itself when the lease runs out, before a standby
    node starts the same streams."""

    deadline: float | None


Command = StartStreaming | StopStreaming | NoUpdate | GetHistory | Ping | Shutdown | StreamUntil

# ---------------------------------------------------------------- provider -> hub events


@dataclass(frozen=True, slots=True)
class Ready:
    """The provider process finished ``init()`` and accepts commands.

    ``persist`` is the provider's ``persist_history``: whether the hub keeps its bars in the
    store (a provider that reads local files need not); ``budgeted`` its ``history_budget``:
    whether its history calls count against the fair-use budgets.
    """

    pid: int
    persist: bool = True
    budgeted: bool = True


@dataclass(frozen=True, slots=True)
class Pong:
    seq: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Sent every second by the provider's idle writer thread; ``busy_history`` counts
    history hooks in flight. Also sent right after a batch from which the writer merged
    ``merged`` superseded states of forming bars (the hub was behind)."""

    busy_history: int
    merged: int = 0


class BarUpdate(NamedTuple):
    """One bar of ``(symbol, interval)``: the forming bar, a new bar, or a correction.

    On the pipe it is a plain ``(symbol, interval, bar, final)`` tuple (:data:`WireBar`).
    """

    symbol: str
    interval: str
    bar: Bar
    final: bool = False


@dataclass(frozen=True, slots=True)
class HistoryReply:
    """The answer to :class:`GetHistory`: bars oldest first, or an error."""

    request_id: int
    bars: list[Bar] = field(default_factory=list)
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class Clock:
    """The provider's clock for ``symbol`` (``None``: every symbol without its own clock).

    Provider time = ``origin_data + (wall - origin_wall) * speed``. The default is the wall
    clock (speed 1, no offset); the CSV provider reports its replay clocks.
    """

    symbol: str | None
    origin_wall: float
    origin_data: float
    speed: float


@dataclass(frozen=True, slots=True)
class Status:
    """A change of the provider's own state (connected, rate limited, auth failed, ...)."""

    state: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Notice:
    """An error to show to the clients subscribed to ``(symbol, interval)``."""

    symbol: str
    interval: str
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Changed:
    """Bars of ``symbol`` the provider served before are not what it serves now (a file
    rewritten under a local provider): the hub forgets what it holds of the symbol, at every
    interval, and asks the provider again at the next request."""

    symbol: str


@dataclass(frozen=True, slots=True)
class Missed:
    """The stream of ``(symbol, interval)`` missed bars from ``since`` on (UTC seconds: the
    open time of the first bar that may be missing, or partial) and they were not fetched
    (a reconnect's gap fill put off or failed): the hub no longer counts that span as known,
    nor what the stream sends after it, so the next ``data_init`` or history request of it
    asks the provider again. Sent before the live bars that follow the gap. The provider may
    still publish the missed bars later (closed, older than the live ones)."""

    symbol: str
    interval: str
    since: int


Event = (
    Ready | Pong | Heartbeat | BarUpdate | HistoryReply | Clock | Status | Notice | Changed | Missed
)

# A BarUpdate as it crosses the pipe.
WireBar = tuple[str, str, Bar, bool]
WireEvent = Event | WireBar


def conflate(events: list[Event]) -> list[Event]:
    """Only the newest state of each bar (same symbol, interval and open time), at the place
    of its first state; every other event kept, in order. Bars of one key keep their order
    (an older bar's last state still comes before a newer bar's first)."""
    slots: dict[object, Event] = {}
    for index, event in enumerate(events):
        if type(event) is BarUpdate:
            slots[(event.symbol, event.interval, event.bar[0])] = event
        else:
            slots[index] = event
    return list(slots.values())


def encode_batch(batch: list[Event]) -> bytes:
    """A batch of events as one pipe message (bar updates as plain tuples)."""
    wire = [tuple(event) if type(event) is BarUpdate else event for event in batch]
    return pickle.dumps(wire, protocol=pickle.HIGHEST_PROTOCOL)


def decode_batch(data: bytes) -> list[WireEvent]:
    """The events of one pipe message; a plain tuple is a bar update (:data:`WireBar`)."""
    batch: list[WireEvent] = pickle.loads(data)
    return batch
