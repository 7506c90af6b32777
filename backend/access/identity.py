"""Who a caller is, once authenticated: an :class:`Identity`, and the caller of the
current task (a context variable that the guard sets and the upstream budget reads).

Owns the permission check on a series (``allows``). Not: how a credential is checked
(``credentials``), nor what a caller may spend (``fairuse``).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from backend.model.bars import SeriesId


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller. ``client``: the fair-use key (a key's or token's subject,
    else the address); ``sources`` / ``symbols``: what it may read (None: everything;
    symbols as ``name`` or ``source:name``); ``expires_at``: UTC seconds, or None;
    ``connection``: set on a socket's caller, so that without credentials (where every
    caller from one address is one client) each socket has its own upstream budget."""

    client: str
    address: str
    tier: str = "default"
    sources: frozenset[str] | None = None
    symbols: frozenset[str] | None = None
    expires_at: float | None = None
    authenticated: bool = False
    connection: str = ""

    @property
    def budget_key(self) -> str:
        """Whose upstream budget pays: the credential's client, else the socket."""
        if self.client == self.address and self.connection:
            return self.connection
        return self.client

    def allows(self, source: str, name: str) -> bool:
        """Whether this caller may read ``source:name``."""
        if self.sources is not None and source not in self.sources:
            return False
        if self.symbols is None:
            return True
        return name in self.symbols or f"{source}:{name}" in self.symbols


ANONYMOUS = Identity(client="anonymous", address="")

# The caller of the current task: set per HTTP request and per WebSocket connection (the
# reply jobs a connection starts inherit it), read where an upstream call is charged.
current: contextvars.ContextVar[Identity] = contextvars.ContextVar(
    "candlewire_caller", default=ANONYMOUS
)


def may_read(key: SeriesId) -> bool:
    """Whether the current caller may read ``key`` (a ``Limits.may_read`` for validation)."""
    return current.get().allows(key.source, key.name)


def current_client() -> str:
    """The current caller's client: its key's or token's, else its address."""
    return current.get().client
