"""Live-bar listeners: how clients that do not speak the ``/websocket/`` protocol get bars.

The hub hands every new or changed forming bar to two kinds of receivers: ``/websocket/``
clients get an encoded ``data_update`` frame in their outbox, and *listeners* registered
here get a plain call ``on_bar(key, bar)``. The OpenBB live grid is such a listener.

A listener belongs to a hub client (its integer id): the hub subscribes that client to the
key, so the upstream stream starts and stops (with linger) exactly as for a WebSocket
client, and drops the client's listeners when the client goes away (``Hub.watch``,
``Hub.unwatch``, ``Hub.remove_client``). This module only keeps the registry.

Listeners are called on the hub's event loop, inside the provider reader: they must not
block or await. The expected pattern is to note what changed and wake a writer task of
their own, which does the socket I/O.
"""

from __future__ import annotations

import logging
from typing import Protocol

from backend.model.bars import Bar, SeriesId

logger = logging.getLogger(__name__)


class BarListener(Protocol):
    """Receives the live bars of the keys it is registered for."""

    def on_bar(self, key: SeriesId, bar: Bar) -> None:
        """A new bar, or a new state of the forming bar, of ``key``; must not block."""


class Listeners:
    """Listeners by series key and by owning client id, indexed both ways."""

    def __init__(self) -> None:
        self._by_key: dict[SeriesId, dict[int, BarListener]] = {}
        self._by_owner: dict[int, set[SeriesId]] = {}

    def add(self, owner: int, key: SeriesId, listener: BarListener) -> None:
        """Register (or replace) the listener of client ``owner`` for ``key``."""
        self._by_key.setdefault(key, {})[owner] = listener
        self._by_owner.setdefault(owner, set()).add(key)

    def remove(self, owner: int, key: SeriesId) -> bool:
        """Unregister; False when ``owner`` had no listener for ``key``."""
        targets = self._by_key.get(key)
        if targets is None or targets.pop(owner, None) is None:
            return False
        if not targets:
            del self._by_key[key]
        keys = self._by_owner.get(owner)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_owner[owner]
        return True

    def drop(self, owner: int) -> list[SeriesId]:
        """Unregister every listener of client ``owner``; returns their keys."""
        keys = list(self._by_owner.get(owner, ()))
        for key in keys:
            self.remove(owner, key)
        return keys

    def notify(self, key: SeriesId, bar: Bar) -> int:
        """Call every listener of ``key``; returns how many were called.

        A listener that raises is logged and skipped: one faulty listener must not stop
        the fan-out to the others or the provider reader.
        """
        targets = self._by_key.get(key)
        if not targets:
            return 0
        for owner, listener in list(targets.items()):
            try:
                listener.on_bar(key, bar)
            except Exception:
                logger.exception("bar listener of client %d failed on %s", owner, key)
        return len(targets)

    def keys_of(self, owner: int) -> frozenset[SeriesId]:
        return frozenset(self._by_owner.get(owner, ()))

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __len__(self) -> int:
        return sum(len(targets) for targets in self._by_key.values())
