"""What crosses Redis: each message pickled once, as the provider pipe does.

A live event batch is the list of events the provider process wrote (bar updates as plain
tuples, ``runtime.messages``): the active node publishes it once and every hub decodes it
once, whatever the number of clients. The other messages are small dataclasses. Redis is
trusted like the pipe (it carries pickles): keep it on a private network (README,
"Scale-out"). A message that does not decode is logged and dropped, never raised.
"""

from __future__ import annotations

import logging
import math
import pickle
from dataclasses import dataclass, field
from typing import Any

from backend.model.bars import Bar
from backend.runtime.messages import Changed, Clock, Missed, Notice, Status, WireEvent

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Active:
    """A node took (or re-took) a provider's lease and its process is ready: every hub
    treats it as a provider restart (replays its demand, refills gaps from history).
    ``state``: the provider's last clock and status events, for hubs that start later."""

    node: str
    pid: int | None
    persist: bool
    state: list[WireEvent] = field(default_factory=list)
    budgeted: bool = True  # the provider's history calls count against fair-use budgets


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    hub: str
    request_id: int
    symbol: str
    interval: str
    start: str
    end: str
    count: int
    deadline: float  # wall-clock seconds; the node drops a request past it


@dataclass(frozen=True, slots=True)
class HistoryAnswer:
    request_id: int
    bars: list[Bar] = field(default_factory=list)
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class DatasetRequest:
    request: str
    deadline: float


@dataclass(frozen=True, slots=True)
class DatasetEnd:
    """The last message of a dataset reply: the row count, or why it failed."""

    rows: int
    error: str = ""


def encode(message: Any) -> bytes:
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def decode(data: Any, where: str) -> Any:
    """The message of ``data``; None (logged) when it is not one of ours."""
    if not isinstance(data, bytes | bytearray):
        return None
    try:
        return pickle.loads(data)
    except Exception as exc:  # noqa: BLE001 - unpickling foreign bytes raises any kind
        logger.warning("bus: dropped an undecodable message on %s: %s", where, exc)
        return None


def well_formed(events: list[Any]) -> list[WireEvent]:
    """The events of a batch that have the shapes a provider process writes: a bar update
    ``(symbol, interval, (time, open, high, low, close, volume), final)`` with an int time
    and float-or-None values, or a ``Clock``, ``Status``, ``Notice``, ``Changed`` or
    ``Missed`` with fields of their types. Anything else (another program on the prefix) is
    dropped and logged: a clock of strings would break every later history request of the
    source, a bar of strings would reach clients as it is."""
    kept = [event for event in events if _bar_ok(event) or _event_ok(event)]
    if len(kept) < len(events):
        logger.warning("bus: dropped %d malformed events of a batch", len(events) - len(kept))
    return kept


def active_ok(active: Active) -> bool:
    """Whether a holder announcement has the field types a node writes (one that another
    program wrote would fail the hub's bus task that reads it)."""
    return (
        type(active.node) is str
        and (active.pid is None or type(active.pid) is int)
        and type(active.persist) is bool
        and type(active.state) is list
        and type(getattr(active, "budgeted", True)) is bool  # a node of an older version
    )


def answer_ok(answer: HistoryAnswer) -> bool:
    """Whether a history answer has the shapes a node writes: its bars as a provider's
    (int time, float-or-None values), its error an exception or None."""
    return (
        type(answer.bars) is list
        and all(bar_ok(bar) for bar in answer.bars)
        and (answer.error is None or isinstance(answer.error, BaseException))
    )


def bar_ok(bar: Any) -> bool:
    """``(time, open, high, low, close, volume)``: an int time, float-or-None values."""
    if type(bar) is not tuple or len(bar) != 6 or type(bar[0]) is not int:
        return False
    return all(value is None or type(value) is float for value in bar[1:])


def _bar_ok(event: Any) -> bool:
    if type(event) is not tuple or len(event) != 4:
        return False
    symbol, interval, bar, final = event
    if type(symbol) is not str or type(interval) is not str or type(final) is not bool:
        return False
    return bar_ok(bar)


def _event_ok(event: Any) -> bool:
    match event:
        case Clock(symbol, origin_wall, origin_data, speed):
            numbers = (origin_wall, origin_data, speed)
            return (symbol is None or type(symbol) is str) and all(
                type(n) in (int, float) and math.isfinite(n) for n in numbers
            )
        case Status(state, detail):
            return type(state) is str and type(detail) is str
        case Notice(symbol, interval, code, message):
            return all(type(text) is str for text in (symbol, interval, code, message))
        case Changed(symbol):
            return type(symbol) is str
        case Missed(symbol, interval, since):
            return type(symbol) is str and type(interval) is str and type(since) is int
    return False
