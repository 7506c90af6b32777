"""OpenBB Workspace's live grid: the rows, the ``params`` messages, and the socket session.

The live-grid socket is a hub client that *watches* its keys (:mod:`backend.hub.listeners`):
the upstream stream starts and stops, with linger, exactly as for a ``/websocket/`` client.
Updates are conflated per symbol, so a slow browser costs one pending row per symbol.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from backend.access.identity import may_read
from backend.api.udf import full_name, resolve_symbol
from backend.errors import CandlewireError, ProtocolError
from backend.model import intervals
from backend.model.bars import Bar, SeriesId
from backend.wire import protocol
from backend.ws.endpoint import frames

if TYPE_CHECKING:
    from backend.hub.hub import Client, Hub

logger = logging.getLogger(__name__)

# A grid symbol is ``source:name``: each part as long as a request may name, and the colon.
MAX_SYMBOL_CHARS = 2 * protocol.MAX_FIELD_CHARS + 1
# A name with commas in it arrives cut at them (see resolve_grid_symbols); this many pieces
# at most are put back together.
MAX_JOINED_PIECES = 4
CLOSE_TIMEOUT = 2.0
# Fields of a row that never change over the socket.
STATIC_FIELDS = frozenset({"symbol", "name", "error"})

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True)
class GridSymbol:
    """One requested symbol: the row id as sent, and the key streamed for it (or an error)."""

    symbol: str
    key: SeriesId | None = None
    label: str | None = None
    error: str | None = None


def split_symbols(value: object, limit: int | None = None) -> list[str]:
    """Symbols from a parameter value: a comma-joined string or a list; deduplicated."""
    if isinstance(value, str):
        parts: list[object] = [value]
    elif isinstance(value, list | tuple):
        parts = list(value)
    else:
        return []
    seen: dict[str, None] = {}
    for part in parts:
        if not isinstance(part, str):
            continue
        for item in part.split(","):
            symbol = item.strip()[:MAX_SYMBOL_CHARS]
            if symbol:
                seen[symbol] = None
    symbols = list(seen)
    return symbols if limit is None else symbols[:limit]


def parse_params_message(text: str | bytes, limit: int | None = None) -> list[str] | None:
    """The symbol set of a Workspace params message, or None if it is not one.

    Both shapes are accepted: ``{"params": {...}}`` and ``{"type": "params", "params":
    {...}}``. A params message without symbols (no ``symbol``, or ``null``) yields ``[]``
    (the set becomes empty). A ``symbol`` that is neither text nor a list (an object, a
    number, a boolean) is not one of Workspace's messages, which carry the multi-select's
    string or list: ignored, like any other junk, instead of emptying the set. Frames are
    decoded as on ``/websocket/`` (:func:`backend.wire.protocol.load_frame`), so invalid
    UTF-8 or deep nesting is just not a params message.
    """
    try:
        message = protocol.load_frame(text)
    except ProtocolError:
        return None
    if not isinstance(message, dict):
        return None
    if message.get("type", "params") != "params":
        return None
    params = message.get("params")
    if not isinstance(params, dict):
        return None
    symbol = params.get("symbol")
    if symbol is not None and not isinstance(symbol, str | list):
        return None
    return split_symbols(symbol, limit)


def grid_interval(details: dict[str, Any]) -> str | None:
    """The interval a live-grid row follows: ``1d``, else the symbol's coarsest interval."""
    offered = [i for i in intervals.INTERVALS if i in (details.get("intervals") or ())]
    if "1d" in offered:
        return "1d"
    return offered[-1] if offered else None


def build_row(
    symbol: str, label: str | None, bars: Sequence[Bar], error: str | None = None
) -> dict[str, Any]:
    """A live-grid row from the last two bars (previous, forming); missing values are None."""
    last = bars[-1] if bars else None
    prev = bars[-2] if len(bars) >= 2 else None
    price = last[4] if last is not None else None
    prev_close = prev[4] if prev is not None else None
    change = None
    change_percent = None
    if price is not None and prev_close is not None:
        change = round(price - prev_close, 10)
        if prev_close:
            change_percent = round((price - prev_close) / abs(prev_close) * 100, 6)
    return {
        "symbol": symbol,
        "name": label,
        "price": price,
        "change": change,
        "change_percent": change_percent,
        "volume": last[5] if last is not None else None,
        "date": intervals.format_date(last[0]) if last is not None else None,
        "error": error,
    }


def update_of(row: dict[str, Any]) -> dict[str, Any]:
    """The socket form of a row: its id plus every live field that has a value."""
    update = {"symbol": row["symbol"]}
    update.update({k: v for k, v in row.items() if k not in STATIC_FIELDS and v is not None})
    return update


def bar_row(bar: Bar) -> dict[str, Any]:
    return {
        "date": intervals.format_date(bar[0]),
        "open": bar[1],
        "high": bar[2],
        "low": bar[3],
        "close": bar[4],
        "volume": bar[5],
    }


