"""Refill after a provider restart: the bars a key's clients missed while its provider was
down reach them as ``data_update``s, in order, before any newer live update.

A provider process that died (or was killed for silence) and a provider node that took over
(scale-out) start streaming from where their upstream is now; the bars that closed in
between would otherwise be missing from every open chart until it reloads, with nothing to
say so. For each key that has subscribers and a newest bar, :class:`Refills` asks the
provider for the bars from that newest bar on (the one the clients hold, since it may have
closed with other values) and hands them to the fan-out as if the provider had sent them.
Live updates of the key that arrive meanwhile are held (only the newest state of each bar)
and follow the refill. If the history call fails, the key's clients get an ``error`` naming
the window, and the held updates go out.

The new stream and the answer race: the stream may send a state of a bar read before the
answer (a replay's first tick), during the refill or after it, or start only after the
answer's forming bar closed. A held forming state of a bar the answer has closed gives way
to the closed bar; until the stream reaches the answer's newest bar, its forming states of
older bars are dropped (``Fanout.catching_up``); and after a restart, a first live update
newer than the answer's forming bar refills that bar once more (its final values never
came from the stream).

Owned here: which keys are being refilled and their held updates (``Fanout.refilling`` is
the same dict, read on the hot path). Not owned: the fetch (the hub's), the fan-out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from backend.errors import ProviderError, ProviderUnavailable, RateLimited
from backend.history.cache import BarCache
from backend.hub.fanout import Fanout
from backend.model import intervals
from backend.model.bars import Bar, SeriesId
from backend.runtime.messages import WireEvent
from backend.tasks import Tasks, start_owned

logger = logging.getLogger(__name__)

MAX_PUSHED = 300  # missed bars sent to clients per key (the rest stay in history)
AT_ONCE = 8  # history calls of refills in flight (thousands of keys after a node took over)

UNSEEN = "(a bar closed before the stream saw it)"

Fetch = Callable[[SeriesId, int, int], Awaitable[list[Bar]]]


class Refills:
    """The refills in progress, one per key."""

    def __init__(self, cache: BarCache, fanout: Fanout, fetch: Fetch, max_count: int) -> None:
        self.cache = cache
        self.fanout = fanout
        self.fetch = fetch
        self.max_count = max_count
        self.tasks: Tasks = set()
        self.held = fanout.refilling
        self._calls = asyncio.Semaphore(AT_ONCE)
        # When a refill's call of each source last failed as unavailable (monotonic time).
        self._unavailable: dict[str, tuple[float, ProviderUnavailable]] = {}

    def start(self, keys: list[SeriesId], restart: bool = True) -> int:
        """Refill each of ``keys`` that has a newest bar and is not being refilled; the
        number started. ``restart``: after a provider restart (else: the stream opened a new
        bar before it ever updated the one before, ``Fanout._on_bar``; only the log and the
        error text differ)."""
        started = 0
        for key in keys:
            series = self.cache.peek(key)
            if series is None or series.newest is None or key in self.held:
                continue
            self.held[key] = {}
            self.fanout.catching_up.pop(key, None)
            refill = self._refill(key, series.newest, series.epoch, restart)
            start_owned(self.tasks, refill, f"refill {key}")
            started += 1
        return started

    async def _refill(self, key: SeriesId, since: int, epoch: int, restart: bool) -> None:
        why = "after the provider restarted" if restart else UNSEEN
        step = intervals.nominal_seconds(key.interval)
        now = self.fanout.clocks.now(key.source, key.name)
        count = max(2, min(self.max_count, (now - since) // step + 2))
        bars: list[Bar] = []
        queued = time.monotonic()
        try:
            async with self._calls:  # the timeout of each call starts when it is made
                self._skip_if_unavailable(key.source, queued)
                try:
                    fetched = await self.fetch(key, since, count)
                except RateLimited:
                    raise  # the provider's pace: the refills behind it wait their turn
                except ProviderUnavailable as exc:
                    self._unavailable[key.source] = (time.monotonic(), exc)
                    raise
            bars = [bar for bar in fetched if bar[0] >= since]
        except ProviderError as exc:
            logger.warning("%s: the bars since %s could not be refilled: %s", key, _at(since), exc)
            self.fanout.notify(
                key,
                exc.code,
                f"bars since {_at(since)} may be missing {why}: {exc}",
            )
        except Exception:  # a bug: said, and the live updates held meanwhile still go out
            logger.exception("%s: the refill since %s failed", key, _at(since))
            self.fanout.notify(
                key, "internal_error", f"bars since {_at(since)} may be missing {why}"
            )
        finally:
            held = self.held.pop(key, {})
        series = self.cache.peek(key)
        if 0 < len(bars) <= MAX_PUSHED and series is not None and series.epoch == epoch:
            # Up to date again: its coverage grows with each bar below. Not when bars are
            # left out: the span they would cover stays unknown, for history to fetch.
            series.live = True
        if len(bars) > MAX_PUSHED:
            logger.warning(
                "%s: %d bars missed while the provider was down; the newest %d are sent, the"
                " rest are in the history",
                key,
                len(bars),
                MAX_PUSHED,
            )
            bars = bars[-MAX_PUSHED:]
        self._send(key, bars, held, restart)
        if bars:
            logger.info("%s: %d bars refilled %s", key, len(bars), why)

    def _send(
        self, key: SeriesId, bars: list[Bar], held: dict[int, tuple[Bar, bool]], restart: bool
    ) -> None:
        """Hand the answer's ``bars`` and the live updates ``held`` meanwhile to the
        fan-out, in time order: the held state of a bar goes out in place of the answer's,
        unless it is a forming state of a bar the answer has closed (it was read before the
        answer: the replay's first tick after a restart, read while its file loaded)."""
        events: list[WireEvent] = []
        last = bars[-1][0] if bars else None
        for bar in bars:
            seen = held.get(bar[0])
            if seen is not None and (seen[1] or bar[0] == last):
                continue  # the stream's own: a final bar, or a state of the forming one
            held.pop(bar[0], None)
            events.append((key.name, key.interval, bar, bar[0] != last))
        events += [(key.name, key.interval, bar, final) for bar, final in held.values()]
        events.sort(key=_bar_time)
        upto = events if last is None else [e for e in events if _bar_time(e) <= last]
        if upto:
            self.fanout.on_provider_events(key.source, upto)
        series = self.cache.peek(key)
        if last is not None and last not in held and key not in self.held and series is not None:
            # The stream has not shown the answer's newest bar, forming when it was read.
            if restart and series.newest == last:
                # Should the new stream's first update be of a newer bar, this one closed
                # unseen: that update refills it (``Fanout._on_bar``), or it would stay
                # half made, and any bar between would be missing. Not after that refill
                # (``restart`` False): its stream was running, and a provider whose history
                # lags its stream by a bar would be refilled again at every bar.
                series.live_t = None
            if len(upto) == len(events):
                # Until the stream reaches it, the forming states it sends of older bars
                # were read before the answer, which has those bars closed: they would
                # replace the closed bars in the cache (not sent: older than the newest),
                # and history would serve them half made. ``Fanout._on_bar`` drops them.
                self.fanout.catching_up[key] = last
        if len(upto) < len(events):
            self.fanout.on_provider_events(key.source, events[len(upto) :])

    def _skip_if_unavailable(self, source: str, queued: float) -> None:
        """Raise the failure of a refill call of ``source`` that ended after this refill was
        queued: it would most likely wait out the same timeout (a provider, or the node that
        took over, that answers no history), and the keys behind the first ``AT_ONCE`` held
        their live updates for one more ``HISTORY_TIMEOUT`` per ``AT_ONCE`` keys (an hour for
        1,000 keys at 30 s). A refill queued after the failure calls again."""
        failed = self._unavailable.get(source)
        if failed is not None and failed[0] > queued:
            raise ProviderUnavailable(f"not asked: {failed[1]}")


def _bar_time(event: WireEvent) -> int:
    bar: Bar = event[2]  # type: ignore[index]
    return bar[0]


def _at(t: int) -> str:
    return intervals.format_date(t)
