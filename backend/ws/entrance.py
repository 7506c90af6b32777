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
``Origin`` is refused with 403, one without valid credentials with 401, one over its
connection limit with 429, all before the WebSocket opens; an accepted socket runs as its
caller (the upstream budget and the subscriptions of its client), a frame over the request
rate is answered ``error rate_limited`` by the hub (``admit_frame``) instead of being read
more slowly, and it is closed with 1008 when its token expired (after the grace period).

It counts the WebSocket connections that ended (``departures``): the server's garbage
collection policy (``server.py``) runs a full collection after clients left.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from backend.access.guard import Access
from backend.ws.endpoint import serve_connection
from backend.ws.writers import expose_protocol, forget_protocol

WEBSOCKET_PATHS = frozenset({"/websocket/", "/websocket"})


class Entrance:
    """ASGI app: the Tradiny WebSocket directly, the rest through ``app``."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.departures = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] in WEBSOCKET_PATHS:
            access: Access = self.app.state.access
            await access.serve_socket(scope, receive, send, self._serve, paced=False)
            return
        await self.app(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        expose_protocol(scope, send)
        scope["app"] = self.app
        try:
            await serve_connection(WebSocket(scope, receive, send), self.app.state.hub)
        finally:
            forget_protocol(scope)
            self.departures += 1
