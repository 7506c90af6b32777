"""Where alert deliveries may go: the origin of a URL (what logs and limits name) and the
opt-in "public only" policy for client-chosen URLs (``ALERT_PUSH_PUBLIC_ONLY``).

By default any http(s) URL with a host is a valid push endpoint or client webhook (a fake
push service on loopback included). With the policy on, a client-chosen URL must be
``https://`` and reach only public (globally routable) addresses: a host written as an
address is checked when the alert is made, a name at every connection through
:class:`backend.alerts.resolver.PublicResolver`, so a name that later resolves to a private
address (DNS rebinding) is refused too. Owns no I/O (the resolver, which imports aiohttp, is
imported only by the delivery's HTTP client).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> str:
    """The origin of ``url`` as RFC 6454 writes it: scheme and host in lower case, the port
    only when it is not the scheme's default (VAPID's ``aud`` must be exactly this, RFC 8292
    section 2). Push URLs carry a secret token in the path; userinfo is dropped too."""
    scheme, _, rest = url.partition("://")
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0].rpartition("@")[2]
    scheme = scheme.lower()
    try:
        parts = urlsplit(f"{scheme}://{authority}")
        host, port = parts.hostname, parts.port
    except ValueError:  # not a URL we can take apart: as written, without the path
        return f"{scheme}://{authority}"
    if host is None:
        return f"{scheme}://{authority}"
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def host_of(url: str) -> str | None:
    """The host of an http(s) URL, or None when it has none or does not parse."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not host:
        return None
    return host


def public_problem(url: str) -> str | None:
    """Why ``url`` is not allowed under the public-only policy, or None if it is (a host
    name is checked later, when it resolves)."""
    if urlsplit(url).scheme != "https":
        return "must be an https:// URL on this server"
    host = host_of(url)
    if host is None:
        return "has no host"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:  # a shorthand IPv4 address ("127.1", "2130706433") the C library would take
            address = ipaddress.ip_address(socket.inet_aton(host))
        except OSError:
            return None if host.rstrip(".").lower() != "localhost" else "is not a public host"
    return None if is_public(address) else "is not a public address"


NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Globally routable, also the IPv4 address an IPv6 one carries (IPv4-mapped and
    -compatible, 6to4, NAT64), which ``is_global`` alone lets through for some."""
    if not address.is_global:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        packed = address.packed
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and (address in NAT64 or packed[:12] == bytes(12)):
            embedded = ipaddress.IPv4Address(packed[12:])
        if embedded is not None and not embedded.is_global:
            return False
    return True
