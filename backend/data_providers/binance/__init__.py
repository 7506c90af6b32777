"""The Binance spot provider (``PROVIDERS=binance``): symbols, kline history, live klines.

REST (``exchangeInfo``, ``klines``) goes through python-binance behind one
:class:`.rest.RestGate` (weight budget, Retry-After, error translation).
Live klines come from combined streams run by :class:`.stream.StreamManager`
on the ``websockets`` library: python-binance's socket managers cannot send live SUBSCRIBE
frames, so this is a deliberate departure from "python-binance for streams".

This module ties the two together. It remembers the last bar seen on every streamed key;
after a reconnect it fetches the bars missed since then by REST and publishes them (closed
ones with ``final=True``, oldest first) before any newer live update of that key, so that
neither the store nor a chart misses a bar. Live updates wait for that fetch at most
:data:`GAP_HOLD` seconds of REST waiting: when Binance rate-limits (or REST fails), they go
on and the fetch is put off (:class:`.later.Later`) until it is allowed, then asks only for
the bars before the first live one published meanwhile, all closed, so that no REST
snapshot overwrites a newer live bar. The hub is told first (``missed``) that the bars since
the gap are not known, so that it does not take the live bars after it as the end of a
known span: if this process stops before the fill lands, the next request fetches the gap.
A live kline older than what was published of its key (a late one of the socket a renewal
replaces) or equal to the last one is dropped.

It also follows which symbols trade. A delisted symbol (``status`` ``BREAK``/``HALT``, or
gone from ``exchangeInfo``, where REST answers ``-1121 Invalid symbol.``) still takes a
SUBSCRIBE but sends nothing: its streams are dropped upstream and its clients get an
``error`` ``unknown_symbol``. It is found by a ``-1121`` answer and by a check of
``exchangeInfo`` every :data:`LISTING_EVERY` seconds; the same check resumes the streams of a
symbol that trades again, and a new client of a delisted symbol has it checked first.

Configuration: ``BINANCE_API_URL``, ``BINANCE_STREAM_URL``, optional
``BINANCE_API_KEY``/``BINANCE_API_SECRET``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from backend.data_providers.binance.later import Later
from backend.data_providers.binance.pacing import StreamTuning
from backend.data_providers.binance.parse import (
    KlineUpdate,
    dataset_row,
    kline_update,
    not_trading,
    parse_query_time,
    row_to_bar,
    rows_to_bars,
    stream_name,
)
from backend.data_providers.binance.rest import NotListed, RestGate
from backend.data_providers.binance.stream import StreamManager
from backend.errors import (
    ProviderError,
    ProviderFatal,
    ProviderUnavailable,
    RateLimited,
    UnknownSymbol,
)
from backend.model import intervals
from backend.model.bars import Bar
from backend.runtime.provider import Provider, StreamKey

logger = logging.getLogger(__name__)

MAX_HISTORY_WAIT = 20.0  # a history call never waits longer than this for the REST budget
GAP_HOLD = 5.0  # live updates wait this long at most for a gap fill's REST turn
QUIET_WAIT = 30.0  # REST calls that hold no update (a put-off gap, a listing check) wait this
GAP_RETRY = 5.0  # a gap fill put off by a REST failure is tried again after this, doubling
GAP_RETRY_MAX = 300.0  # ... up to this (a rate limit: after its Retry-After)
GAP_THREADS = 4  # gap fills run in parallel; the REST gate keeps them within the budget
QUIET_THREADS = 2  # threads for them
POPULATE_MAX_WAIT = 120.0
MAX_AHEAD_MS = 86_400_000  # a kline opening later than this after now is not Binance's
QUIET_RESTART = 900.0  # a key without an event is restarted after this (or two bars)
LISTING_EVERY = 600.0  # the streamed symbols are checked in exchangeInfo this often
LISTING_SOON = 2.0  # a check asked for (a new client of a delisted symbol) waits this long,
LISTING_MIN_GAP = 30.0  # ... and comes this long after the last check at the earliest
_SEVERITY = {"ok": 0, "reconnecting": 1, "unavailable": 2, "rate_limited": 3, "banned": 4}


@dataclass
class _Key:
    """What the provider knows about one streamed ``(symbol, interval)``."""

    stream: str
    subscribed_ms: int
    last_open_ms: int | None = None  # open time of the newest bar seen
    resuming: bool = False  # a gap fill is running: live updates wait in ``pending``
    # open time of the bar a gap fill left forming: its final values are still owed
    unsettled_ms: int | None = None
    pending: dict[int, KlineUpdate] = field(default_factory=dict)  # by open time
    # A gap fill put off (REST rate limited or failing) while live updates went on: the open
    # time of its first bar, and of the first live bar published after it (its end).
    gap_from_ms: int | None = None
    gap_to_ms: int | None = None
    gap_failures: int = 0
    upstream: bool = True  # subscribed at Binance (False: its symbol does not trade)
    closed_ms: int | None = None  # open time of the newest bar a live kline closed (x=true)
    event_ms: int = 0  # event time (E) of the newest live kline published
    last: KlineUpdate | None = None  # the live kline published last
    told: bool = False  # its clients were told that its symbol does not trade


class BinanceProvider(Provider):
    """Binance spot market data: every ``TRADING`` symbol, 14 intervals, live klines."""

    def __init__(self) -> None:
        super().__init__()
        self.tuning = StreamTuning()
        self._rest: RestGate | None = None
        self._rest_lock = threading.Lock()
        self._streams: StreamManager | None = None
        self._gaps: ThreadPoolExecutor | None = None
        # REST work that holds no live update (a put-off gap, a listing check): it may wait
        # longer, on threads of its own, so that no gap fill holding updates queues behind it.
        self._quiet: ThreadPoolExecutor | None = None
        self._later: Later | None = None
        self._keys: dict[StreamKey, _Key] = {}
        self._by_stream: dict[str, StreamKey] = {}
        self._keys_lock = threading.Lock()  # guards _keys and orders every publish
        # Symbols that do not trade: why, and when that was learnt (monotonic).
        self._not_trading: dict[str, tuple[str, float]] = {}
        self._to_check: set[str] = set()  # symbols the next listing check must include
        self._checked_at = -LISTING_MIN_GAP  # when the last listing check ran (monotonic)
        self._status = {"rest": ("ok", ""), "stream": ("ok", "")}
        self._reported = ("", "")
        self._status_lock = threading.Lock()

    # ------------------------------------------------------------------ hooks

    def init(self) -> None:
        settings = self.settings
        self._gate()
        self._gaps = ThreadPoolExecutor(GAP_THREADS, thread_name_prefix="binance-gaps")
        self._quiet = ThreadPoolExecutor(QUIET_THREADS, thread_name_prefix="binance-quiet")
        self._later = Later("binance-later")
        self._streams = StreamManager(
            settings.BINANCE_STREAM_URL,
            self._on_event,
            self._on_resume,
            lambda state, detail: self._set_status("stream", state, detail),
            self.tuning,
            bursts=(self.hold_updates, self.release_updates),
            on_refused=self._on_refused,
        )
        self._streams.start()
        self._set_status("stream", "ok", "")
        self._later.at(time.monotonic() + LISTING_EVERY, "listing", self._listing_due)

    def get_dataset(self) -> Iterable[Mapping[str, Any]]:
        info = self._gate().exchange_info(deadline=time.monotonic() + POPULATE_MAX_WAIT)
        source = self.source or "binance"
        rows = (dataset_row(symbol, source) for symbol in info.get("symbols") or ())
        return [row for row in rows if row is not None]

    def get_history(
        self,
        symbol: str,
        interval: str,
        start_time_query: str,
        end_time_query: str,
        count: int,
    ) -> list[Bar]:
        if not intervals.is_interval(interval):
            known = ", ".join(intervals.INTERVALS)
            raise UnknownSymbol(
                f"binance: unknown interval {interval!r} for {symbol}; known: {known}"
            )
        start, end = _time(start_time_query), _time(end_time_query)
        if start is None:
            start = int(time.time()) - intervals.nominal_seconds(interval) * max(count, 1)
        if end is not None and end < start:
            return []
        deadline = time.monotonic() + self._max_wait()
        end_ms = None if end is None else end * 1000
        try:
            rows = self._gate().klines(symbol, interval, start * 1000, end_ms, deadline)
        except NotListed as exc:
            self._not_listed(symbol, "-1121 Invalid symbol.")
            raise UnknownSymbol(str(exc)) from exc  # the hub's class, not this package's
        return rows_to_bars(rows, start, end)

    def on_first_subscriber(self, symbol: str, interval: str) -> None:
        """Subscribe the key's stream. For a symbol known not to trade, have it checked
        again (it may be listed again); its clients are told at once if that was learnt
        less than :data:`LISTING_MIN_GAP` ago, else by the check."""
        name = stream_name(symbol, interval)
        with self._keys_lock:
            known = self._not_trading.get(symbol)
            state = _Key(name, int(time.time() * 1000), upstream=known is None)
            self._keys[(symbol, interval)] = state
            self._by_stream[name] = (symbol, interval)
            fresh = known is not None and time.monotonic() - known[1] < LISTING_MIN_GAP
            state.told = fresh
        if known is None:
            self._stream_manager().subscribe([name])
            return
        if fresh:
            self.notify(symbol, interval, "unknown_symbol", _not_trading_text(symbol, known[0]))
        self._check_listing(symbol)  # it may trade again (relisted)

    def on_last_subscriber(self, symbol: str, interval: str) -> None:
        with self._keys_lock:
            key = self._keys.pop((symbol, interval), None)
            if key is not None:
                self._by_stream.pop(key.stream, None)
        if key is not None and key.upstream:
            self._stream_manager().unsubscribe([key.stream])

    def no_update(self, symbol: str, interval: str) -> None:
        """Restart the quiet stream and fetch what it may have missed."""
        with self._keys_lock:
            key = self._keys.get((symbol, interval))
        if key is None or not key.upstream:
            return  # a symbol that does not trade: the listing check follows it
        self._stream_manager().restart([key.stream])
        self._start_gap_fill([(symbol, interval)])

    def staleness_limit(self, symbol: str, interval: str) -> float | None:
        """15 minutes or two bars without an event, whichever is longer.

        Binance sends a kline event only when the kline changed: a thinly traded pair is
        quiet for long stretches on a healthy stream, and a dead socket is found by its
        connection's ping. The default (120 s) restarted every quiet key every 2 minutes,
        each time an UNSUBSCRIBE/SUBSCRIBE, a REST gap fill and two log lines: 100 quiet
        keys cost 100 klines calls and 200 lines every 2 minutes."""
        return max(QUIET_RESTART, 2.0 * intervals.nominal_seconds(interval))

    def shutdown(self) -> None:
        if self._streams is not None:
            self._streams.stop()
        if self._later is not None:
            self._later.stop()
        for pool in (self._gaps, self._quiet):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        if self._rest is not None:
            self._rest.close()

    # ------------------------------------------------------------------ live updates

    def _on_event(self, data: Mapping[str, Any]) -> None:
        """A stream payload (stream thread)."""
        update = kline_update(data)
        if update is None:
            return
        with self._keys_lock:
            key = self._by_stream.get(stream_name(update.symbol, update.interval))
            state = self._keys.get(key) if key is not None else None
            if key is None or state is None or not state.upstream:
                return
            if state.resuming:
                held = state.pending.get(update.bar[0])
                if held is None or not (held.final or update.event_ms < held.event_ms):
                    state.pending[update.bar[0]] = update
                return
            if _stale(state, update):
                return
            if _owes_close(state, update.bar[0]):
                # The bar the gap fill left forming closed before the new subscription was
                # live: its final kline never came. Fetch it again before this newer one.
                state.unsettled_ms = None
                state.resuming = True
                state.pending[update.bar[0]] = update
                refetch = True
            else:
                self._publish_update(key, state, update)
                refetch = False
        if refetch and self._gaps is not None:
            self._gaps.submit(self._fill_gap, key, False)

    def _publish_update(self, key: StreamKey, state: _Key, update: KlineUpdate) -> None:
        """Publish ``update``; it moves the gap fill's start unless it is a stray kline far
        in the future (bad data, which the hub drops)."""
        t_ms = update.bar[0] * 1000
        if update.final and t_ms == state.unsettled_ms:
            state.unsettled_ms = None
        if state.gap_from_ms is not None and state.gap_to_ms is None:
            state.gap_to_ms = t_ms  # the put-off gap fill stops before this bar
        state.event_ms = max(state.event_ms, update.event_ms)
        state.last = update
        if update.final:
            state.closed_ms = max(state.closed_ms or t_ms, t_ms)
        if t_ms <= time.time() * 1000 + MAX_AHEAD_MS:
            state.last_open_ms = max(state.last_open_ms or t_ms, t_ms)
        self.publish(key[0], key[1], update.bar, final=update.final)

    # ------------------------------------------------------------------ gaps

    def _on_refused(self, streams: list[str], error: str) -> None:
        """Binance refused to subscribe ``streams`` (stream thread): their clients get an
        ``error`` while the stream is asked for again."""
        with self._keys_lock:
            keys = [(s, self._by_stream[s]) for s in streams if s in self._by_stream]
        for stream, (symbol, interval) in keys:
            message = f"Binance refused the {stream} stream ({error}); asking again"
            self.notify(symbol, interval, "provider_unavailable", message)

    def _on_resume(self, streams: list[str]) -> None:
        """A connection came back (stream thread): hold its keys' updates, fill the gaps."""
        with self._keys_lock:
            keys = [self._by_stream[s] for s in streams if s in self._by_stream]
        self._start_gap_fill(keys)

    def _start_gap_fill(self, keys: Sequence[StreamKey]) -> None:
        todo = []
        with self._keys_lock:
            for key in keys:
                state = self._keys.get(key)
                if state is not None and not state.resuming:
                    state.resuming = True
                    todo.append(key)
        for key in todo:
            if self._gaps is not None:
                self._gaps.submit(self._fill_gap, key)

    def _fill_gap(self, key: StreamKey, watch_close: bool = True) -> None:
        """Gap thread: fetch and publish what ``key`` missed, then release its updates.

        With ``watch_close``, the last bar fetched, if still forming, is remembered as
        unsettled: the subscription may go live only after that bar closed (the REST answer
        came first), and then its final kline never comes; the first live kline of a newer
        bar fetches it again (once: that fetch runs on a live subscription).

        The REST call waits at most :data:`GAP_HOLD` for its turn (the key's live updates
        wait meanwhile); one that would wait longer (a 429/418 Retry-After, the weight
        budget) or fails for now is put off (:meth:`_put_off`) and the updates go on."""
        with self._keys_lock:
            state = self._keys.get(key)
            if state is None or not state.upstream:
                return
            since = state.gap_from_ms
            if since is None:
                since = state.last_open_ms
            if since is None:
                since = intervals.floor(state.subscribed_ms // 1000, key[1]) * 1000
        try:
            rows = self._missed_rows(key, since, None)
        except ProviderUnavailable as exc:
            self._put_off(key, since, exc)
            return
        except Exception:  # never leave a key holding its updates: log and release it
            logger.exception("binance: gap fill of %s %s failed", *key)
            self.missed(*key, since // 1000)
            rows = []
        self._finish_gap(key, rows, watch_close)

    def _missed_rows(
        self, key: StreamKey, since: int, end: int | None, wait: float = GAP_HOLD
    ) -> list[list[Any]]:
        """The kline rows of ``key`` from ``since`` (to ``end``); ``ProviderUnavailable``
        when REST cannot answer within ``wait`` seconds. Other errors are told to the key's
        clients and give no rows."""
        symbol, interval = key
        try:
            rows = self._gate().klines(symbol, interval, since, end, time.monotonic() + wait)
        except ProviderUnavailable:
            raise
        except NotListed:
            self._not_listed(symbol, "-1121 Invalid symbol.")
            return []
        except ProviderError as exc:
            logger.warning("binance: bars missed on %s %s not fetched: %s", symbol, interval, exc)
            self.missed(symbol, interval, since // 1000)  # given up: the hub asks when needed
            self.notify(symbol, interval, exc.code, f"bars missed during a reconnect: {exc}")
            return []
        logger.info(
            "binance: %s %s: %d bars fetched after a reconnect", symbol, interval, len(rows)
        )
        return rows

    def _put_off(
        self, key: StreamKey, since: int, exc: ProviderUnavailable, bounded: bool = False
    ) -> None:
        """REST cannot fetch ``key``'s gap now: release the live updates held for it (the
        put-off fill ends before the first of them) and try again when allowed.
        ``bounded``: the fill that failed was a put-off one, which keeps its end; any other
        (a reconnect's) fetched up to now, so its end is the first live bar published after
        this, not one before (the bars between a second drop and its reconnect, and the
        bar forming at that drop, were never fetched, and stayed with partial values)."""
        with self._keys_lock:
            state = self._keys.get(key)
            if state is None:
                return
            told = state.gap_from_ms is not None
            state.gap_from_ms = since
            if not bounded:
                state.gap_to_ms = None
            state.gap_failures += 1
            failures = state.gap_failures
            state.unsettled_ms = None
            # Before the live updates past the gap: the hub must not take them as the end
            # of a span it knows (the gap would be a hole in the store for good, and the bar
            # forming at the drop stored with partial values, if this process or the server
            # stopped before the fill lands). At each put-off: a request may have made the
            # hub's copy whole meanwhile, and a second drop may have made a new gap.
            self.missed(*key, since // 1000)
            self._release_held(key, state)
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            delay = exc.retry_after + 0.5
        else:
            delay = min(GAP_RETRY_MAX, GAP_RETRY * 2 ** (failures - 1))
        at = intervals.format_date(since // 1000)
        logger.log(
            logging.INFO if told else logging.WARNING,
            "binance: bars of %s %s since %s not fetched yet (%s); live updates go on, the"
            " gap is fetched in %.0f s",
            *key,
            at,
            exc,
            delay,
        )
        if not told:
            self.notify(
                *key,
                exc.code,
                f"bars since {at} missed during a reconnect are fetched when Binance allows"
                f" (in {delay:.0f} s); live updates go on meanwhile: {exc}",
            )
        if self._later is not None:
            self._later.at(time.monotonic() + delay, ("gap", key), lambda: self._retry_gap(key))

    def _retry_gap(self, key: StreamKey) -> None:
        """The timer: fetch a put-off gap. Bounded by the first live bar published since,
        it holds no live update; without one (a quiet key) it is an ordinary gap fill."""
        with self._keys_lock:
            state = self._keys.get(key)
            if state is None or state.gap_from_ms is None or state.resuming or not state.upstream:
                return  # gone, or a fill running now fetches from gap_from_ms anyway
            start, end = state.gap_from_ms, state.gap_to_ms
            if end is not None and end <= start:
                state.gap_from_ms = state.gap_to_ms = None  # the stream had it all
                state.gap_failures = 0
                return
            if end is None:
                state.resuming = True
        if end is None:
            if self._gaps is not None:
                self._gaps.submit(self._fill_gap, key)
        elif self._quiet is not None:
            self._quiet.submit(self._fill_bounded_gap, key, start, end)

    def _fill_bounded_gap(self, key: StreamKey, start: int, end: int) -> None:
        """Quiet thread: the bars of a put-off gap, all older than the live ones published
        since (``end``, exclusive): published as closed, without holding live updates."""
        try:
            rows = self._missed_rows(key, start, end - 1, QUIET_WAIT)
        except ProviderUnavailable as exc:
            self._put_off(key, start, exc, bounded=True)
            return
        with self._keys_lock:
            state = self._keys.get(key)
            if state is None or state.gap_from_ms != start:
                return
            for row in rows:
                if int(row[0]) < end:
                    self.publish(key[0], key[1], row_to_bar(row), final=True)
            state.gap_from_ms = state.gap_to_ms = None
            state.gap_failures = 0

    def _finish_gap(self, key: StreamKey, rows: list[list[Any]], watch_close: bool = True) -> None:
        """Publish the fetched bars, then the live updates held meanwhile; release the key."""
        now_ms = time.time() * 1000
        with self._keys_lock:
            state = self._keys.get(key)
            if state is None:
                return
            state.unsettled_ms = None
            state.gap_from_ms = state.gap_to_ms = None
            state.gap_failures = 0
            if rows:
                state.last = None  # a REST bar came after it: the same kline is news again
            for i, row in enumerate(rows):
                final = i < len(rows) - 1 or int(row[6]) < now_ms
                self.publish(key[0], key[1], row_to_bar(row), final=final)
                state.last_open_ms = max(state.last_open_ms or 0, int(row[0]))
                if watch_close and not final:
                    state.unsettled_ms = int(row[0])
            refetch = self._release_held(key, state)
        if refetch and self._gaps is not None:
            self._gaps.submit(self._fill_gap, key, False)

    def _release_held(self, key: StreamKey, state: _Key) -> bool:
        """Publish the live updates held for ``key`` (lock held), oldest first, from the
        newest bar seen on; True if one of them owes a refetch (it and the later ones stay
        held for it, ``_owes_close``)."""
        newest = state.last_open_ms
        held = sorted(t for t in state.pending if newest is None or t * 1000 >= newest)
        for n, t in enumerate(held):
            if _owes_close(state, t):
                state.unsettled_ms = None
                state.pending = {u: state.pending[u] for u in held[n:]}
                return True
            self._publish_update(key, state, state.pending[t])
        state.pending.clear()
        state.resuming = False
        return False

    # ------------------------------------------------------------------ listing

    def _check_listing(self, symbol: str) -> None:
        """Have ``symbol`` checked soon (with the others due), at most every
        :data:`LISTING_MIN_GAP` seconds."""
        with self._keys_lock:
            self._to_check.add(symbol)
            when = max(time.monotonic() + LISTING_SOON, self._checked_at + LISTING_MIN_GAP)
        if self._later is not None:
            self._later.at(when, "listing", self._listing_due)

    def _listing_due(self) -> None:
        """The timer: run the listing check on a quiet thread."""
        if self._quiet is not None:
            self._quiet.submit(self._listing_check)

    def _listing_check(self) -> None:
        """Quiet thread: which symbols of the keys (and those asked for) trade; drop the
        streams of those that do not, resume those that trade again. Then the next check
        is due in :data:`LISTING_EVERY` seconds."""
        with self._keys_lock:
            symbols = sorted({key[0] for key in self._keys} | self._to_check)
            self._to_check.clear()
            self._checked_at = time.monotonic()
        try:
            found = self._listing(symbols) if symbols else {}
        except ProviderError as exc:
            logger.info("binance: listing check of %d symbols not done: %s", len(symbols), exc)
            with self._keys_lock:
                self._to_check.update(symbols)
            found = {}
        finally:
            if self._later is not None:
                self._later.at(time.monotonic() + LISTING_EVERY, "listing", self._listing_due)
        for symbol, why in found.items():
            if why is None:
                self._listed(symbol)
            else:
                self._not_listed(symbol, why)

    def _listing(self, symbols: list[str]) -> dict[str, str | None]:
        """Why each of ``symbols`` does not trade (``None``: it does), from one
        ``exchangeInfo`` request (weight 20): of the symbol alone, or of all."""
        deadline = time.monotonic() + QUIET_WAIT  # exchangeInfo of all: megabytes
        if len(symbols) == 1:
            try:
                info = self._gate().exchange_info(deadline, symbol=symbols[0])
            except NotListed:
                return {symbols[0]: "-1121 Invalid symbol."}
        else:
            info = self._gate().exchange_info(deadline)
        rows = {
            row.get("symbol"): row for row in info.get("symbols") or () if isinstance(row, Mapping)
        }
        return {symbol: not_trading(rows.get(symbol)) for symbol in symbols}

    def _not_listed(self, symbol: str, why: str) -> None:
        """``symbol`` does not trade: drop its streams upstream, tell its keys' clients."""
        with self._keys_lock:
            new = symbol not in self._not_trading
            self._not_trading[symbol] = (why, time.monotonic())
            stopped, tell = [], []
            for key, state in self._keys.items():
                if key[0] != symbol:
                    continue
                if state.upstream:
                    state.upstream = state.resuming = False
                    state.pending.clear()
                    state.gap_from_ms = state.gap_to_ms = state.unsettled_ms = None
                    stopped.append(state.stream)
                if not state.told:
                    state.told = True
                    tell.append(key)
        if new:
            logger.warning("binance: %s does not trade (%s); its streams stop", symbol, why)
        if stopped:
            self._stream_manager().unsubscribe(stopped)
        for key in tell:
            self.notify(*key, "unknown_symbol", _not_trading_text(symbol, why))

    def _listed(self, symbol: str) -> None:
        """``symbol`` trades: resume the streams of its keys if it did not."""
        with self._keys_lock:
            if self._not_trading.pop(symbol, None) is None:
                return
            resumed = []
            for key, state in self._keys.items():
                if key[0] == symbol and not state.upstream:
                    state.upstream, state.told = True, False
                    resumed.append((key, state.stream))
        logger.warning("binance: %s trades again; %d streams resume", symbol, len(resumed))
        if resumed:
            self._stream_manager().subscribe([name for _, name in resumed])
            self._start_gap_fill([key for key, _ in resumed])

    # ------------------------------------------------------------------ plumbing

    def _gate(self) -> RestGate:
        with self._rest_lock:
            if self._rest is None:
                settings = self.settings
                self._rest = RestGate(
                    settings.BINANCE_API_URL,
                    settings.BINANCE_API_KEY.get_secret_value(),
                    settings.BINANCE_API_SECRET.get_secret_value(),
                    report=lambda state, detail: self._set_status("rest", state, detail),
                )
            return self._rest

    def _stream_manager(self) -> StreamManager:
        if self._streams is None:
            raise ProviderFatal("binance: streaming before init()")
        return self._streams

    def _max_wait(self) -> float:
        return min(MAX_HISTORY_WAIT, self.settings.HISTORY_TIMEOUT * 2 / 3)

    def _set_status(self, part: str, state: str, detail: str) -> None:
        """Report the worst of the REST and stream states (shown in ``/health``)."""
        with self._status_lock:
            self._status[part] = (state, detail)
            worst = max(self._status.values(), key=lambda s: _SEVERITY.get(s[0], 1))
            if worst == self._reported:
                return
            self._reported = worst
        self.report_status(*worst)


def _stale(state: _Key, update: KlineUpdate) -> bool:
    """Whether a live kline is older than what was published of its key, or the same: one
    equal to the last one, one whose event time is before the last one's, and a forming one
    of a bar older than the newest or of a bar that a kline closed already. Binance sends a
    stream's klines in order, but a renewal or ``serverShutdown`` hands over from a socket
    that delivers until the new one carries every stream, and a late kline of the old one
    came after newer ones: a forming bar's values went back, and a closed bar was stored
    again with values from before it closed."""
    if update == state.last:
        return True  # the same kline again (both sockets of a handover; a repeated close)
    t_ms = update.bar[0] * 1000
    if update.event_ms and update.event_ms < state.event_ms:
        return not update.final or (state.closed_ms is not None and t_ms <= state.closed_ms)
    if update.final:
        return False
    older = state.last_open_ms is not None and t_ms < state.last_open_ms
    return older or (state.closed_ms is not None and t_ms <= state.closed_ms)


def _not_trading_text(symbol: str, why: str) -> str:
    return f"binance: {symbol} is not traded on Binance now ({why}); no live updates"


def _owes_close(state: _Key, t: int) -> bool:
    """Whether a live kline opening at ``t`` (UTC seconds) is newer than the bar a gap fill
    left forming whose final kline has not come (see ``BinanceProvider._fill_gap``)."""
    return state.unsettled_ms is not None and t * 1000 > state.unsettled_ms


def _time(text: str) -> int | None:
    try:
        return parse_query_time(text)
    except ValueError as exc:
        raise ProviderFatal(f"binance: cannot read the time {text!r}") from exc
