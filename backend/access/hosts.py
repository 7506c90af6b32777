"""The ``Host`` allowlist (``ALLOWED_HOSTS``): what stops DNS rebinding.

With ``AUTH=none`` the server trusts whoever reaches it, which on ``127.0.0.1`` is the
machine's user. A web page that user visits can reach it too: its site makes its own DNS
name resolve to ``127.0.0.1`` (DNS rebinding), and the browser then takes the server for
that page's own origin. The ``Origin`` check (:mod:`.origins`) and CORS allow a page's own
origin, so that page could read every answer and open the hub's socket (alerts with
webhooks, AI chat on the operator's LLM key). What still names the page's site is the
``Host`` header, which is the name the browser resolved.

:class:`HostPolicy` refuses a request whose ``Host`` is a name under a domain (a dot in it)
that is not this server's, which is what a rebinding page sends: the page's site needs a
name in a public domain it controls. Served are an IP address (no DNS, nothing to rebind),
``localhost``, a name in a domain no public DNS delegates (:data:`PRIVATE_SUFFIXES`:
``.localhost``, ``.local``, ``.internal``, ``.lan``, ``.test``, ...), this machine's host name,
``PUBLIC_URL``'s host, one of ``ALLOWED_HOSTS`` (``*.example.com``: its subdomains; ``*``:
every host), and a single-label name (``mybox``, or the ``x`` a script writes: no web site
can make one resolve for a browser). A request without ``Host``
(HTTP/1.0, no browser sends one) is served. The check applies with ``AUTH=none``, where nothing else
stops such a page, or wherever ``ALLOWED_HOSTS`` is set.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

LOCAL_NAMES = frozenset({"localhost"})
PRIVATE_SUFFIXES = (
    ".localhost",
    ".local",
    ".internal",
    ".lan",
    ".home.arpa",
    ".localdomain",
    ".home",
    ".corp",
    ".test",
    ".example",
    ".invalid",
)
"""Domains no public DNS delegates (special-use names: RFC 6761's ``.localhost``,
``.local``, ``.test``, ``.example`` and ``.invalid``; ICANN's ``.internal`` for private
networks; and those kept from delegation): a web site cannot own a name in them, so a name
there (``mybox.lan``, ``hub.default.svc.cluster.local``, ``candlewire.test``) is served."""


def host_name(header: str) -> str | None:
    """The host of a ``Host`` header: lower case, without its port or a trailing dot;
    IPv6 without brackets. ``None`` when it is not a host (empty, a bracket unclosed, a port
    that is not a number)."""
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        rest = value[end + 1 :] if end > 0 else ""
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return value[1:end] or None
    name, colon, port = value.rpartition(":")
    if not colon:
        name = value
    elif not port.isdigit() or ":" in name:
        return None
    name = name.rstrip(".")
    return name or None


def is_address(name: str) -> bool:
    """Whether ``name`` (from :func:`host_name`) is an IP address literal."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def machine_names() -> frozenset[str]:
    """This machine's own name (``socket.gethostname``, no name service asked)."""
    found = host_name(socket.gethostname())
    return frozenset({found}) if found else frozenset()


class HostPolicy:
    """Decides whether a request's ``Host`` names this server (see the module docstring)."""

    def __init__(self, allowed: Iterable[str], public_url: str, enforce: bool) -> None:
        """``allowed``: ``ALLOWED_HOSTS``; ``public_url``: ``PUBLIC_URL``; ``enforce``: check
        even with ``allowed`` empty (``AUTH=none``)."""
        entries = {entry.strip().lower().rstrip(".") for entry in allowed if entry.strip()}
        self.enforce = enforce or bool(entries)
        self.any = "*" in entries
        self.suffixes = tuple(entry[1:] for entry in entries if entry.startswith("*."))
        public = urlsplit(public_url).hostname if public_url else None
        exact = {entry for entry in entries if not entry.startswith("*")}
        self.names = frozenset({*exact, *LOCAL_NAMES, *machine_names(), *filter(None, [public])})

    def allows(self, header: str | None) -> bool:
        if not self.enforce or self.any or header is None:
            return True
        name = host_name(header)
        if name is None:
            return False
        return (
            "." not in name
            or name in self.names
            or name.endswith(PRIVATE_SUFFIXES)
            or name.endswith(self.suffixes)
            or is_address(name)
        )


def refused_host(header: str) -> str:
    """The refusal of a ``Host``, naming it (cut to 100 characters) and the setting."""
    return (
        f"the Host {header[:100]!r} is not a name of this server: add it to ALLOWED_HOSTS "
        "(with AUTH=none only this machine's names and IP addresses are served, so that "
        "no web page can reach the server through a DNS name of its own)"
    )
