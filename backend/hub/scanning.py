"""Scans at the hub: ``scan`` starts one per client, ``scan_stop`` (or leaving) stops it.

The universe is the symbol index's answer to the scan's ``search`` (at most
:data:`~backend.symbols.index.MAX_SEARCH_LIMIT` rows). Bars come through the history planner
(cache, then store, then the provider's normal path and budget), so a scan shares what charts
already loaded and never opens a socket to itself. A client runs one scan at a time (a new
``scan`` stops its previous one); at most ``MAX_SCANS`` run on the server, and all of them
together evaluate at most ``SYMBOLS_AT_ONCE`` symbols at once, so streaming keeps the loop.

Owns the running scans and their tasks. Not: rules and evaluation
(``backend.indicators.scanner``), parsing (``backend.indicators.messages``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from backend import tasks
from backend.alerts.model import series_of
from backend.errors import ProtocolError
from backend.hub.clients import Client
from backend.indicators import messages
from backend.indicators.scanner import ScanLimits, Symbol, bind_rules, run_scan
from backend.model.bars import Bar, SeriesId
from backend.symbols.index import MAX_SEARCH_LIMIT
from backend.wire import protocol

if TYPE_CHECKING:
    from backend.hub.hub import Hub
    from backend.hub.indicating import Indicating

logger = logging.getLogger(__name__)
# The line each scan ends with (bounded like the per-connection lines: backend.logs)
SCAN_DONE_LINE = "client %d: scan %r: %d of %d matched (%d skipped%s)"

MAX_SCANS = 8  # scans running at once on the server (one per client at most)
SYMBOLS_AT_ONCE = 8  # symbols evaluated at once by all scans together
PER_SCAN = 4  # symbols one scan evaluates at once
STOP_WAIT_SECONDS = 5.0  # a new scan waits at most this long for the end of the previous


class Scanning:
    """The running scans of one hub, one per client at most."""

    def __init__(self, hub: Hub, indicating: Indicating) -> None:
        self.hub = hub
        self.indicating = indicating
        self.limit = asyncio.Semaphore(SYMBOLS_AT_ONCE)
        self.limits = ScanLimits(per_scan=PER_SCAN, max_bars=hub.settings.MAX_COUNT)
        self.running: dict[int, asyncio.Event] = {}
        self._tasks: tasks.Tasks = set()
        self._scans: dict[int, asyncio.Task[Any]] = {}  # each client's last scan task

    async def start(self, client: Client, request: messages.ScanRequest, raw: Any) -> None:
        """Stop the client's running scan and wait for its last messages ("Stopped: ...",
        ``scan_done``), then scan ``request.search``'s universe: a client never gets the
        end of one scan among the messages of the next."""
        self.stop(client.id)
        previous = self._scans.pop(client.id, None)
        if previous is not None and not previous.done():
            # the scan stops at once (its workers are cancelled); bounded all the same
            await asyncio.wait([previous], timeout=STOP_WAIT_SECONDS)
        try:
            await self._check(request)
            if len(self.running) >= MAX_SCANS:
                raise ProtocolError("limit_reached", f"{MAX_SCANS} scans are running; try later")
        except ProtocolError as exc:
            if client.id in self.hub.clients:
                self.indicating.refuse(client, raw, exc)
            return
        if client.id not in self.hub.clients:
            return  # gone while its rules were checked
        stop = asyncio.Event()
        self.running[client.id] = stop
        self._scans[client.id] = tasks.start_owned(
            self._tasks,
            self._run(client, request, stop),
            f"scan of client {client.id}",
            lambda error: self._failed(client),
        )

    async def _check(self, request: messages.ScanRequest) -> None:
        """Refuse a scan that would fail for every symbol: an indicator that cannot be
        bound or reads more than ``MAX_COUNT`` bars, or a series its rules name for every
        symbol (not the template's, which each symbol replaces) that cannot be served:
        ``ProtocolError`` with its code, and no provider is asked for it."""
        bind_rules(request.rules, self.indicating.indicators, self.limits.max_bars)
        for key in series_of(request.rules):
            if request.template is None or (key.source, key.name) != request.template:
                await self.hub.requests.validate(key)

    def stop(self, client_id: int) -> None:
        """Stop the scan of ``client_id`` at once (``scan_stop``, a new scan, leaving)."""
        stop = self.running.pop(client_id, None)
        if stop is not None:
            stop.set()

    async def stop_all(self) -> None:
        for client_id in list(self.running):
            self.stop(client_id)
        await tasks.cancel_owned(self._tasks)

    async def _run(
        self, client: Client, request: messages.ScanRequest, stop: asyncio.Event
    ) -> None:
        try:
            universe = await self._universe(request.search)
            outcome = await run_scan(
                request.rules,
                request.template,
                universe,
                self._fetch,
                self.indicating.indicators,
                lambda message: self._emit(client, message),
                stop,
                self.limit,
                self.limits,
            )
            logger.info(
                SCAN_DONE_LINE,
                client.id,
                request.search,
                outcome.matched,
                outcome.total,
                len(outcome.skipped),
                ", stopped" if outcome.stopped else "",
            )
        finally:
            if self.running.get(client.id) is stop:
                del self.running[client.id]
            if self._scans.get(client.id) is asyncio.current_task():
                del self._scans[client.id]

    async def _universe(self, search: str) -> list[Symbol]:
        found = await self.hub.search_symbols(search, MAX_SEARCH_LIMIT)
        return [
            Symbol(row["details"]["source"], row["details"]["name"], row)
            for row in found
            if isinstance(row.get("details"), dict)
        ]

    async def _fetch(self, series: SeriesId, count: int) -> Sequence[Bar]:
        """The last ``count`` bars of ``series``: cache, store, then the provider; checked
        as a ``data`` request is first (``ProtocolError``, the symbol skipped: a symbol that
        does not offer the scan's interval is never asked of its provider)."""
        hub = self.hub
        await hub.requests.validate(series)
        await asyncio.sleep(0)  # cached bars never wait: give streaming its turn anyway
        answer = await hub.planner.latest(series, count, hub.subs.has(series))
        if answer.error is not None and not answer.bars:
            raise answer.error
        return answer.bars

    def _emit(self, client: Client, message: dict[str, Any]) -> None:
        if client.id in self.hub.clients:
            self.hub.send(client, protocol.encode(message))

    def _failed(self, client: Client) -> None:
        """The scan task raised (a bug, logged by its owner; ``run_scan`` already sent the
        final ``scan_progress`` and ``scan_done``): the client is told."""
        self.hub.metrics.inc("candlewire_internal_errors_total")
        if client.id in self.hub.clients:
            message = "the scan failed; it was logged"
            self.hub.send(client, protocol.error_message("internal_error", message))
