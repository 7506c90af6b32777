"""Client requests at ``/websocket/``: their effects in order, their replies as jobs.

:meth:`Requests.take_frame` goes through a frame's requests one after another and applies
what each changes at once, in the order sent: a ``data`` request subscribes (after its
symbol is validated), an ``unsubscribe`` unsubscribes. The endpoint calls it for one frame
at a time, so the subscriptions of a client are what processing its requests in order
gives. Replies that need I/O run as the client's reply jobs (:class:`~.clients.Replies`):
everything about one series key (``data_init``, ``data_history``, ``unsubscribed`` and the
errors of those requests) in one lane, searches in another, so replies of one kind come in
the order of their requests. ``pong``, ``search_indicators_done`` and the errors of requests
that do not name a key are sent at once. Indicator requests are parsed by
:mod:`backend.indicators.messages` and answered by ``indicating`` (``indicator`` in the lane
of its first series, so after that key's ``data_init``) and ``scanning``.

Owns request semantics. Not: who is subscribed (``subscriptions``), the provider commands
(``upstream``), fan-out (``fanout``), history (``history.planner``), the socket (``ws``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from backend.errors import ProtocolError, ProviderError, StorageError
from backend.history.encoded import Encoded
from backend.history.planner import Answer
from backend.hub.clients import Client
from backend.hub.subscriptions import Change
from backend.indicators import messages
from backend.model.bars import SeriesId, WireKeys
from backend.ratelimits import WorkBudget
from backend.wire import protocol, requests

if TYPE_CHECKING:
    from backend.hub.hub import Hub

logger = logging.getLogger(__name__)

SEARCH_LIMIT = 100
SEARCH_LANE = ("search",)
FRAME_LANE = ("frame",)  # replies sent at once, but held behind a frame's data items
DETAILS_CACHE_SIZE = 10_000
FRAMES_METRIC = "candlewire_history_frames_total"
BUDGET_FROM = 100  # bars: a connection keeps a history budget once it asked for as many
# The longest the data_init answered at once may hold the loop in one go (a frame of 100
# requests of series in memory, none of their frames encoded yet): then reply jobs again.
AT_ONCE_SECONDS = 0.002

Details = dict[str, Any]
# The empty reply a refused request still gets.
EMPTY_REPLIES: dict[type, str] = {
    protocol.DataRequest: "data_init",
    protocol.HistoryRequest: "data_history",
}


def key_lane(key: SeriesId) -> tuple[str, SeriesId]:
    return ("series", key)


class Requests:
    """Answers the requests of every client of one hub."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._details: dict[tuple[str, str], Details | None] = {}
        hub.metrics.describe(
            FRAMES_METRIC,
            "data_init/data_history frames: cached (sent as built), spliced (cached closed "
            "bars, newest bar encoded) or encoded (built from the bars)",
        )
        self.paced = 0  # history replies that waited for their client's budget
        self._taken_at = 0.0  # when the frame being taken was (perf_counter)
        hub.metrics.counter(
            "candlewire_history_paced_total",
            lambda: self.paced,
            "history replies (data_init, data_history, indicator_init, indicator_history) that "
            "waited because their connection was over HISTORY_BARS_PER_SECOND",
        )
        hub.metrics.gauge(
            "candlewire_history_frame_bytes",
            hub.cache.encoded_bytes,
            "bytes of encoded history frames kept (counted in CACHE_MAX_BARS)",
        )

    async def take_frame(self, client: Client, text: str | bytes) -> None:
        """Apply one frame's requests in order, the extensions' (indicators, scans, alerts,
        chat) after the others (:func:`core_first`); their I/O replies follow as jobs. In a
        frame that mixes ``data`` items with others, every reply of a ``data`` item comes
        before the replies of the others (protocols.md 1.12 (4)), while what each request
        changes (subscriptions) still follows the order sent: the core requests' replies are
        held and started ``data`` first (:meth:`Replies.defer`), and the extensions are
        taken once the ``data`` items are answered."""
        settings = self.hub.settings
        self._taken_at = time.perf_counter()
        wait = self.hub.admit_frame() if self.hub.admit_frame is not None else 0.0
        requests = protocol.parse_frame(text, settings.MAX_REQUESTS_PER_FRAME, settings.MAX_COUNT)
        ordered = core_first(requests)
        # the ids of the requests that an item after them in the frame undoes
        taken_back = _taken_back_in_frame(requests) if ordered is not requests else set()
        if not _mixed(ordered):
            await self._take_all(client, ordered, wait, taken_back)
            return
        extensions = [r for r in ordered if isinstance(r, _EXTENSIONS)]
        replies = client.replies
        replies.defer()
        try:
            for request in ordered[: len(ordered) - len(extensions)]:
                replies.first = _data_item(request)
                await self._take_all(client, [request], wait, taken_back)
        finally:
            firsts = await replies.flush()
        if extensions:
            pending = [task for task in firsts if not task.done()]
            if pending:
                await asyncio.wait(pending)
            await self._take_all(client, extensions, wait, taken_back)

    async def _take_all(
        self,
        client: Client,
        requests: Sequence[protocol.Request],
        wait: float,
        taken_back: set[int],
    ) -> None:
        for request in requests:
            if client.id not in self.hub.clients:
                return
            if wait > 0:  # over the caller's request rate: refused, the socket stays open
                await self._over_rate(client, request, wait)
            else:
                await self._take(client, request, id(request) in taken_back)

    async def _now(self, client: Client, send: Callable[[], None]) -> None:
        """``send()`` now, or in its turn when the client's replies are held (a frame that
        mixes ``data`` items with others: after theirs). A ``data`` item's (refused before
        it named a key) is sent at once: the others of its frame are held."""
        if not client.replies.deferring or client.replies.first:
            send()
            return

        async def reply() -> None:
            send()

        await client.replies.submit(FRAME_LANE, reply)

    async def _over_rate(self, client: Client, request: protocol.Request, wait: float) -> None:
        """Answer ``rate_limited`` (and the empty reply a series request asked for) in the
        request's turn, as every refusal."""
        series: SeriesId | None = getattr(request, "series", None)
        reply_type = EMPTY_REPLIES.get(type(request), getattr(request, "reply_type", None))
        self.hub.metrics.inc("candlewire_request_errors_total", code="rate_limited")

        def send() -> None:
            self.hub.send(client, protocol.rate_limited_message(wait, request.raw))
            if series is not None and reply_type is not None:
                self.hub.send(client, protocol.series_message(reply_type, series, []))

        async def reply() -> None:
            send()

        if series is None:
            await self._now(client, send)
        else:
            await client.replies.submit(key_lane(series), reply)

    async def _take(self, client: Client, request: protocol.Request, taken_back: bool) -> None:
        hub = self.hub
        match request:
            case protocol.DataRequest():
                await self._data(client, request)
            case protocol.HistoryRequest(key):
                await client.replies.submit(
                    key_lane(key), lambda: self._history(client, request), request
                )
            case protocol.SearchRequest(search):
                await client.replies.submit(
                    SEARCH_LANE, lambda: self._search(client, search), request
                )
            case protocol.IndicatorsRequest(raw):
                await self._indicators(client, raw, taken_back)
            case protocol.AlertRequest(raw):
                await hub.alerting.take(client, raw)
            case protocol.ChatRequest(raw):
                await hub.chatting.take(client, raw)
            case protocol.UnsubscribeRequest(key, raw):
                reply = self._unsubscribe(client, key, raw, taken_back)
                await client.replies.submit(key_lane(key), lambda: self._send(client, reply))
            case protocol.PingRequest(raw):
                pong = protocol.encode({"type": "pong", "id": raw.get("id")})
                await self._now(client, lambda: hub.send(client, pong))
            case protocol.BadRequest():
                await self._refuse(client, request)

    # ------------------------------------------------------------------ data

    async def _data(self, client: Client, request: protocol.DataRequest) -> None:
        key = request.series
        found = await self._validate(key, request.raw, "data_init")
        if client.id not in self.hub.clients:
            return  # left (or was closed) while the symbol was looked up
        if isinstance(found, protocol.BadRequest):
            await self._refuse(client, found)
            return
        notes: list[bytes] = []
        subscribed: int | None = None
        if request.capped:
            notes.append(protocol.capped_message(self.hub.settings.MAX_COUNT, request.raw))
        if request.stream and self._over_subscription_limit(client, key):
            limit = self.hub.settings.MAX_SUBSCRIPTIONS_PER_CLIENT
            notes.append(
                protocol.error_message(
                    "limit_reached",
                    f"at most {limit} subscriptions per connection; this one is not streamed",
                    request.raw,
                )
            )
        elif request.stream and (refusal := self._over_caller_limit(client, key)):
            notes.append(protocol.error_message("limit_reached", refusal, request.raw))
        elif request.stream:
            self.hub.subscribe(client, key)
            subscribed = self.hub.subs.since(client.id, key)
        if not notes and self._data_init_now(client, request, found, subscribed):
            return
        await client.replies.submit(
            key_lane(key),
            lambda: self._data_init(client, request, found, notes, subscribed),
            request,
        )

    async def _data_init(
        self,
        client: Client,
        request: protocol.DataRequest,
        details: Details,
        notes: list[bytes],
        subscribed: int | None,
    ) -> None:
        """Send the ``data_init``; its updates start with it when ``request`` subscribed
        (``subscribed``: the stamp of the subscription it made or found,
        :meth:`Subscriptions.since`) and the client still holds the key by that
        subscription. Not when the client holds the key only by a later request (a
        ``stream: false`` or ``limit_reached`` item followed by a ``data`` of the key, or one
        that subscribed, was unsubscribed and subscribed again): that request's own
        ``data_init``, still to come in the key's lane, starts them, and a ``data_update``
        between the two would come before the reply of the request that subscribed (or
        after the ``unsubscribed`` that stopped the key)."""
        hub = self.hub
        key = request.series
        for note in notes:
            hub.send(client, note)
        await self.pace(client, request.count)
        answer = await hub.planner.latest(key, request.count, hub.subs.has(key))
        if client.id not in hub.clients:
            return
        async with client.outbox.room():  # paced by the client's reading
            if client.id not in hub.clients:
                return
            answer = answer.as_of_now()  # the updates merged while it waited for room
            self._send_data_init(client, request, details, answer, subscribed)

    def _data_init_now(
        self,
        client: Client,
        request: protocol.DataRequest,
        details: Details,
        subscribed: int | None,
    ) -> bool:
        """Send the ``data_init`` now, without a reply job, when nothing would make
        :meth:`_data_init` wait: no reply of the client pending (none before it in the key's
        lane, none holding the outbox), the bars in memory (:meth:`HistoryPlanner.answer_now`),
        the outbox under half its limit and the client within its history budget. A
        page-load storm of cached series then costs no task per request. Not once the frame
        has held the loop for ``AT_ONCE_SECONDS``. False: not sent."""
        hub = self.hub
        replies = client.replies
        if len(replies) or replies.deferring or not client.outbox.room_now():
            return False
        if time.perf_counter() - self._taken_at > AT_ONCE_SECONDS:
            return False  # the loop was held long enough: the others' turn (a reply job)
        if not self._within_budget(client, request.count):
            return False
        key = request.series
        answer = hub.planner.answer_now(key, request.count, hub.subs.has(key))
        if answer is None:
            return False
        self._charge(client, request.count)
        try:
            self._send_data_init(client, request, details, answer, subscribed)
        except Exception as error:  # noqa: BLE001 - as a failed reply job: logged, answered
            replies.failed(error, request)
        return True

    def _send_data_init(
        self,
        client: Client,
        request: protocol.DataRequest,
        details: Details,
        answer: Answer,
        subscribed: int | None,
    ) -> None:
        """Send the ``data_init`` of ``answer`` and start the key's updates (:meth:`_data_init`)."""
        hub = self.hub
        key = request.series
        wire = hub.fanout.wire_keys(key, details)
        frame, encoded = self.encoded_frame("data_init", answer, wire, details, key)
        hub.send_frame(client, frame)
        self.settle(client, encoded - request.count)
        if answer.error is not None:
            self._provider_error(client, answer.error, request.raw)
        if hub.subs.holds(client.id, key):
            # The provider's errors about the key that came meanwhile (not one that repeats
            # the answer's own error: one error per request). Only for a holder: what it
            # keeps per (client, key) goes when the client lets the key go.
            error = answer.error
            code = None if error is None else getattr(error, "code", "provider_error")
            hub.fanout.init_sent(client, key, code)
            if subscribed is not None and hub.subs.since(client.id, key) == subscribed:
                newest = answer.bars[-1][0] if answer.bars else None
                hub.fanout.start_delivery(client, key, newest)

    async def _history(self, client: Client, request: protocol.HistoryRequest) -> None:
        hub = self.hub
        key = request.series
        found = await self._validate(key, request.raw, "data_history")
        if isinstance(found, protocol.BadRequest):
            self._bad_request(client, found)
            return
        if request.capped:
            hub.send(client, protocol.capped_message(hub.settings.MAX_COUNT, request.raw))
        await self.pace(client, request.count)
        answer = await hub.planner.before(key, request.end, request.count)
        if client.id not in hub.clients:
            return
        wire = hub.fanout.wire_keys(key, found)
        async with client.outbox.room():  # paced by the client's reading
            if client.id not in hub.clients:
                return
            frame, encoded = self.encoded_frame(
                "data_history", answer, wire, None, key, request.end
            )
            hub.send_frame(client, frame)
        self.settle(client, encoded - request.count)
        if answer.error is not None:
            self._provider_error(client, answer.error, request.raw)

    async def pace(self, client: Client, count: int) -> None:
        """Wait while ``client`` is over its history budget (``HISTORY_BARS_PER_SECOND``,
        ``HISTORY_BARS_BURST``), then charge it the ``count`` bars asked for (the reply
        settles the difference: :meth:`settle`). ``indicating`` paces its answers
        the same way, by their rows. One connection asking for all the history
        it can read would hold the hub's loop, and every other client would wait on it.
        Only this client's history replies wait (each in its lane, so its pings, its
        streaming and its other replies go on, as long as the reader gets a reply slot:
        behind ``MAX_REPLIES_IN_FLIGHT`` waiting replies its next frames wait too); nothing
        is refused. A connection that
        asked for fewer than :data:`BUDGET_FROM` bars in all keeps no budget (a live grid's
        one-bar requests); its small requests are counted until they add up to it."""
        settings = self.hub.settings
        rate = settings.HISTORY_BARS_PER_SECOND
        if rate <= 0 or (client.budget is None and client.small_bars + count < BUDGET_FROM):
            self._charge(client, count)
            return
        budget = client.budget
        if budget is None:
            client.small_bars += count
            budget = client.budget = WorkBudget(rate, settings.HISTORY_BARS_BURST, time.monotonic())
        wait = budget.wait(time.monotonic())
        if wait > 0:
            self.paced += 1
            budget.waits += 1
            if budget.waits == 1:  # once a socket: each wait is counted, not logged
                logger.warning(
                    "client %d (%s) is over its history budget (%g bars/s): its history "
                    "replies wait",
                    client.id,
                    client.peer,
                    rate,
                )
        while wait > 0 and client.id in self.hub.clients:
            await asyncio.sleep(wait)
            wait = budget.wait(time.monotonic())
        budget.charge(count, time.monotonic())

    def _within_budget(self, client: Client, count: int) -> bool:
        """Whether :meth:`pace` would let a reply of ``count`` bars go at once."""
        rate = self.hub.settings.HISTORY_BARS_PER_SECOND
        budget = client.budget
        if rate <= 0:
            return True
        if budget is None:
            return client.small_bars + count < BUDGET_FROM
        return budget.wait(time.monotonic()) <= 0

    def _charge(self, client: Client, count: int) -> None:
        """Charge a reply of ``count`` bars that :meth:`_within_budget` let go at once."""
        if self.hub.settings.HISTORY_BARS_PER_SECOND <= 0:
            return
        if client.budget is None:
            client.small_bars += count
        else:
            client.budget.charge(count, time.monotonic())

    def settle(self, client: Client, bars: int) -> None:
        """Charge ``bars`` more (fewer, when negative) than :meth:`pace` did."""
        if client.budget is not None and bars:
            client.budget.charge(bars, time.monotonic())

    def encoded_frame(
        self,
        kind: str,
        answer: Answer,
        wire: WireKeys,
        metadata: Details | None,
        key: SeriesId,
        end: int | None = None,
    ) -> tuple[bytes, int]:
        """The frame of ``protocol.series_message(kind, key, bars, metadata)`` for the
        answer's bars, and how many bars had to be encoded for it: the cached frame of the
        same window when the series has not changed since it was built (none), the cached
        closed bars with the newest bar spliced in when only that bar changed (one), else
        built and cached (all of them; :mod:`backend.history.encoded`)."""
        bars, series = answer.bars, answer.series
        head = protocol.series_head(kind, key, metadata)
        window = (head, wire.kind, len(bars), end)
        entry = series.encoded.get(window, answer.version, bars) if series is not None else None
        metrics = self.hub.metrics
        if entry is not None and (not bars or entry.last == bars[-1]):
            metrics.inc(FRAMES_METRIC, frame="cached")
            return entry.frame, 0
        last = protocol.datapoints_json(wire, bars[-1:])
        if entry is not None and series is not None:
            start = memoryview(entry.frame)[entry.body_start : entry.closed_stop]
            frame = protocol.series_frame((start,), len(bars) > 1, last)[0]
            series.encoded.replace_frame(window, entry, bars[-1], frame)
            metrics.inc(FRAMES_METRIC, frame="spliced")
            return frame, 1
        metrics.inc(FRAMES_METRIC, frame="encoded")
        closed = protocol.datapoints_json(wire, bars[:-1])
        frame, body_start, closed_stop = protocol.series_frame((head, closed), len(bars) > 1, last)
        if series is not None and series.version == answer.version:  # not an older answer's
            first_t = bars[0][0] if bars else None
            built = Encoded(
                answer.version,
                len(bars),
                first_t,
                bars[-1] if bars else None,
                frame,
                body_start,
                closed_stop,
            )
            series.encoded.put(window, built)
            self.hub.enforce_memory()
        return frame, len(bars)

    async def _search(self, client: Client, search: str) -> None:
        results = await self.hub.search_symbols(search, SEARCH_LIMIT)
        self.hub.send(client, protocol.search_done(search, results))

    # ------------------------------------------------------------------ indicators, scans

    async def _indicators(
        self, client: Client, raw: dict[str, Any], taken_back: bool = False
    ) -> None:
        """``search_indicators`` at once; ``indicator`` and ``indicator_history`` in the lane
        of their first series (after that key's ``data_init`` / ``data_history``), not
        streamed when ``taken_back`` (an ``unsubscribe`` of its series after it in its frame:
        :func:`_taken_back_in_frame`); ``scan`` and ``scan_stop`` at once (a scan runs as its
        own task)."""
        hub = self.hub
        try:
            request = messages.parse_request(raw)
        except ProtocolError as exc:
            hub.indicating.refuse(client, raw, exc)
            return
        match request:
            case messages.SearchIndicators(search):
                hub.send(client, hub.indicating.search(search))
            case messages.IndicatorRequest():
                if taken_back:
                    request = dataclasses.replace(request, stream=False)
                lane = key_lane(request.config.bindings[0].series)
                ticket = hub.indicating.expect_stream(client.id, request)
                await client.replies.submit(
                    lane, lambda: hub.indicating.answer(client, request, raw, ticket), raw
                )
            case messages.ScanRequest():
                await hub.scanning.start(client, request, raw)
            case messages.ScanStop():
                hub.scanning.stop(client.id)

    # ------------------------------------------------------------------ unsubscribe

    def _unsubscribe(
        self, client: Client, key: SeriesId, raw: Any, took_back: bool = False
    ) -> bytes:
        """Unsubscribe now; returns the reply to send in the key's turn (``unsubscribed``
        also when all it stops is a streamed ``indicator`` before it in its frame, which is
        taken after it: ``took_back``)."""
        if self.hub.unsubscribe(client, key) is Change.ABSENT and not took_back:
            return protocol.error_message("not_subscribed", f"not subscribed to {key}", raw)
        return protocol.encode(
            {
                "type": "unsubscribed",
                "source": key.source,
                "name": key.name,
                "interval": key.interval,
            }
        )

    # ------------------------------------------------------------------ errors

    async def _send(self, client: Client, message: bytes) -> None:
        self.hub.send(client, message)

    async def _refuse(self, client: Client, bad: protocol.BadRequest) -> None:
        """Answer a bad request: at once, or in its key's turn when it names a key."""
        if bad.series is None:
            await self._now(client, lambda: self._bad_request(client, bad))
            return

        async def reply() -> None:
            self._bad_request(client, bad)

        await client.replies.submit(key_lane(bad.series), reply)

    def _bad_request(self, client: Client, bad: protocol.BadRequest) -> None:
        self.hub.metrics.inc("candlewire_request_errors_total", code=bad.code)
        self.hub.send(client, protocol.error_message(bad.code, bad.message, bad.raw))
        if bad.reply_type is None:
            return
        if bad.series is not None:
            self.hub.send(client, protocol.series_message(bad.reply_type, bad.series, []))
        elif isinstance(bad.raw, dict):
            self.hub.send(client, protocol.empty_reply(bad.reply_type, bad.raw))

    def _provider_error(
        self, client: Client, error: ProviderError | StorageError, raw: Any
    ) -> None:
        code = getattr(error, "code", "provider_error")
        self.hub.metrics.inc("candlewire_request_errors_total", code=code)
        self.hub.send(client, protocol.error_message(code, str(error), raw))

    # ------------------------------------------------------------------ validation

    async def validate(self, key: SeriesId) -> Details:
        """The symbol's dataset row; ``ProtocolError`` when ``key`` cannot be served."""
        hub = self.hub
        limits = requests.Limits(hub.supervisor.providers, hub.settings.MAX_COUNT, hub.may_read)
        return await requests.validate_series(key, None, limits, self._lookup)

    async def _validate(
        self, key: SeriesId, raw: Any, reply_type: str
    ) -> Details | protocol.BadRequest:
        """The symbol's dataset row, or the bad request to answer instead (the same checks
        as REST, UDF and OpenBB: :func:`backend.wire.requests.validate_series`)."""
        hub = self.hub
        limits = requests.Limits(hub.supervisor.providers, hub.settings.MAX_COUNT, hub.may_read)
        try:
            return await requests.validate_series(key, None, limits, self._lookup)
        except ProtocolError as exc:
            return protocol.BadRequest(exc.code, exc.message, raw, key, reply_type)

    async def _lookup(self, source: str, name: str) -> Details | None:
        cache_key = (source, name)
        if cache_key in self._details:
            return self._details[cache_key]
        details: Details | None = await self.hub.symbols.details(source, name)
        if details is None:
            return None  # not cached: a populate may add it while the server runs
        if len(self._details) >= DETAILS_CACHE_SIZE:
            self._details.clear()
        self._details[cache_key] = details
        return details

    def _over_caller_limit(self, client: Client, key: SeriesId) -> str | None:
        """Why the caller (over all its connections) may not add ``key``, or None."""
        admit = self.hub.admit_subscription
        if admit is None or key in self.hub.subs.keys_of(client.id):
            return None
        return admit(client.id)

    def _over_subscription_limit(self, client: Client, key: SeriesId) -> bool:
        keys = self.hub.subs.keys_of(client.id)
        return key not in keys and len(keys) >= self.hub.settings.MAX_SUBSCRIPTIONS_PER_CLIENT