def option(details: dict[str, Any]) -> dict[str, str]:
    """A dropdown option ``{label, value}`` for a dataset row; the value is ``source:name``."""
    name = str(details["name"])
    label = str(details.get("name_label") or "")
    where = str(details.get("source_label") or details["source"])
    text = f"{name} - {label} ({where})" if label and label != name else f"{name} ({where})"
    return {"label": text, "value": full_name(details)}


class LiveGridSession:
    """One live-grid socket: the current symbol set, the keys it watches, pending rows.

    The reader applies params messages one at a time; each replaces the whole set. The hub
    calls :meth:`on_bar` for watched keys; it only marks the symbols of that key as pending
    and wakes the writer, which builds each row from the cache when it sends it, and only
    for symbols still in the current set.
    """

    def __init__(self, websocket: WebSocket, hub: Hub) -> None:
        self.websocket = websocket
        self.hub = hub
        self.client: Client | None = None
        self.symbols: dict[str, GridSymbol] = {}
        self.by_key: dict[SeriesId, set[str]] = {}
        self.pending: dict[str, None] = {}
        self.wake = asyncio.Event()
        self.closing = False
        self.wanted: list[str] | None = None  # the newest set not applied yet
        self.new_set = asyncio.Event()

    # -- hub side (BarListener)

    def on_bar(self, key: SeriesId, bar: Bar) -> None:
        symbols = self.by_key.get(key)
        if not symbols:
            return
        for symbol in symbols:
            self.pending[symbol] = None
        self.wake.set()

    def kick(self, code: int, reason: str) -> None:
        """Close from the hub's side."""
        if self.closing:
            return
        self.closing = True
        task = asyncio.get_running_loop().create_task(self.close(code, reason))
        task.add_done_callback(_log_failure)

    # -- socket side

    async def read_loop(self) -> None:
        """Read params messages until the socket ends. Each replaces the whole set, so only
        the newest waits while one is applied (:meth:`_apply_loop`): reading never waits
        for a set's rows, and a client that leaves is noticed at once, not after the sets
        it had sent were loaded (up to ``HISTORY_TIMEOUT`` each)."""
        limit = self.hub.settings.MAX_SUBSCRIPTIONS_PER_CLIENT
        applier = asyncio.get_running_loop().create_task(self._apply_loop())
        try:
            async for text in frames(self.websocket, self.hub.settings.MAX_FRAME_BYTES, self.close):
                if self.closing:
                    return
                wanted = parse_params_message(text, limit)
                if wanted is None:
                    logger.debug("live grid: ignored a message that is not params: %.200r", text)
                    continue
                self.wanted = wanted
                self.new_set.set()
        finally:
            applier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await applier

    async def _apply_loop(self) -> None:
        while True:
            await self.new_set.wait()
            self.new_set.clear()
            wanted, self.wanted = self.wanted, None
            if wanted is not None:
                await self.apply_logged(wanted)

    async def apply_logged(self, wanted: list[str]) -> None:
        """:meth:`apply`; a failure costs this message, never the socket."""
        try:
            await self.apply(wanted)
        except CandlewireError:  # e.g. the symbol database failed
            logger.exception("live grid: could not apply %d symbols", len(wanted))
        except Exception:  # a bug: logged (rate-limited by backend.logs) and counted
            logger.exception("live grid: applying %d symbols failed", len(wanted))
            self.hub.metrics.inc("candlewire_internal_errors_total")

    async def apply(self, wanted: list[str]) -> None:
        """Replace the symbol set: watch new keys, unwatch dropped ones, send fresh rows."""
        assert self.client is not None
        items = await resolve_grid_symbols(self.hub, wanted)
        if self.client.id not in self.hub.clients:  # it left meanwhile: nothing to watch
            return
        by_key: dict[SeriesId, set[str]] = {}
        for item in items:
            if item.key is not None:
                by_key.setdefault(item.key, set()).add(item.symbol)
        for key in [key for key in self.by_key if key not in by_key]:
            self.hub.unwatch(self.client, key)
        added = [key for key in by_key if key not in self.by_key]
        refused = self._watch(added)
        if refused:
            items = [
                dataclasses.replace(item, key=None, error=refused[item.key])
                if item.key in refused
                else item
                for item in items
            ]
            by_key = {key: symbols for key, symbols in by_key.items() if key not in refused}
            added = [key for key in added if key not in refused]
        self.symbols = {item.symbol: item for item in items}
        self.by_key = by_key
        self.pending = {s: None for s in self.pending if s in self.symbols}
        if self.client.id not in self.hub.clients:
            return
        answers = await asyncio.gather(
            *(self.hub.planner.latest(key, 2, self.hub.subs.has(key)) for key in added)
        )
        for key, answer in zip(added, answers, strict=True):
            if answer.error is not None:
                logger.info("live grid: %s: %s", key, answer.error)
        for symbols in self.by_key.values():
            self.pending.update(dict.fromkeys(symbols))
        self.pending.update(dict.fromkeys(i.symbol for i in items if i.key is None))
        self.wake.set()

    def _watch(self, keys: list[SeriesId]) -> dict[SeriesId, str]:
        """Stream ``keys`` to this grid, each as its caller may: a grid's rows are streamed
        series of its client, counted against its limit over all its sockets
        (``MAX_SUBSCRIPTIONS_PER_CALLER`` or its tier's) as ``data`` subscriptions are; they
        were not counted, so one token streamed 500 series a grid socket whatever its tier.
        Returns the keys refused, with why. Called in the socket's task (its caller)."""
        admit = self.hub.admit_subscription
        assert self.client is not None
        refused: dict[SeriesId, str] = {}
        for key in keys:
            why = admit(self.client.id) if admit is not None else None
            if why is None:
                self.hub.watch(self.client, key, self)
            else:
                refused[key] = why
        return refused

    async def write_loop(self) -> None:
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while self.pending:
                    symbol = next(iter(self.pending))
                    del self.pending[symbol]
                    frame = self.frame(symbol)
                    if frame is not None:
                        await self.websocket.send_text(frame)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            logger.debug("live grid: writer stopped: %r", exc)

    def frame(self, symbol: str) -> str | None:
        """The update frame of ``symbol`` from the cache; None if it left the set."""
        item = self.symbols.get(symbol)
        if item is None:
            return None
        if item.key is None:  # sent once per params message, like the snapshot's row
            return orjson.dumps(build_row(symbol, item.label, [], item.error)).decode()
        series = self.hub.cache.peek(item.key)
        if series is None or not series.bars:
            return None
        row = build_row(symbol, item.label, series.bars[-2:])
        # The row's bars came, so an error the rows endpoint gave it (a provider that failed
        # then) is over: Workspace keeps a cell until an update names it, null included.
        return orjson.dumps({**update_of(row), "error": None}).decode()

    async def close(self, code: int, reason: str) -> None:
        self.closing = True
        with contextlib.suppress(TimeoutError, RuntimeError, OSError, WebSocketDisconnect):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.websocket.close(code, reason)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("closing a live-grid socket failed", exc_info=task.exception())


