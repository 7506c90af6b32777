"""Writers that move a client's outbox onto its WebSocket.

Fan-out is the hot path of the hub: every update goes to every subscriber. Sending each
frame through the ASGI ``send`` coroutine chain (Starlette, then uvicorn, then the
websockets state machine, then one socket write) costs more than everything else the hub
does, so when the server is uvicorn's ``websockets-sansio`` protocol the
:class:`DirectWriter` skips that chain: the outbox wakes it, it runs once per event-loop
turn, and it writes everything pending, frames the hub built once for all subscribers,
with one ``transport.write``. Nothing is awaited per frame and idle clients have no task.

* No extension negotiated (the usual case for trading clients and scripts): the frames
  are written as they are.
* Compression negotiated (browsers offer permessage-deflate): each payload goes through
  this connection's websockets protocol object, which compresses it, still one write.
* Transport paused (the client reads slower than we write): frames stay in the outbox,
  where forming bars conflate and the hub's slow-client policy sees them; a task waits
  for the transport to drain and then writes.

Any other ASGI server gets the :class:`AsgiWriter`: one task per client awaiting
``send_text`` per frame, the portable path. :func:`expose_protocol`, called by the ASGI
entry point (``backend.ws.entrance``), lets the endpoint find uvicorn's protocol object.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol as Interface

from starlette.types import Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.protocol import State

from backend.wire.frames import payload_of
from backend.wire.outbox import Outbox

logger = logging.getLogger(__name__)

SCOPE_KEY = "candlewire.ws_protocol"
# What DirectWriter uses of uvicorn's protocol object (uvicorn 0.54); without them, the
# portable writer is used.
_PROTOCOL_ATTRIBUTES = ("transport", "writable", "conn", "close_sent", "disconnected")


class SocketWriter(Interface):
    """What a connection needs from its writer."""

    def wake(self) -> None:
        """The outbox has frames (called by the outbox; must not block)."""

    def stop(self) -> None:
        """Write nothing more (the connection is closing or gone)."""


def expose_protocol(scope: Scope, send: Send) -> None:
    """Put uvicorn's websockets-sansio protocol object of a WebSocket connection (the owner
    of the server's ``send``) in its scope under :data:`SCOPE_KEY`; nothing under any other
    server. Call it with the ``send`` the server gave, before any middleware wraps it."""
    owner = getattr(send, "__self__", None)
    if isinstance(owner, WebSocketsSansIOProtocol):
        scope[SCOPE_KEY] = owner


def writer_for(websocket: WebSocket, outbox: Outbox, label: str) -> SocketWriter:
    """The fastest writer that is correct for this connection; it is woken by ``outbox``."""
    protocol = websocket.scope.get(SCOPE_KEY)
    writer: SocketWriter
    if isinstance(protocol, WebSocketsSansIOProtocol) and all(
        hasattr(protocol, name) for name in _PROTOCOL_ATTRIBUTES
    ):
        writer = DirectWriter(protocol, outbox, label)
    else:
        writer = AsgiWriter(websocket, outbox, label)
    outbox.set_wake(writer.wake)
    return writer


class DirectWriter:
    """Writes pending frames straight to uvicorn's transport, once per loop turn."""

    __slots__ = (
        "_compressed",
        "_label",
        "_outbox",
        "_protocol",
        "_scheduled",
        "_stopped",
        "_waiter",
    )

    def __init__(self, protocol: WebSocketsSansIOProtocol, outbox: Outbox, label: str) -> None:
        self._protocol = protocol
        self._outbox = outbox
        self._label = label
        self._compressed = bool(protocol.conn.extensions)
        self._scheduled = False
        self._stopped = False
        self._waiter: asyncio.Task[None] | None = None

    def wake(self) -> None:
        if self._scheduled or self._waiter is not None or self._stopped:
            return
        self._scheduled = True
        asyncio.get_running_loop().call_soon(self._flush)

    def stop(self) -> None:
        self._stopped = True
        if self._waiter is not None:
            self._waiter.cancel()
            self._waiter = None

    def _flush(self) -> None:
        self._scheduled = False
        if self._stopped:
            return
        protocol = self._protocol
        transport = protocol.transport
        if (
            protocol.disconnected
            or protocol.close_sent
            or transport.is_closing()
            or protocol.conn.state is not State.OPEN
        ):
            self._outbox.drain()  # the client is gone or closing: nobody will read these
            return
        if not protocol.writable.is_set():
            self._waiter = asyncio.get_running_loop().create_task(self._when_writable())
            return
        frames = self._outbox.drain()
        if not frames:
            return
        if self._compressed:
            conn = protocol.conn
            try:
                for frame in frames:
                    conn.send_text(payload_of(frame))
            except InvalidState:
                return
            transport.write(b"".join(conn.data_to_send()))
        elif len(frames) == 1:
            transport.write(frames[0])
        else:
            transport.write(b"".join(frames))

    async def _when_writable(self) -> None:
        try:
            await self._protocol.writable.wait()
        finally:
            self._waiter = None
        self._flush()


class AsgiWriter:
    """The portable writer: a task awaiting the ASGI ``send_text`` for every frame."""

    __slots__ = ("_label", "_outbox", "_ready", "_task", "_websocket")

    def __init__(self, websocket: WebSocket, outbox: Outbox, label: str) -> None:
        self._websocket = websocket
        self._outbox = outbox
        self._label = label
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._ready.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        send = self._websocket.send_text
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                for frame in self._outbox.drain():
                    await send(payload_of(frame).decode())
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            logger.debug("%s: writer stopped: %r", self._label, exc)
