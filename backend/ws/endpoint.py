"""One WebSocket connection at ``/websocket/``: its reader loop and its writer.

The reader parses frames and hands them to the hub. The writer (``backend.ws.writers``)
moves the client's outbox to the socket; nothing else writes to it, so a slow client slows
nobody else. The hub closes a client that cannot keep up with code 1013.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket, WebSocketDisconnect

from backend.wire import protocol
from backend.ws.writers import SocketWriter, writer_for

if TYPE_CHECKING:
    from backend.hub.hub import Client, Hub

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT = 2.0
CLOSE_MESSAGE_TOO_BIG = 1009
# Frames of one client are answered concurrently (a slow history request must not hold up
# a search or another chart); beyond this many in flight, reading waits.
MAX_FRAMES_IN_FLIGHT = 16


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
    __slots__ = ("client", "closing", "hub", "in_flight", "slots", "websocket", "writer")

    def __init__(self, websocket: WebSocket, hub: Hub) -> None:
        self.websocket = websocket
        self.hub = hub
        self.client: Client | None = None
        self.writer: SocketWriter | None = None
        self.closing = False
        self.in_flight: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(MAX_FRAMES_IN_FLIGHT)

    async def read_loop(self) -> None:
        assert self.client is not None
        max_bytes = self.hub.settings.MAX_FRAME_BYTES
        while not self.closing:
            text = await receive_frame(self.websocket)
            if text is None:
                return
            if len(text) > max_bytes:
                await self._close(CLOSE_MESSAGE_TOO_BIG, "frame too large")
                return
            await self.slots.acquire()
            task = asyncio.get_running_loop().create_task(self._handle(text))
            self.in_flight.add(task)
            task.add_done_callback(self._frame_done)

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
        finally:
            self.slots.release()

    def _frame_done(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "client %s: a request failed",
                self.client.id if self.client else "?",
                exc_info=task.exception(),
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
        for task in list(self.in_flight):
            task.cancel()
        if self.writer is not None:
            self.writer.stop()


async def receive_frame(websocket: WebSocket) -> str | bytes | None:
    """The next text (or binary) frame of ``websocket``; None when the client is gone."""
    try:
        message = await websocket.receive()
    except (WebSocketDisconnect, RuntimeError):
        return None
    if message["type"] == "websocket.disconnect":
        return None
    text: str | bytes | None = message.get("text")
    if text is None:
        text = message.get("bytes") or b""
    return text


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("closing a client failed", exc_info=task.exception())