async def resolve_grid_symbol(hub: Hub, symbol: str) -> GridSymbol:
    details = await resolve_symbol(hub, symbol)
    if details is None:
        return GridSymbol(symbol, error=f"unknown symbol {symbol}")
    label = str(details.get("name_label") or details["name"])
    interval = grid_interval(details)
    if interval is None:
        return GridSymbol(symbol, label=label, error=f"{symbol} offers no interval")
    source = str(details["source"])
    if hub.supervisor.get(source) is None:
        return GridSymbol(symbol, label=label, error=f"provider {source!r} is not enabled")
    key = SeriesId(source, str(details["name"]), interval)
    if not may_read(key):  # the caller's token limits its sources or symbols
        return GridSymbol(symbol, label=label, error=f"no permission to read {symbol}")
    return GridSymbol(symbol, key, label)


def _unknown(item: GridSymbol) -> bool:
    return item.key is None and item.label is None


async def resolve_grid_symbols(hub: Hub, pieces: Sequence[str]) -> list[GridSymbol]:
    """The rows of the pieces :func:`split_symbols` cut a symbol list into, in order.

    Workspace joins a multi-select's values with commas, so a name that has a comma in it
    (a CSV file ``A,B.csv`` is ``csv:A,B``, offered by the symbol dropdown like any other)
    arrives as the pieces ``csv:A`` and ``B``. A piece that names no symbol is tried with
    the ones after it joined back by commas (up to :data:`MAX_JOINED_PIECES` pieces); the
    first join that names a symbol is one row, whose id is that joined text. A piece that is
    a symbol by itself stays one."""
    items = list(await asyncio.gather(*(resolve_grid_symbol(hub, s) for s in pieces)))
    rows: dict[str, GridSymbol] = {}
    i = 0
    while i < len(items):
        item, used = items[i], 1
        if _unknown(item):
            for count in range(2, min(MAX_JOINED_PIECES, len(items) - i) + 1):
                joined = await resolve_grid_symbol(hub, ",".join(pieces[i : i + count]))
                if not _unknown(joined):
                    item, used = joined, count
                    break
        rows.setdefault(item.symbol, item)
        i += used
    return list(rows.values())


async def grid_row(hub: Hub, item: GridSymbol) -> dict[str, Any]:
    if item.key is None:
        return build_row(item.symbol, item.label, [], item.error)
    answer = await hub.planner.latest(item.key, 2, hub.subs.has(item.key))
    problem = str(answer.error) if answer.error is not None and not answer.bars else None
    return build_row(item.symbol, item.label, answer.bars, problem)
