"""The HTTP front door: what uvicorn lacks for a server facing untrusted clients.

uvicorn (httptools) buffers request heads of any size and waits for an unfinished head
forever: a slowloris client holds a connection, and a few megabytes of header lines are
kept in memory. :func:`guarded_http` makes uvicorn's protocol class with two limits: a
request head (request line and headers) must be complete within ``header_timeout`` seconds
of its first byte or of the connection (else the connection is closed), and may be at most
``max_head_bytes`` long (else ``431 Request Header Fields Too Large`` and close; a body or
pipelined requests read with it do not count). uvicorn
itself provides the keep-alive timeout and ``limit_concurrency`` (``server.py``). After a
WebSocket upgrade the HTTP protocol object is let go at once (see
:meth:`GuardedHttp.handle_websocket_upgrade`).

:class:`AcceptErrors` is the event loop's exception handler: when accepting fails because
the process is out of file descriptors (EMFILE), asyncio reports it with a traceback on
every try of every burst (tens of thousands a second: it retries up to the backlog per
wake-up and schedules a retry for each); this logs one line per interval with the count
instead, and keeps quiet about the retries that outlive the listening socket.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)

ACCEPT_LOG_INTERVAL = 10.0
_HEAD_BODY = b'{"error":"header_too_large","message":"the request line or headers are too long"}'
HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_HEAD_BODY), _HEAD_BODY)
)


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with a timeout and a size limit on request heads."""

    header_timeout = 10.0
    max_head_bytes = 65_536

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._head_tail = b""
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm_head_timer()  # the next request on a kept-alive connection
        if self._head_timer is not None:
            self._head_bytes += self._head_part(data)
            if self._head_bytes > self.max_head_bytes:
                self._refuse_head()
                return
        super().data_received(data)

    def _head_part(self, data: bytes) -> int:
        """How many bytes of ``data`` belong to the request head being read: up to the blank
        line that ends it (a body or pipelined requests may follow it in the same read),
        found also when it straddles two reads."""
        seen = self._head_tail + data
        end = seen.find(b"\r\n\r\n")
        if end < 0:
            self._head_tail = seen[-3:]
            return len(data)
        self._head_tail = b""
        return max(0, end + 4 - (len(seen) - len(data)))

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        super().on_headers_complete()

    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        # The socket now belongs to the WebSocket protocol. This object and its parser
        # refer to each other (uvicorn breaks that in ``connection_lost``, which it never
        # gets after an upgrade): break it here, so that it goes now instead of staying,
        # 3 KB per connection, until a full garbage collection.
        self.parser = None  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._head_bytes = 0
        self._head_tail = b""  # the last bytes of the head so far (its end may straddle)
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._head_bytes = 0
        self._head_tail = b""

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _refuse_head(self) -> None:
        self._disarm_head_timer()
        if not self.transport.is_closing():
            self.transport.write(HEAD_TOO_LARGE)
            self.transport.close()


def guarded_http(header_timeout: float, max_head_bytes: int) -> type[GuardedHttp]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these limits."""
    return type(
        "GuardedHttp",
        (GuardedHttp,),
        {"header_timeout": header_timeout, "max_head_bytes": max_head_bytes},
    )


class AcceptErrors:
    """An event loop exception handler: accept failures (out of file descriptors) become
    one WARNING per ``interval`` with a count; everything else goes to the default."""

    def __init__(self, interval: float = ACCEPT_LOG_INTERVAL) -> None:
        self.interval = interval
        self.held = 0
        self.last = -interval

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if _stale_accept_retry(context):
            self.held += 1
            return
        if not (isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)):
            loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - self.last < self.interval:
            self.held += 1
            return
        logger.warning(
            "cannot accept connections: %s (%d more in the last %.0f s); raise the file "
            "descriptor limit (ulimit -n) or lower MAX_CLIENTS",
            exc.strerror,
            self.held,
            min(now - self.last, self.interval),
        )
        self.held = 0
        self.last = now


def _stale_accept_retry(context: dict[str, Any]) -> bool:
    """asyncio schedules a retry of accepting for every failed accept of a burst (up to the
    backlog, thousands); those still pending when the listening socket closes fail with
    "Invalid file descriptor". Nothing is lost: they are counted, not logged."""
    exc = context.get("exception")
    return isinstance(exc, (ValueError, OSError)) and "_start_serving" in repr(
        context.get("handle")
    )
