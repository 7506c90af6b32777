"""gzip for HTTP answers: Starlette's :class:`~starlette.middleware.gzip.GZipMiddleware`
compresses a response of at least :data:`MINIMUM_BYTES` for a client that sends
``Accept-Encoding: gzip`` (``Content-Encoding``, ``Vary: Accept-Encoding``, and the
compressed ``Content-Length``), at level :data:`LEVEL`, in a worker thread from 128 KiB on
(zlib lets go of the GIL), so a 5,000-bar history does not hold the event loop. The ``ETag``
of a compressed answer (the static files') is made weak: it names the file, not these
bytes, so a client cannot resume a compressed download with ``Range`` / ``If-Range`` and
splice plain bytes into it; ``If-None-Match`` still matches it, and the 304 says the weak
tag and ``Vary`` again (the client updates the headers it keeps with them).

Left alone: WebSockets (not HTTP), event streams and already-compressed types (the
middleware's own list), partial (206) and already-encoded answers, clients that refuse gzip
(``gzip;q=0``), answers under
:data:`MINIMUM_BYTES` (one TCP segment either way), and :data:`UNCOMPRESSED_PATHS`
(``/metrics``, which monitors scrape as text). Installed inside :class:`~.head.HeadAsGet`,
so that a HEAD request gets the headers its GET would get.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MINIMUM_BYTES = 1024
# A 5,000-bar /api/history (900 KB of JSON) at level 1 is 145 KB in 3 ms, at 5 117 KB in
# 7 ms, at 9 (Starlette's default) 112 KB in 34 ms: 1 keeps most of the gain for the least
# CPU, which every client shares (and the loop pays below 128 KiB).
LEVEL = 1
UNCOMPRESSED_PATHS = frozenset({"/metrics"})


class Compression:
    """ASGI middleware: gzip (above) for every HTTP path but :data:`UNCOMPRESSED_PATHS`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.gzip = GZipMiddleware(app, minimum_size=MINIMUM_BYTES, compresslevel=LEVEL)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNCOMPRESSED_PATHS or _refused(scope):
            await self.app(scope, receive, send)
            return

        async def weak_etag(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(raw=message["headers"])
                etag = headers.get("etag")
                if etag and etag.startswith('"'):
                    if "content-encoding" in headers:
                        headers["etag"] = "W/" + etag
                    elif message["status"] == 304 and _revalidates_weak(scope, etag):
                        # what the compressed 200 said (RFC 9110 15.4.5): the client
                        # keeps these headers for the gzipped body it holds
                        headers["etag"] = "W/" + etag
                        headers.add_vary_header("Accept-Encoding")
            await send(message)

        await self.gzip(scope, receive, weak_etag)


def _revalidates_weak(scope: Scope, etag: str) -> bool:
    """Whether the request's ``If-None-Match`` names ``etag`` made weak: the client holds
    the compressed answer, whose 304 must say so (not the file's strong tag, which would
    let it resume that body with plain bytes)."""
    for name, value in scope.get("headers", ()):
        if name == b"if-none-match" and ("W/" + etag) in value.decode("latin-1"):
            return True
    return False


def _refused(scope: Scope) -> bool:
    """Whether the client's ``Accept-Encoding`` names gzip with ``q=0`` (RFC 9110 12.5.3:
    not acceptable), which the middleware, looking for the word, would take for a yes."""
    for name, value in scope.get("headers", ()):
        if name != b"accept-encoding":
            continue
        for item in value.decode("latin-1").lower().split(","):
            coding, _, params = item.partition(";")
            if coding.strip() in ("gzip", "x-gzip") and _zero_quality(params):
                return True
    return False


def _zero_quality(params: str) -> bool:
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip() == "q":
            try:
                return float(value) == 0
            except ValueError:
                return False
    return False
