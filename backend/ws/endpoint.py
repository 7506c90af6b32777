"""One WebSocket connection at ``/websocket/``: its reader loop and its writer.

The reader hands frames to the hub one at a time, in the order received: the hub applies
a frame's subscription effects before the next frame is read, and runs the replies that
need I/O as the client's reply jobs (a slow history does not hold up other charts; when
too many are pending, reading waits). The writer (``backend.ws.writers``) moves the
client's outbox to the socket; nothing else writes to it, so a slow client slows nobody
else. The hub closes a client that cannot keep up with code 1013.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.types import Message, Scope
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from backend.wire import protocol
from backend.ws.writers import SCOPE_KEY, SocketWriter, on_connection_lost, writer_for

if TYPE_CHECKING:
    from backend.hub.hub import Client, Hub

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT = 2.0
CLOSE_MESSAGE_TOO_BIG = 1009
_DISCONNECT: Message = {"type": "websocket.disconnect"}


async def serve_connection(websocket: WebSocket, hub: Hub) -> None:
    """Serve one client until it disconnects or is closed by the hub."""
    await websocket.accept()
    release_scope(websocket.scope)
    peer = f"{websocket.client.host}:{websocket.client.port}" if websocket.client else "?"
    connection = _Connection(websocket, hub)
    client = hub.add_client(peer, connection.kick)
    if client is None:
        await websocket.send_text(
            protocol.error_message(
                "limit_reached", "Error: Max simultaneous connections reached"
            ).decode()
        )
        await websocket.close(1013, "server full")
        return
    connection.client = client
    connection.writer = writer_for(websocket, client.outbox, f"client {client.id}")
    compact_attributes(websocket.scope.get(SCOPE_KEY))
    # A client that left is let go at once, not when the reader reaches the end behind
    # the frames still queued: the reader may wait for a reply slot (its earlier requests'
    # histories) for minutes, holding the client's subscriptions and its connection slot.
    # Removed, its reply jobs are cancelled and the rest of its requests are not served.
    loop = asyncio.get_running_loop()

    def lost() -> None:
        loop.call_soon(hub.remove_client, client)

    on_connection_lost(websocket, lost)
    try:
        # The read loop is here, not in a method: one coroutine frame less per connection.
        async for text in frames(websocket, hub.settings.MAX_FRAME_BYTES, connection.close):
            await connection.handle(text)
            del text  # an idle connection keeps no request
            if connection.closing or client.id not in hub.clients:
                return
    finally:
        on_connection_lost(websocket, None)
        hub.remove_client(client)
        connection.stop()


def hold_keepalive(websocket: WebSocket) -> Any:
    """Stop uvicorn's keep-alive pings of this socket while the hub handles one of its
    frames, and return the protocol object whose ``start_keepalive`` restarts them (None
    when there is nothing to stop). The hub may wait a long time for a reply slot there
    (histories of a slow provider, up to ``HISTORY_TIMEOUT`` each), and meanwhile the next
    frame pauses uvicorn's reading of the socket, so the client's pongs stay unread behind
    it: the keep-alive closed a client that answered every ping with 1011 "keepalive ping
    timeout" after one ping interval and timeout. A client whose frame is being handled
    has just shown it is there; a lost connection still ends it at once."""
    protocol = websocket.scope.get(SCOPE_KEY)
    if protocol is None or getattr(protocol, "ping_interval", None) is None:
        return None
    stop = getattr(protocol, "stop_keepalive", None)
    if stop is None or not hasattr(protocol, "start_keepalive"):
        return None
    stop()
    return protocol


def resume_keepalive(protocol: Any) -> None:
    """Restart the pings :func:`hold_keepalive` stopped, unless the connection is ending
    (its timer would keep the protocol object for a ping interval)."""
    transport = getattr(protocol, "transport", None)
    if getattr(protocol, "close_sent", False) or transport is None or transport.is_closing():
        return
    protocol.start_keepalive()


def compact_attributes(owner: object) -> None:
    """Copy the attribute dict of uvicorn's protocol object once it is set up: it grew to
    hold its 37 attributes in a table of 1.6 KB, and a copy sized to fit is 0.8 KB (the
    same attributes; any later assignment replaces a value)."""
    if owner is not None and type(getattr(owner, "__dict__", None)) is dict:
        owner.__dict__ = dict(owner.__dict__)


def release_scope(scope: Scope) -> None:
    """Give back what the ASGI scope of an accepted socket holds only for its handshake:
    the request headers (a list of byte pairs, about 0.8 KB; access control and uvicorn's
    proxy headers read them before), the offered subprotocols and the denial-response
    extension (which only applies before the accept)."""
    scope["headers"] = ()
    scope["subprotocols"] = ()
    scope.pop("extensions", None)


class _Connection:
    __slots__ = ("client", "closing", "hub", "websocket", "writer")

    def __init__(self, websocket: WebSocket, hub: Hub) -> None:
        self.websocket = websocket
        self.hub = hub
        self.client: Client | None = None
        self.writer: SocketWriter | None = None
        self.closing = False

    async def handle(self, text: str | bytes) -> None:
        """Hand one frame to the hub; a failure costs this answer, not the connection."""
        assert self.client is not None
        keepalive = hold_keepalive(self.websocket)
        try:
            await self.hub.handle_frame(self.client, text)
        except Exception:  # a bug must cost one answer, not the connection: log, tell, go on
            logger.exception("client %s: request failed: %.200r", self.client.id, text)
            self.hub.metrics.inc("candlewire_internal_errors_total")
            self.hub.send(
                self.client,
                protocol.error_message(
                    "internal_error", "the server failed to answer this request; it was logged"
                ),
            )
        finally:
            if keepalive is not None:
                resume_keepalive(keepalive)

    def kick(self, code: int, reason: str) -> None:
        """Close this client from the hub (it could not keep up)."""
        if self.closing:
            return
        self.closing = True
        if self.writer is not None:
            self.writer.close(code, reason)  # bounded, even when the client never reads
            return
        task = asyncio.get_running_loop().create_task(self.close(code, reason))
        task.add_done_callback(_log_failure)

    async def close(self, code: int, reason: str) -> None:
        self.closing = True
        with contextlib.suppress(TimeoutError, RuntimeError, OSError, WebSocketDisconnect):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.websocket.close(code, reason)

    def stop(self) -> None:
        """The connection ended (its reply jobs were cancelled by ``hub.remove_client``)."""
        if self.writer is not None:
            self.writer.stop()


def frames(
    websocket: WebSocket, max_bytes: int, close: Callable[[int, str], Awaitable[None]]
) -> Frames:
    """The client's frames until it leaves; a frame over ``max_bytes`` closes the socket
    with 1009 (``close``) and ends them. Every socket route reads its frames here."""
    return Frames(websocket, max_bytes, close)


class Frames:
    """The async iterator of :func:`frames`: an object of four slots that every idle
    connection keeps while it waits for its next frame, where an async generator (and
    the coroutine it awaited) kept two frames, about 450 bytes more. It awaits the ASGI
    ``receive`` itself, with the state changes of starlette's ``WebSocket.receive`` (whose
    coroutine would be one more frame per idle connection)."""

    __slots__ = ("close", "done", "max_bytes", "websocket")

    def __init__(
        self, websocket: WebSocket, max_bytes: int, close: Callable[[int, str], Awaitable[None]]
    ) -> None:
        self.websocket = websocket
        self.max_bytes = max_bytes
        self.close = close
        self.done = False

    def __aiter__(self) -> Frames:
        return self

    async def __anext__(self) -> str | bytes:
        if self.done:
            raise StopAsyncIteration
        websocket = self.websocket
        message: Message = _DISCONNECT
        if websocket.client_state is WebSocketState.CONNECTED:
            try:  # not contextlib.suppress: its object would be kept while the socket idles
                message = await websocket._receive()
            except (WebSocketDisconnect, RuntimeError):
                message = _DISCONNECT  # the connection is gone
        if message["type"] != "websocket.receive":  # a disconnect, or what cannot follow
            websocket.client_state = WebSocketState.DISCONNECTED
            self.done = True
            raise StopAsyncIteration
        text: str | bytes | None = message.get("text")
        if text is None:
            text = message.get("bytes") or b""
        if len(text) > self.max_bytes:
            self.done = True
            await self.close(CLOSE_MESSAGE_TOO_BIG, "frame too large")
            raise StopAsyncIteration
        return text


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("closing a client failed", exc_info=task.exception())
