"""Fan-out of live bars: merge each update into the cache, persist what it settled, encode it
once, and push it into the outbox of every client it is delivered to.

Owns the delivery map (which clients get ``data_update`` frames of a key: a subscriber
starts getting them once its ``data_init`` was sent), the provider errors that wait for a
subscriber's ``data_init``, and the per-key wire names and update encoders. Never awaits a
client's socket. Not owned: who is subscribed (``subscriptions``), the processes
(``runtime.supervisor``), the cache itself (``history.cache``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from backend.history.cache import BarCache, Series
from backend.hub.clients import Client
from backend.hub.handles import ProviderSet
from backend.hub.listeners import Listeners
from backend.hub.metrics import Metrics
from backend.hub.subscriptions import Subscriptions
from backend.model import intervals
from backend.model.bars import MAX_TIME, MIN_TIME, Bar, SeriesId, WireKeys, flaw
from backend.runtime.clocks import Clocks, far_behind
from backend.runtime.messages import Changed, Clock, Missed, Notice, Status, WireEvent
from backend.wire import protocol
from backend.wire.frames import text_frame

if TYPE_CHECKING:
    from backend.history.store import BarStore

logger = logging.getLogger(__name__)

Kick = Callable[[Client, str], None]
CONFIRMING_UPDATES = 3  # updates in a row that make a far-ahead bar the newest after all
# A provider's error about a key that comes this long after a client's data_init of the key
# carried an error of the same code says the same again (the -1121 of a delisted symbol
# both fails its history call and stops its stream): not sent to that client.
REPEAT_SECONDS = 10.0
# Keys with live indicators that wait for the end of a provider's wakeup (``begin_wakeup``)
# at most: more are settled at the end of the slice that brought them (about 5 ms of work).
SETTLE_KEYS = 100


class Fanout:
    """Provider events in, client frames and listener calls out."""

    def __init__(
        self,
        cache: BarCache,
        subs: Subscriptions,
        listeners: Listeners,
        clocks: Clocks,
        metrics: Metrics,
        store: BarStore | None,
        kick: Kick,
    ) -> None:
        self.cache = cache
        self.subs = subs
        self.listeners = listeners
        self.clocks = clocks
        self.metrics = metrics
        self.store = store
        self.kick = kick
        self.providers: ProviderSet | None = None  # set by the hub once it has them
        self.deliver: dict[SeriesId, dict[int, Client]] = {}
        # The open time of the newest bar of each delivered client's data_init (key -> client
        # id -> time; none: it had no bar): with ``Series.sent_t``, where its chart ends.
        self._init_newest: dict[SeriesId, dict[int, int]] = {}
        # bumped by every change to ``deliver`` (only start_delivery and stop_delivery make
        # them): what was derived from it holds while this stays the same
        self.deliver_changes = 0
        self._wire: dict[SeriesId, WireKeys] = {}
        self._updates: dict[SeriesId, protocol.UpdateEncoder] = {}
        self._delivered = 0  # updates handed to outboxes in the current provider batch
        # Keys with live indicators (``watches``) that got a newest bar in this batch, with
        # the time of the first such bar; the hub's ``after_updates`` computes their
        # indicators once, after the data_updates (and the bar that closed meanwhile, if any).
        self.watches: Callable[[SeriesId], bool] = lambda key: False
        self.client_of: Callable[[int], Client | None] = lambda client_id: None  # the hub's
        self.after_updates: Callable[[dict[SeriesId, int]], None] | None = None
        self._touched: dict[SeriesId, int] = {}
        # With ``hold_back`` (set with ``after_updates``), the data_update frames of those
        # keys wait for the end of the batch, or of the provider's wakeup (``begin_wakeup``)
        # (key -> bar time -> the newest frame of that bar): ``after_updates`` takes those
        # it sends together with the indicator frames (``take_held``) or sends them first
        # (``release_held``); the rest go out after it.
        self.hold_back = False
        self._held: dict[SeriesId, dict[int, bytes]] = {}
        self._in_wakeup = False  # between begin_wakeup and end_wakeup
        # key -> (time, updates in a row) of a far-ahead bar not taken yet (``_confirmed``)
        self._suspects: dict[SeriesId, tuple[int, int]] = {}
        # Keys being refilled after a provider restart (``hub.refill``): their live bars
        # wait here (bar time -> the newest (bar, final)) and follow the refilled ones.
        self.refilling: dict[SeriesId, dict[int, tuple[Bar, bool]]] = {}
        # Keys refilled whose stream has not reached the refill's newest bar yet: key -> its
        # time. The stream's forming states of older bars meanwhile were read before the
        # refill's answer, which has those bars closed: dropped (``_on_bar``).
        self.catching_up: dict[SeriesId, int] = {}
        # Starts the refill of a key from its newest bar (the hub's ``Refills.start``); True
        # if one started. See ``_on_bar``: a bar that closed unseen by the stream.
        self.refill: Callable[[SeriesId], bool] = lambda key: False
        # The provider errors about a key for a subscribed client whose data_init is on its
        # way: (client id, key) -> [(code, frame)], sent after the data_init (``init_sent``)
        # unless they repeat its own error. And the code of the error a data_init carried,
        # with when: (client id, key) -> (code, monotonic time).
        self._waiting_notices: dict[tuple[int, SeriesId], list[tuple[str, bytes]]] = {}
        self._answered: dict[tuple[int, SeriesId], tuple[str, float]] = {}
        # Forgets what the cache holds of a symbol whose provider says its bars changed
        # (the hub's ``history_changed``): source, symbol.
        self.history_changed: Callable[[str, str], None] = lambda source, symbol: None

    # ------------------------------------------------------------------ delivery

    def start_delivery(self, client: Client, key: SeriesId, newest: int | None = None) -> None:
        """``client`` got its ``data_init`` of ``key``, whose newest bar opened at ``newest``
        (None: it had none): from now on it gets the updates."""
        self.deliver.setdefault(key, {})[client.id] = client
        self.deliver_changes += 1
        if newest is not None:
            self._init_newest.setdefault(key, {})[client.id] = newest
        elif key in self._init_newest:
            self._init_newest[key].pop(client.id, None)

    def stop_delivery(self, client_id: int, key: SeriesId) -> None:
        self._waiting_notices.pop((client_id, key), None)
        self._answered.pop((client_id, key), None)
        inits = self._init_newest.get(key)
        if inits is not None:
            inits.pop(client_id, None)
            if not inits:
                del self._init_newest[key]
        targets = self.deliver.get(key)
        if targets is not None:
            self.deliver_changes += 1
            targets.pop(client_id, None)
            if not targets:
                del self.deliver[key]

    def wire_keys(self, key: SeriesId, details: dict[str, Any]) -> WireKeys:
        """The wire column names of ``key`` (computed once per key)."""
        wire = self._wire.get(key)
        if wire is None:
            wire = self._wire[key] = WireKeys(key, str(details.get("type", "candlestick")))
        return wire

    def forget(self, key: SeriesId) -> None:
        """``key`` left the cache: drop its names and encoder."""
        self._wire.pop(key, None)
        self._updates.pop(key, None)
        self._suspects.pop(key, None)
        self.catching_up.pop(key, None)

    # ------------------------------------------------------------------ provider events

    def on_provider_events(self, source: str, events: list[WireEvent]) -> None:
        """Events from a provider process, in batches; the hot path of the hub."""
        bars = 0
        refilling = self.refilling
        for event in events:
            if type(event) is tuple:  # a bar update (ipc.WireBar)
                key = SeriesId(source, event[0], event[1])
                if refilling and key in refilling:
                    refilling[key][event[2][0]] = (event[2], event[3])
                    continue
                self._on_bar(key, event[2], event[3])
                bars += 1
                continue
            match event:
                case Clock():
                    self.clocks.set(source, event)
                case Notice(symbol, interval, code, message):
                    self.notify(SeriesId(source, symbol, interval), code, message)
                case Status(state, detail):
                    logger.info("provider %s status: %s %s", source, state, detail)
                case Changed(symbol):
                    self.history_changed(source, symbol)
                case Missed(symbol, interval, since):
                    self.missed(SeriesId(source, symbol, interval), since)
        if bars:
            self.metrics.inc("candlewire_bar_updates_total", bars, source=source)
            self.metrics.inc("candlewire_updates_delivered_total", self._delivered)
            self._delivered = 0
            provider = self.providers.get(source) if self.providers is not None else None
            if provider is not None:
                provider.last_update = time.time()
            if self._touched and (not self._in_wakeup or len(self._touched) >= SETTLE_KEYS):
                self.settle()

    def begin_wakeup(self) -> None:
        """A provider's pipe reader starts dispatching the slices of one wakeup: the keys
        with live indicators updated in them are computed, and their held ``data_update``
        sent, once at its end (:meth:`end_wakeup`), not after each slice: a key updated in
        several slices costs one computation and one push, and nothing is written to a
        socket before the wakeup ends anyway. At most :data:`SETTLE_KEYS` keys wait."""
        self._in_wakeup = True

    def end_wakeup(self) -> None:
        """The wakeup begun by :meth:`begin_wakeup` ended: settle what waits."""
        self._in_wakeup = False
        self.settle()

    def settle(self) -> None:
        """Compute the live indicators of the keys updated since the last time
        (``after_updates``) and send their held ``data_update`` frames."""
        if not self._touched:
            return
        touched, self._touched = self._touched, {}
        try:
            if self.after_updates is not None:
                self.after_updates(touched)
        finally:
            for key in list(self._held):
                self.release_held(key)

    def _on_bar(self, key: SeriesId, bar: Bar, final: bool = False) -> None:
        series = self.cache.peek(key)
        if series is None:
            if not self.subs.has(key):
                return
            series = self.cache.get(key)
        problem = flaw(bar)  # first: the checks after it write the bar's date in the log
        if problem is not None:
            self._drop(key, bar, f"with {problem}")
            return
        t = bar[0]
        if self.catching_up and not self._caught_up(key, t, final):
            return
        previous = series.newest
        if previous is not None and t > previous:
            if self.clocks.far_ahead(key, t, previous) and not self._confirmed(key, t):
                self._far_ahead(key, t)
                return
            if self._suspects:
                self._suspects.pop(key, None)
        elif (
            previous is not None
            and t < series.times[0]
            and far_behind(key, t, previous)
            and series.coverage.span_at(t) is None  # before all it holds, and unknown
        ):
            self._drop(key, bar, "opening far before the bars of the stream")
            return
        if previous is not None and t > previous and series.live_t != previous:
            # The stream opens a newer bar, but the bar before it was never updated by the
            # stream: it came from a history answer or the store while it was forming (a
            # data_init just before the bar closed, a stream that started just after), so
            # its final values never came. Its clients and the cache would keep the partial
            # bar as closed for good: refill from it (this update waits and follows it).
            series.live_t = previous  # once, also when the refill's history call fails
            if self.refill(key):
                self.refilling[key][t] = (bar, final)
                return
        newest = series.upsert(bar)
        series.live_seq += 1
        if newest:
            series.live_t = series.sent_t = t
        if (
            series.live
            and previous is not None
            and t > previous
            and series.coverage.span_at(previous - 1) is not None
        ):
            series.coverage.add(previous, t - 1)
        if series.loaded and series.persist and self.store is not None:
            self._store_live(series, bar, newest, previous, final)
        if newest:
            self.listeners.notify(key, bar)
            if self.watches(key):
                self._touched.setdefault(key, t)
                if self.hold_back:
                    self._hold_update(key, bar)
                    return
            self._push_update(key, bar)
        elif series.sent_t is None or t >= series.sent_t:
            self._push_behind(key, bar)

    def _push_behind(self, key: SeriesId, bar: Bar) -> None:
        """Send an update of a bar older than the newest in the cache, but not older than
        the newest bar the key's clients got as an update, to those whose chart ends at it
        or before it. A history answer (another client's ``data_init`` after a provider
        restart, while the refill of the key was under way) merged the bar closed and a newer
        one into the cache, unsent: the refill's final values of the bar, no longer the
        newest, were not sent either, and the charts that ended in it kept it half made for
        good. An update of a bar before the end of a chart is not sent (the front end looks
        for its date among its last bars, else appends it)."""
        targets = self.deliver.get(key)
        encoder = self._encoder(key) if targets else None
        if not targets or encoder is None:
            return
        t = bar[0]
        inits = self._init_newest.get(key, {})
        behind = {n: c for n, c in targets.items() if inits.get(n, t) <= t}
        if behind:
            self.push_frame(key, t, encoder.frame(bar), behind)
            self._delivered += len(behind)

    def _caught_up(self, key: SeriesId, t: int, final: bool) -> bool:
        """False for a forming state of a bar older than the newest bar of ``key``'s refill
        while its stream has not reached that bar (:attr:`catching_up`): read before the
        refill's answer, which has the bar closed (a replay's first tick, a state in flight
        when the answer was read), it would replace the closed bar in the cache and the
        store, unsent to the clients, and history would serve it half made."""
        behind = self.catching_up.get(key)
        if behind is None:
            return True
        if t >= behind:
            del self.catching_up[key]
            return True
        if final:
            return True  # the stream's final word on an older bar: a correction
        logger.debug(
            "%s: a forming state of %s, read before the refill that closed it: dropped",
            key,
            intervals.format_date(t),
        )
        return False

    def missed(self, key: SeriesId, since: int) -> None:
        """The provider's stream of ``key`` missed the bars from ``since`` on, not fetched
        (a reconnect's gap fill put off): nothing from ``since`` on counts as known any more,
        in memory and in the store, and the series is no longer live, so the live bars that
        follow the gap do not mark it known (the bar forming at the drop, stored with its
        partial values when the next one opens, is outside what is known too). The next
        request of that span (a ``data_init``, a history request, after a restart as well)
        asks the provider for it, and its answer makes the series live again."""
        series = self.cache.peek(key)
        if series is None:
            return
        logger.log(
            logging.INFO if series.live else logging.DEBUG,  # once, not at each retry
            "%s: the stream missed the bars since %s; they are fetched again when asked for",
            key,
            intervals.format_date(since) if MIN_TIME <= since <= MAX_TIME else since,
        )
        series.live = False
        series.epoch += 1  # a tail fetch in flight does not make it live again either
        series.coverage.remove_from(since)
        if series.loaded and series.persist and self.store is not None:
            self.store.put_coverage(key, series.coverage.spans(), series.exhausted_before)

    def _confirmed(self, key: SeriesId, t: int) -> bool:
        """A far-ahead bar (:meth:`Clocks.far_ahead`) is taken once ``CONFIRMING_UPDATES``
        updates in a row are of it or of the bar after it: then the stream did move there."""
        step = intervals.nominal_seconds(key.interval)
        suspect = self._suspects.get(key)
        count = suspect[1] + 1 if suspect is not None and 0 <= t - suspect[0] <= step else 1
        if count >= CONFIRMING_UPDATES:
            self._suspects.pop(key, None)
            return True
        self._suspects[key] = (t, count)
        return False

    def _far_ahead(self, key: SeriesId, t: int) -> None:
        """A stray bar far ahead of the stream and of its provider's clock: bad data (as
        the newest bar, it would make every real update look like a correction of an older
        bar, and none would be sent). Dropped, counted and logged."""
        self.metrics.inc("candlewire_future_bars_dropped_total", source=key.source)
        logger.warning(
            "%s sent a bar of %s opening at %s, far past the stream and its clock (%s): dropped",
            key.source,
            key,
            intervals.format_date(t),
            intervals.format_date(self.clocks.now(key.source, key.name)),
        )

    def _drop(self, key: SeriesId, bar: Bar, why: str) -> None:
        """A live bar that cannot be real, dropped, counted and logged: :func:`flaw`, or
        :func:`far_behind` and before every bar the series holds or knows of (as a
        correction it would write a date decades back into the history)."""
        self.metrics.inc("candlewire_bad_bars_dropped_total", source=key.source)
        at = bar[0]
        logger.warning(
            "%s sent a bar of %s at %s %s: dropped",
            key.source,
            key,
            intervals.format_date(at) if MIN_TIME <= at <= MAX_TIME else at,
            why,
        )

    def _encoder(self, key: SeriesId) -> protocol.UpdateEncoder | None:
        encoder = self._updates.get(key)
        if encoder is None:
            wire = self._wire.get(key)
            if wire is None:
                return None
            encoder = self._updates[key] = protocol.UpdateEncoder(key, wire)
        return encoder

    def _update_frame(self, key: SeriesId, bar: Bar) -> tuple[bytes, int] | None:
        """The data_update frame of ``bar`` and how many clients of ``key`` get it; None if
        nobody does (or the key has no wire form yet)."""
        targets = self.deliver.get(key)
        if not targets:
            return None
        encoder = self._encoder(key)
        if encoder is None:
            return None
        return encoder.frame(bar), len(targets)

    def _push_update(self, key: SeriesId, bar: Bar) -> None:
        update = self._update_frame(key, bar)
        if update is not None:
            self.push_frame(key, bar[0], update[0], self.deliver[key])
            self._delivered += update[1]

    def push_frame(
        self, key: SeriesId, bar_time: int, frame: bytes, targets: dict[int, Client]
    ) -> None:
        """Queue ``frame`` (of ``key``'s bar ``bar_time``, in that data_update's slot: a later
        update of the bar replaces it) to each of ``targets``."""
        slot = (key, bar_time)
        for client in list(targets.values()):
            if not client.outbox.push(frame, slot):
                self.kick(client, "outbox hard limit reached")

    def _hold_update(self, key: SeriesId, bar: Bar) -> None:
        """:meth:`_push_update` at the end of the batch (see ``hold_back``); a later update
        of the same bar in the batch replaces it, as it would in the outboxes."""
        update = self._update_frame(key, bar)
        if update is None:
            return
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = {}
        held[bar[0]] = update[0]
        self._delivered += update[1]

    def held(self, key: SeriesId) -> dict[int, bytes] | None:
        """The held data_update frames of ``key`` (bar time -> frame, oldest first)."""
        return self._held.get(key)

    def take_held(self, key: SeriesId) -> dict[int, bytes] | None:
        """The held data_update frames of ``key`` (bar time -> frame, oldest first), which
        the caller now sends to :attr:`deliver`'s clients of ``key``; None if none."""
        return self._held.pop(key, None)

    def release_held(self, key: SeriesId) -> None:
        """Send the held data_update frames of ``key`` now, as :meth:`_push_update` would
        have."""
        held = self._held.pop(key, None)
        targets = self.deliver.get(key)
        if held is None or not targets:
            return
        for bar_time, frame in held.items():
            self.push_frame(key, bar_time, frame, targets)

    def _store_live(
        self, series: Series, bar: Bar, newest: bool, previous: int | None, final: bool
    ) -> None:
        """Persist what a live bar settled: a bar its provider says is closed (``final``),
        the bar it superseded as newest (closed now), or an older bar it corrected. The
        forming bar itself is not written on every update: after a restart it comes from
        the provider with the tail anyway."""
        assert self.store is not None
        if not newest:
            self.store.put_bars(series.key, [bar])
            return
        if final:
            self.store.put_bars(series.key, [bar])
        if previous is not None and bar[0] > previous and len(series.bars) > 1:
            self.store.put_bars(series.key, [series.bars[-2]])
            if series.live:
                self.store.put_coverage(
                    series.key, series.coverage.spans(), series.exhausted_before
                )

    def notify(self, key: SeriesId, code: str, message: str) -> None:
        """Send an ``error`` with ``code`` and ``message`` about ``key`` to its clients.

        A subscribed client whose data_init is still on its way gets it after that
        data_init (:meth:`init_sent`): a provider's error about starting the stream comes
        just then (a start_streaming that raised). Not when the data_init carried an error
        of the same code, or did within :data:`REPEAT_SECONDS` before: one error per
        request (a delisted symbol's history call fails with ``unknown_symbol``, and its
        provider tells the key's clients the same). Not the listeners (an OpenBB live grid):
        their sockets speak another protocol."""
        frame = text_frame(
            protocol.error_message(
                code, message, {"source": key.source, "name": key.name, "interval": key.interval}
            )
        )
        targets = self.deliver.get(key, {})
        now = time.monotonic()
        for client in list(targets.values()):
            answered = self._answered.get((client.id, key))
            if answered is not None and answered[0] == code and now - answered[1] < REPEAT_SECONDS:
                continue
            if not client.outbox.push(frame):
                self.kick(client, "outbox hard limit reached")
        for client_id in self.subs.subscribers(key) - targets.keys():
            pending = self.client_of(client_id)
            if pending is not None and key not in self.listeners.keys_of(client_id):
                self._waiting_notices.setdefault((client_id, key), []).append((code, frame))

    def init_sent(self, client: Client, key: SeriesId, code: str | None) -> None:
        """``client``'s data_init of ``key`` went out, with an error of ``code`` (or none):
        send the provider errors about ``key`` that came for it meanwhile, less those of
        the same code (the client was just told)."""
        waiting = self._waiting_notices.pop((client.id, key), ())
        if code is not None:
            self._answered[(client.id, key)] = (code, time.monotonic())
        for notice_code, frame in waiting:
            if notice_code != code and not client.outbox.push(frame):
                self.kick(client, "outbox hard limit reached")
                return
