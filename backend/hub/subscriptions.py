"""Who is subscribed to what: a sans-I/O registry of clients and series keys.

It answers "who gets this update" and "is this the first/last subscriber of a key" without
awaiting anything or touching a socket; the hub turns its answers into provider commands.
"""

from __future__ import annotations

import itertools
from enum import Enum

from backend.model.bars import SeriesId


class Change(Enum):
    FIRST = "first"  # the key had no subscriber before
    ADDED = "added"
    ALREADY = "already"  # idempotent: re-subscribing changes nothing
    LAST = "last"  # the key has no subscriber any more
    REMOVED = "removed"
    ABSENT = "absent"  # was not subscribed


class Subscriptions:
    """Clients (integer ids) subscribed to series keys, indexed both ways."""

    def __init__(self) -> None:
        self._by_key: dict[SeriesId, set[int]] = {}
        # client -> its keys, each with the stamp of the ``add`` that made it hold the key
        self._by_client: dict[int, dict[SeriesId, int]] = {}
        self._stamps = itertools.count(1)

    def add(self, client: int, key: SeriesId) -> Change:
        clients = self._by_key.setdefault(key, set())
        if client in clients:
            return Change.ALREADY
        first = not clients
        clients.add(client)
        self._by_client.setdefault(client, {})[key] = next(self._stamps)
        return Change.FIRST if first else Change.ADDED

    def since(self, client: int, key: SeriesId) -> int | None:
        """The stamp of the subscription by which ``client`` holds ``key`` (None: it does
        not): the same from the ``add`` that made it hold the key until the ``remove`` that
        lets it go, and never the same again after that (a later ``add`` gets a new one)."""
        keys = self._by_client.get(client)
        return None if keys is None else keys.get(key)

    def remove(self, client: int, key: SeriesId) -> Change:
        clients = self._by_key.get(key)
        if not clients or client not in clients:
            return Change.ABSENT
        clients.discard(client)
        keys = self._by_client.get(client)
        if keys is not None:
            keys.pop(key, None)
            if not keys:
                del self._by_client[client]
        if clients:
            return Change.REMOVED
        del self._by_key[key]
        return Change.LAST

    def drop_client(self, client: int) -> list[tuple[SeriesId, Change]]:
        """Remove every subscription of ``client``; says for each key whether it was last."""
        return [(key, self.remove(client, key)) for key in list(self._by_client.get(client, ()))]

    def subscribers(self, key: SeriesId) -> frozenset[int]:
        return frozenset(self._by_key.get(key, ()))

    def holds(self, client: int, key: SeriesId) -> bool:
        """Is ``client`` subscribed to ``key`` (without copying the key's subscribers)."""
        return client in self._by_key.get(key, ())

    def count(self, key: SeriesId) -> int:
        """How many clients hold ``key``."""
        return len(self._by_key.get(key, ()))

    def keys_of(self, client: int) -> frozenset[SeriesId]:
        return frozenset(self._by_client.get(client, ()))

    def keys(self) -> list[SeriesId]:
        return list(self._by_key)

    def pairs_for_source(self, source: str) -> list[tuple[int, SeriesId]]:
        """Every (client, key) of one provider, to replay into a restarted process."""
        return [
            (client, key)
            for key, clients in self._by_key.items()
            if key.source == source
            for client in clients
        ]

    def has(self, key: SeriesId) -> bool:
        return key in self._by_key

    def __len__(self) -> int:
        return sum(len(clients) for clients in self._by_key.values())
