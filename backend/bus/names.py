"""The names of every Redis key and channel of one deployment, under ``BUS_PREFIX``.

- ``{p}:lease:{source}``: the node id holding the provider's lease (``SET NX PX``).
- ``{p}:active:{source}``: the holder's :class:`~backend.bus.codec.Active` announcement,
  expiring with the lease (hubs that start later read it).
- ``{p}:demand:{source}``: a sorted set of ``hub\\x1fsymbol\\x1finterval`` members scored by
  their expiry (Redis time, ms): what the hubs hold, each entry renewed by its hub.
- ``{p}:demand-changed:{source}``: pub/sub; a hub changed its demand (or forwards a
  ``NoUpdate``): the active node reads the demand at once instead of at its next tick.
- ``{p}:updates:{source}``: pub/sub; the active node publishes each event batch once.
- ``{p}:history:{source}``: a list of history requests, popped by the active node.
- ``{p}:reply:{hub}``: pub/sub; the answers to one hub's history requests.
- ``{p}:datasets:{source}`` / ``{p}:dataset:{request}``: ``populate.py --from-bus``.
"""

from __future__ import annotations

from dataclasses import dataclass

from backend.model import intervals

SEPARATOR = "\x1f"
MAX_SYMBOL_CHARS = 200  # what a request may name (backend.wire.protocol.MAX_FIELD_CHARS)


@dataclass(frozen=True, slots=True)
class Names:
    prefix: str

    def lease(self, source: str) -> str:
        return f"{self.prefix}:lease:{source}"

    def active(self, source: str) -> str:
        return f"{self.prefix}:active:{source}"

    def demand(self, source: str) -> str:
        return f"{self.prefix}:demand:{source}"

    def demand_changed(self, source: str) -> str:
        return f"{self.prefix}:demand-changed:{source}"

    def updates(self, source: str) -> str:
        return f"{self.prefix}:updates:{source}"

    def history(self, source: str) -> str:
        return f"{self.prefix}:history:{source}"

    def reply(self, hub: str) -> str:
        return f"{self.prefix}:reply:{hub}"

    def datasets(self, source: str) -> str:
        return f"{self.prefix}:datasets:{source}"

    def dataset(self, request: str) -> str:
        return f"{self.prefix}:dataset:{request}"


def demand_member(hub: str, symbol: str, interval: str) -> str:
    return f"{hub}{SEPARATOR}{symbol}{SEPARATOR}{interval}"


def parse_member(member: bytes | str) -> tuple[str, str, str] | None:
    """``(hub, symbol, interval)`` of a demand member; None for anything else: not three
    parts, a symbol longer than a request may name, or an interval that is not one of the
    14 (a provider's stream thread need not survive ``AAA zz``)."""
    text = member.decode("utf-8", "replace") if isinstance(member, bytes) else member
    parts = text.split(SEPARATOR)
    if len(parts) != 3 or not all(parts):
        return None
    hub, symbol, interval = parts
    if len(symbol) > MAX_SYMBOL_CHARS or not intervals.is_interval(interval):
        return None
    return hub, symbol, interval