_EXTENSIONS = (protocol.IndicatorsRequest, protocol.AlertRequest, protocol.ChatRequest)


def _data_item(request: protocol.Request) -> bool:
    """Whether ``request`` is a ``data`` item, also one refused as it was parsed (a bad
    ``count`` or ``stream``, an unknown interval, no ``name``): its ``error`` and empty
    ``data_init`` are its answer, which comes before the frame's other replies too."""
    if isinstance(request, protocol.BadRequest):
        return request.reply_type == "data_init"
    return isinstance(request, protocol.DataRequest)


def _mixed(requests: list[protocol.Request]) -> bool:
    """Whether a frame has ``data`` items and others (whose replies then come after)."""
    data = sum(_data_item(request) for request in requests)
    return 0 < data < len(requests)


def _taken_back_in_frame(requests: list[protocol.Request]) -> set[int]:
    """The ids of a frame's streamed ``indicator`` items whose series an ``unsubscribe``
    later in the frame names, and of those unsubscribes. A frame's extensions are taken after
    its other items (:func:`core_first`), so the unsubscribe would find nothing to stop and
    the indicator would stream on; in the order sent, it subscribed and then was stopped."""
    streamed: list[tuple[int, frozenset[SeriesId]]] = []
    taken_back: set[int] = set()
    if not any(isinstance(request, protocol.UnsubscribeRequest) for request in requests):
        return taken_back  # (the usual frame: its indicators are not parsed twice)
    for request in requests:
        if isinstance(request, protocol.IndicatorsRequest):
            try:
                parsed = messages.parse_request(request.raw)
            except ProtocolError:
                continue
            if isinstance(parsed, messages.IndicatorRequest) and parsed.stream:
                series = frozenset(binding.series for binding in parsed.config.bindings)
                streamed.append((id(request), series))
        elif isinstance(request, protocol.UnsubscribeRequest):
            stopped = [item for item, series in streamed if request.series in series]
            if stopped:
                taken_back.update(stopped)
                taken_back.add(id(request))
    return taken_back


def core_first(requests: list[protocol.Request]) -> list[protocol.Request]:
    """A frame's requests with the extensions' (indicators, scans, alerts, chat) moved after
    the others, each group in its order: Tradiny answers every ``data`` item of a frame
    first (protocols.md 1.12), so an ``indicator`` sent before the ``data`` of its series
    comes after that ``data_init``. The core requests (``data``, ``data_history``,
    ``unsubscribe``, ...) keep their order among themselves, and so the subscriptions
    that order gives."""
    if not any(isinstance(request, _EXTENSIONS) for request in requests):
        return requests
    core = [r for r in requests if not isinstance(r, _EXTENSIONS)]
    return core + [r for r in requests if isinstance(r, _EXTENSIONS)]
