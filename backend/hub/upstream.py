"""Upstream streams: what the hub has told each provider, reconciled with the registry.

For every key it keeps the client ids the provider believes subscribed (the ids it sent
``StartStreaming`` for and no ``StopStreaming`` since), and the linger timer of a key that
nobody holds any more. After every change of the registry :meth:`Upstream.sync` moves the
provider's belief to the registry's truth: first ``StartStreaming`` for ids it lacks, then
``StopStreaming`` for ids that left. So a provider never sees a stop for an id that is
subscribed again, a resubscribe within the linger cancels the linger without any command,
and two clients on one key never make the provider see zero subscribers in between.

While a key lingers, the provider keeps believing in the last id that left; when the linger
expires that id is stopped. A restarted provider process may know nothing, or only what
was queued for it while it started: :meth:`replay` stops what nobody holds any more (the
lingering keys included) and starts every registered id again.

Owns: the belief and the timers. Not: the registry (``subscriptions``), the processes
(``runtime.supervisor``), or the event loop (timers come from an injected ``call_later``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from backend.hub.handles import ProviderHandle
from backend.hub.subscriptions import Subscriptions
from backend.model.bars import SeriesId
from backend.runtime.messages import StartStreaming, StopStreaming

logger = logging.getLogger(__name__)


class Cancellable(Protocol):
    def cancel(self) -> None: ...


CallLater = Callable[[float, Callable[[], None]], Cancellable]


def loop_call_later(delay: float, callback: Callable[[], None]) -> Cancellable:
    """The default timer: the running event loop's ``call_later``."""
    return asyncio.get_running_loop().call_later(delay, callback)


class Upstream:
    """Start/stop commands per key, derived from the registry; lingers on the last leave."""

    def __init__(
        self,
        subs: Subscriptions,
        provider: Callable[[str], ProviderHandle | None],
        linger: float,
        call_later: CallLater = loop_call_later,
        on_stopped: Callable[[SeriesId], None] | None = None,
    ) -> None:
        self.subs = subs
        self.provider = provider
        self.linger = linger
        self.call_later = call_later
        self.on_stopped = on_stopped
        self._told: dict[SeriesId, set[int]] = {}
        self._lingering: dict[SeriesId, Cancellable] = {}

    def sync(self, key: SeriesId, client: int | None = None) -> None:
        """Bring the provider's belief about ``key`` in line with the registry.

        ``client``: the one client whose subscription to ``key`` changed, when the caller
        knows. While the key is streamed and not lingering, the provider's belief matched
        the registry before that change, so only that client is compared (the full diff
        copies every subscriber: quadratic when thousands subscribe to one key)."""
        told = self._told.get(key)
        if (
            client is not None
            and told is not None
            and key not in self._lingering
            and self.subs.count(key)
        ):
            self._sync_one(key, client, told)
            return
        wanted = self.subs.subscribers(key)
        if wanted:
            self._cancel_linger(key)
            self._send_diff(key, told if told is not None else set(), wanted)
        elif told and key not in self._lingering:
            self._lingering[key] = self.call_later(self.linger, lambda: self._expire(key))

    def believed(self, key: SeriesId) -> frozenset[int]:
        """The ids the provider was told are subscribed to ``key``."""
        return frozenset(self._told.get(key, ()))

    def lingering(self, key: SeriesId) -> bool:
        return key in self._lingering

    def streaming(self) -> list[SeriesId]:
        """Every key the providers were told to stream."""
        return list(self._told)

    def replay(self, source: str) -> int:
        """A provider process (re)started: what it believes is unknown (nothing, or what
        was queued for it before it was ready). Stop every id told that no longer holds its
        key (lingering keys too), then start every registered id of its keys."""
        provider = self.provider(source)
        for key in [k for k in self._told if k.source == source]:
            self._cancel_linger(key)
            for client in self._told.pop(key) - self.subs.subscribers(key):
                if provider is not None:
                    provider.send(StopStreaming(client, key.name, key.interval))
        pairs = self.subs.pairs_for_source(source)
        for key in {key for _, key in pairs}:
            self.sync(key)
        return len(pairs)

    def stop(self) -> None:
        """Cancel every linger timer (the hub is stopping)."""
        for handle in self._lingering.values():
            handle.cancel()
        self._lingering.clear()

    def _sync_one(self, key: SeriesId, client: int, told: set[int]) -> None:
        provider = self.provider(key.source)
        holds = self.subs.holds(client, key)
        if holds and client not in told:
            told.add(client)
            if provider is not None:
                provider.send(StartStreaming(client, key.name, key.interval))
        elif not holds and client in told:
            told.discard(client)
            if provider is not None:
                provider.send(StopStreaming(client, key.name, key.interval))

    def _send_diff(self, key: SeriesId, told: set[int], wanted: frozenset[int]) -> None:
        provider = self.provider(key.source)
        for client in wanted - told:
            if provider is not None:
                provider.send(StartStreaming(client, key.name, key.interval))
        for client in told - wanted:
            if provider is not None:
                provider.send(StopStreaming(client, key.name, key.interval))
        self._told[key] = set(wanted)

    def _expire(self, key: SeriesId) -> None:
        self._lingering.pop(key, None)
        if self.subs.has(key):  # a resubscribe raced the timer: it keeps the stream
            return
        provider = self.provider(key.source)
        for client in self._told.pop(key, set()):
            if provider is not None:
                provider.send(StopStreaming(client, key.name, key.interval))
        if self.on_stopped is not None:
            self.on_stopped(key)

    def _cancel_linger(self, key: SeriesId) -> None:
        handle = self._lingering.pop(key, None)
        if handle is not None:
            handle.cancel()
