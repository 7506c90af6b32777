"""The WebSocket ``Origin`` allowlist (``WS_ALLOWED_ORIGINS``).

Browsers send the page's ``Origin`` on a WebSocket upgrade and let any page open a socket
anywhere, so without this check every web page a user visits could read the hub. The
default allows the server's own origin (the ``Origin`` host equals the ``Host`` header) and
pages on localhost, and the OpenBB Workspace origins trusted for CORS (``CORS_ORIGINS``,
whose live grid opens a socket here), and the origin of ``PUBLIC_URL`` (:func:`origin_of`):
a reverse proxy or tunnel may send the server another ``Host`` than the page's (nginx's
default ``Host`` is ``proxy_pass``'s, ``127.0.0.1:8000``), and the page's own socket was
refused. A list allows the server's own origin, the Workspace
origins and those listed (localhost then only when listed); ``*`` allows every origin. A
request without ``Origin`` is not from a browser page and is allowed (authentication still
applies).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})


class OriginPolicy:
    """Decides whether a socket upgrade's ``Origin`` may connect."""

    def __init__(self, allowed: Iterable[str], trusted: Iterable[str] = ()) -> None:
        """``allowed``: ``WS_ALLOWED_ORIGINS``; ``trusted``: origins allowed besides, which
        do not replace the default (the OpenBB Workspace origins of ``CORS_ORIGINS``)."""
        origins = {_normal(origin) for origin in allowed if origin.strip()}
        self.any = "*" in origins
        self.explicit = frozenset(origins - {"*"})
        self.trusted = frozenset(_normal(origin) for origin in trusted if origin.strip())

    def allows(self, origin: str | None, host: str | None) -> bool:
        if origin is None or self.any:
            return True
        origin = _normal(origin)
        if origin in self.explicit or origin in self.trusted:
            return True
        parts = urlsplit(origin)
        if host is not None and parts.netloc == host.strip().lower():
            return True  # the server's own pages
        return not self.explicit and parts.hostname in LOCAL_HOSTS


def origin_of(url: str) -> list[str]:
    """The ``Origin`` a browser sends from a page at ``url`` (``scheme://host[:port]``, the
    scheme's default port left out), as a list: empty for no URL."""
    parts = urlsplit(url.strip())
    if not parts.scheme or not parts.hostname:
        return []
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    port = f":{parts.port}" if parts.port is not None and parts.port != default else ""
    return [f"{parts.scheme.lower()}://{host}{port}"]


def _normal(origin: str) -> str:
    return origin.strip().rstrip("/").lower()
