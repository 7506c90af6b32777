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
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket, WebSocketDisconnect

from backend.wire import protocol
from backend.ws.writers import SocketWriter, writer_for

if TYPE_CHECKING:
    from backend.hub.hub import Client, Hub

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT = 2.0
CLOSE_MESSAGE_TOO_BIG = 1009


async def serve_connection(websocket: WebSocket, hub: Hub) -> None:
    """Serve one client until it disconnects or is closed by the hub."""
    await websocket.accept()
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
    try:
        await connection.read_loop()
    finally:
        hub.remove_client(client)
        connection.stop()


class _Connection:
    __slots__ = ("client", "closing", "hub", "websocket", "writer")

    def __init__(self, websocket: WebSocket, hub: Hub) -> None:
        self.websocket = websocket
        self.hub = hub
        self.client: Client | None = None
        self.writer: SocketWriter | None = None
        self.closing = False

    async def read_loop(self) -> None:
        assert self.client is not None
        async for text in frames(self.websocket, self.hub.settings.MAX_FRAME_BYTES, self._close):
            await self._handle(text)
            if self.closing:
                return

    async def _handle(self, text: str | bytes) -> None:
        assert self.client is not None
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

    def kick(self, code: int, reason: str) -> None:
        """Close this client from the hub (it could not keep up)."""
        if self.closing:
            return
        self.closing = True
        if self.writer is not None:
            self.writer.close(code, reason)  # bounded, even when the client never reads
            return
        task = asyncio.get_running_loop().create_task(self._close(code, reason))
        task.add_done_callback(_log_failure)

    async def _close(self, code: int, reason: str) -> None:
        self.closing = True
        with contextlib.suppress(TimeoutError, RuntimeError, OSError, WebSocketDisconnect):
            await asyncio.wait_for(self.websocket.close(code, reason), CLOSE_TIMEOUT)

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
    the coroutine it awaited) kept two frames, about 450 bytes more."""

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
        try:
            message = await self.websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            message = {"type": "websocket.disconnect"}
        if message["type"] == "websocket.disconnect":
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
