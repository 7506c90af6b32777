"""The hub's ASGI entry point: ``/websocket/`` goes straight to the connection handler,
everything else to the FastAPI application.

A subscribed client stays connected for hours, and every layer between the server and the
handler keeps a coroutine frame (and some keep exit stacks and scope copies) alive for all
that time: about 6 KB per idle client through FastAPI's middleware stack and router. The
Tradiny socket needs none of it (no CORS for WebSockets, no dependencies, its own error
handling), so this small dispatcher serves it directly. It also sees the server's own
``send``, which is how :mod:`backend.ws.writers` finds uvicorn's protocol object. The
FastAPI app still routes ``/websocket/`` itself, for use under another entry point.

Access control comes first (:class:`backend.access.guard.Access`): an upgrade from a foreign
``Origin`` is refused with 403, one without valid credentials with 401 (429 once its
address made too many such attempts), one over its connection limit with 429, all before
the WebSocket opens; an accepted socket runs as its
caller (the upstream budget and the subscriptions of its client), a frame over the request
rate is answered ``error rate_limited`` by the hub (``admit_frame``) instead of being read
more slowly, and it is closed with 1008 when its token expired (after the grace period).

It counts the WebSocket connections that ended (``departures``): the server's garbage
collection policy (``server.py``) runs a full collection after clients left.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, cast

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from uvicorn._types import ASGI3Application
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from backend.access.guard import Access
from backend.ws.endpoint import serve_connection
from backend.ws.writers import expose_protocol, forget_protocol

WEBSOCKET_PATHS = frozenset({"/websocket/", "/websocket"})


class Entrance:
    """ASGI app: the Tradiny WebSocket directly, the rest through ``app``."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.departures = 0
        self._proxies: Callable[..., Coroutine[Any, Any, None]] | None = None

    def trust_proxies(self, trusted_hosts: list[str] | str) -> None:
        """Apply uvicorn's ``X-Forwarded-For`` / ``-Proto`` rewrite of the scope here, for
        a server whose uvicorn ``proxy_headers`` is off (``server.py``): uvicorn's
        middleware stays suspended in a coroutine for a socket's whole life (a frame per
        idle connection); here its rewrite runs to completion before the app is called."""
        self._proxies = ProxyHeadersMiddleware(cast(ASGI3Application, _rewritten), trusted_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._proxies is not None:
            _run_at_once(self._proxies(scope, receive, send))
        if scope["type"] != "websocket" or scope["path"] not in WEBSOCKET_PATHS:
            await self.app(scope, receive, send)
            return
        # The socket is served in this coroutine, with access control's admit/release pair
        # rather than its serve_socket: each coroutine suspended for the connection's life
        # is a frame per idle connection.
        access: Access = self.app.state.access
        admitted = await access.admit_socket(scope, send)
        if admitted is None:
            return
        expose_protocol(scope, send)
        scope["app"] = self.app
        try:
            await serve_connection(WebSocket(scope, receive, send), self.app.state.hub)
        finally:
            forget_protocol(scope)
            self.departures += 1
            access.release_socket(admitted)


async def _rewritten(scope: Scope, receive: Receive, send: Send) -> None:
    """The app behind :meth:`Entrance.trust_proxies`' middleware: the scope is rewritten."""


def _run_at_once(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that never suspends (uvicorn's proxy-header middleware calling
    :func:`_rewritten`) to its end, now."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise RuntimeError("uvicorn's proxy headers middleware suspended")
