"""What crosses Redis: each message pickled once, as the provider pipe does.

A live event batch is the list of events the provider process wrote (bar updates as plain
tuples, ``runtime.messages``): the active node publishes it once and every hub decodes it
once, whatever the number of clients. The other messages are small dataclasses. Redis is
trusted like the pipe (it carries pickles): keep it on a private network (README,
"Scale-out"). A message that does not decode is logged and dropped, never raised.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from typing import Any

from backend.model.bars import Bar
from backend.runtime.messages import WireEvent

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
