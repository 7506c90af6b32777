"""Writers that move a client's outbox onto its WebSocket.

Fan-out is the hot path of the hub: every update goes to every subscriber. Sending each
frame through the ASGI ``send`` coroutine chain (Starlette, then uvicorn, then the
websockets state machine, then one socket write) costs more than everything else the hub
does, so when the server is uvicorn's ``websockets-sansio`` protocol the
:class:`DirectWriter` skips that chain: the outbox wakes it, it runs once per event-loop
turn, and it writes everything pending, frames the hub built once for all subscribers,
with one ``transport.write``. Nothing is awaited per frame and idle clients have no task.
The writers woken during one loop turn are flushed by one callback (:class:`FlushTurn`),
not one loop callback each: an update to 50 subscribers schedules one.
Once it is chosen, what uvicorn keeps per connection but no longer needs is given back
(:func:`release_handshake`).

* No extension negotiated (the usual case for trading clients and scripts): the frames
  are written as they are.
* Compression negotiated (browsers offer permessage-deflate): each payload goes through
  this connection's websockets protocol object, which compresses it, still one write.
  Deflate is the costly part (a 10,000-bar ``data_init``, about 1-2 MB of JSON, takes
  20-40 ms), so one flush compresses at most :data:`DEFLATE_ON_LOOP` bytes on the event
  loop: from the payload that reaches it on, the rest of the batch is compressed in a
  worker thread (:func:`deflate_pool`, at most :data:`DEFLATE_THREADS` at once per
  process; zlib lets go of the GIL while it deflates) and written on the loop when done.
  The connection's compressor is only ever used by one of them at a time: frames queued
  meanwhile wait in the outbox and go out after that batch, in order, and a batch whose
  client left or was closed meanwhile is dropped (nothing is written after a close). The
  bytes are those websockets would write: the same ``Frame.serialize`` with the
  connection's extensions, which leave control frames (uvicorn's pings and pongs, the
  close) alone, so uvicorn may write those while a batch is being compressed.
* Transport paused (the client reads slower than we write): frames stay in the outbox,
  where forming bars conflate and the hub's slow-client policy sees them; a task waits
  for the transport to drain and then writes.

Any other ASGI server gets the :class:`AsgiWriter`: one task per client awaiting
``send_text`` per frame, the portable path. :func:`expose_protocol`, called by the ASGI
entry point (``backend.ws.entrance``), lets the endpoint find uvicorn's protocol object.

This module and ``backend.ws.reading`` (how connections read) are the only ones that
know uvicorn's internals. It imports uvicorn's protocol
module lazily, the first time a connection is exposed, and guarded: without that module,
or with a protocol object that lacks what the direct writer uses, every connection gets
the portable writer and the server works as before, only slower.

Both writers report the bytes they handed on that the client has not received yet, which
count against the client's byte limit (``backend.wire.outbox``), let replies wait until
the client has room (:meth:`SocketWriter.until_below`), and close a client that is too
slow without waiting on it. The direct writer queues the close frame behind what the
socket holds even while the transport is paused, and aborts the connection if the client
has not gone ``CLOSE_GRACE`` seconds later (a client that never reads never answers a
close, and a transport being closed keeps its whole write buffer until it is sent). The
portable one asks the server to close and stops waiting after ``CLOSE_TIMEOUT``: only the
server can cut a connection off there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from typing import Protocol as Interface

from starlette.types import Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.exceptions import InvalidState
from websockets.extensions import Extension
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from backend.wire.frames import payloads_of
from backend.wire.outbox import Outbox

if TYPE_CHECKING:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

logger = logging.getLogger(__name__)

SCOPE_KEY = "candlewire.ws_protocol"
UVICORN_PROTOCOL_MODULE = "uvicorn.protocols.websockets.websockets_sansio_impl"
# What DirectWriter uses of uvicorn's protocol object (uvicorn 0.54); without them, the
# portable writer is used.
_PROTOCOL_ATTRIBUTES = ("transport", "writable", "conn", "close_sent", "disconnected")
CLOSE_TIMEOUT = 2.0  # the portable writer's wait for its close to be sent
CLOSE_GRACE = 5.0  # after a close, the client has this long to go before it is cut off
PAUSE_POLL = 0.01  # transports whose high-water mark exceeds the reply pacing limit
# Bytes of payload one flush may compress on the event loop; the rest of the batch goes to a
# thread. Measured (window 12 bits, memLevel 5, bar JSON): 64 KiB deflates in about 0.6 ms,
# 1 MB in about 18 ms; a thread hop costs about 0.1 ms.
DEFLATE_ON_LOOP = 64 * 1024
DEFLATE_THREADS = 2  # compressions running at once, per process (the machine's cores)


@functools.cache
def deflate_pool() -> ThreadPoolExecutor:
    """The threads that compress large batches for compressed connections, made on first
    use: at most :data:`DEFLATE_THREADS` run at once, later batches wait their turn."""
    return ThreadPoolExecutor(DEFLATE_THREADS, thread_name_prefix="candlewire-deflate")


def deflate_frames(
    extensions: Sequence[Extension], payloads: Sequence[bytes], gone: Callable[[], bool]
) -> bytes | None:
    """The text frames of ``payloads``, compressed by ``extensions`` (a server's: unmasked)
    as ``websockets``' ``send_text`` would make them, back to back; None when ``gone()``
    turns true first (the connection will write nothing more). Runs in a worker thread
    while nothing else uses the extensions' compressor."""
    frames = []
    for payload in payloads:
        if gone():
            return None
        frames.append(Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=extensions))
    return b"".join(frames)


def deflate_split(payloads: Sequence[bytes]) -> int:
    """How many of ``payloads`` one flush compresses on the loop: those before the one that
    brings the total to :data:`DEFLATE_ON_LOOP` bytes."""
    total = 0
    for index, payload in enumerate(payloads):
        total += len(payload)
        if total >= DEFLATE_ON_LOOP:
            return index
    return len(payloads)


class SocketWriter(Interface):
    """What a connection needs from its writer."""

    def wake(self) -> None:
        """The outbox has frames (called by the outbox; must not block)."""

    def buffered(self) -> int:
        """Bytes handed on towards the client that it has not received yet."""

    async def until_below(self, limit: int) -> None:
        """Return once at most ``limit`` bytes are pending (outbox and :meth:`buffered`),
        or the writer is stopped."""

    def stop(self) -> None:
        """Write nothing more (the connection is closing or gone)."""

    def close(self, code: int, reason: str) -> None:
        """Stop writing and close the connection with ``code``, in bounded time."""


@functools.cache
def sansio_protocol_class() -> type[Any] | None:
    """uvicorn's websockets-sansio protocol class, imported on first use; None (logged once)
    when this environment has no such module or class."""
    try:
        module = importlib.import_module(UVICORN_PROTOCOL_MODULE)
        protocol_class: type[Any] = module.WebSocketsSansIOProtocol
    except (ImportError, AttributeError) as exc:
        logger.info("uvicorn's websockets-sansio protocol unavailable (%r): portable writer", exc)
        return None
    return protocol_class


def drop_open_sockets(connections: Iterable[object]) -> int:
    """Abort, without a close frame, the TCP connection of every open WebSocket among
    ``connections`` (uvicorn's, as it shuts down); how many. Tradiny's front end reconnects
    only after an unclean close (``!event.wasClean``): the clean 1012 "service restart"
    uvicorn sends left its pages dead until reloaded. A dropped connection looks like a
    network failure (1006) to every client, which reconnect."""
    protocol_class = sansio_protocol_class()
    if protocol_class is None:
        return 0
    dropped = 0
    for connection in connections:
        if (
            isinstance(connection, protocol_class)
            and getattr(connection, "handshake_complete", False)
            and not getattr(connection, "disconnected", True)
            and not connection.transport.is_closing()
        ):
            connection.transport.abort()
            dropped += 1
    return dropped


def expose_protocol(scope: Scope, send: Send) -> None:
    """Put uvicorn's websockets-sansio protocol object of a WebSocket connection (the owner
    of the server's ``send``) in its scope under :data:`SCOPE_KEY`; nothing under any other
    server. Call it with the ``send`` the server gave, before any middleware wraps it."""
    owner = getattr(send, "__self__", None)
    if owner is None:
        return
    protocol_class = sansio_protocol_class()
    if protocol_class is not None and isinstance(owner, protocol_class):
        scope[SCOPE_KEY] = owner


def forget_protocol(scope: Scope) -> None:
    """Undo :func:`expose_protocol` when the connection ends: the protocol object holds the
    scope, so the scope must not hold it (a reference cycle only a full collection frees)."""
    scope.pop(SCOPE_KEY, None)


def writer_for(websocket: WebSocket, outbox: Outbox, label: str) -> SocketWriter:
    """The fastest writer that is correct for this connection; it is woken by ``outbox``."""
    protocol = websocket.scope.get(SCOPE_KEY)
    protocol_class = sansio_protocol_class() if protocol is not None else None
    writer: SocketWriter
    if (
        protocol_class is not None
        and isinstance(protocol, protocol_class)
        and all(hasattr(protocol, name) for name in _PROTOCOL_ATTRIBUTES)
    ):
        writer = DirectWriter(protocol, outbox, label)
        release_handshake(protocol)
    else:
        writer = AsgiWriter(websocket, outbox, label)
    logger.debug("%s: %s", label, type(writer).__name__)
    outbox.set_wake(writer.wake, writer.buffered, writer.until_below)
    return writer


def release_handshake(protocol: WebSocketsSansIOProtocol) -> None:
    """Give back what uvicorn's protocol holds for a connection's whole life but no longer
    uses once the handshake is complete, about 5 KB per idle connection: the handshake's
    request headers and response (``websockets`` objects; the ASGI scope keeps its own
    copy of the headers), its receive queue, an ``asyncio.Queue`` (four deques) replaced by
    a :class:`LeanQueue`, and its ``writable`` ``asyncio.Event`` (a deque) replaced by a
    :class:`LeanEvent`, each with the same behaviour. Any part whose shape is not the
    expected one is left as it is."""
    if not getattr(protocol, "handshake_complete", False):
        return
    request = getattr(protocol, "request", None)
    headers = getattr(request, "headers", None)
    if headers is not None and callable(getattr(headers, "clear", None)):
        headers.clear()  # the request also stays in websockets' parser (a generator's local)
    for name in ("request", "response"):
        if hasattr(protocol, name):
            setattr(protocol, name, None)
    queue = getattr(protocol, "queue", None)
    if type(queue) is asyncio.Queue and not getattr(queue, "_getters", True):
        lean: LeanQueue = LeanQueue()
        while not queue.empty():
            lean.put_nowait(queue.get_nowait())
        protocol.queue = lean  # type: ignore[assignment]
    writable = getattr(protocol, "writable", None)
    if type(writable) is asyncio.Event and not getattr(writable, "_waiters", True):
        protocol.writable = LeanEvent(writable.is_set())  # type: ignore[assignment]


class LeanQueue:
    """An unbounded FIFO with uvicorn's use of ``asyncio.Queue``: ``put_nowait``, ``await
    get()``, ``empty()``, ``qsize()``; one reader at a time (the connection's receive).
    Empty and idle, it is three slots and an empty list instead of four deques and an
    event. ``on_disconnect``, when set, is called (once) as uvicorn queues the connection's
    end, ahead of the frames still queued before it (:func:`on_connection_lost`)."""

    __slots__ = ("_items", "_waiter", "on_disconnect")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None
        self.on_disconnect: Callable[[], None] | None = None

    def put_nowait(self, item: Any) -> None:
        if self.on_disconnect is not None and item.get("type") == "websocket.disconnect":
            callback, self.on_disconnect = self.on_disconnect, None
            callback()
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


def on_connection_lost(websocket: WebSocket, callback: Callable[[], None] | None) -> bool:
    """Call ``callback`` when the connection is lost or closed, as soon as uvicorn knows it:
    the frames it read before are still queued for the reader then, which may be busy
    with an earlier one (waiting for a reply slot) for a long time. None forgets the
    callback. False when this connection cannot tell (not uvicorn's sansio protocol with
    a :class:`LeanQueue`: the reader learns of the end when it reaches it)."""
    protocol = websocket.scope.get(SCOPE_KEY)
    queue = getattr(protocol, "queue", None)
    if not isinstance(queue, LeanQueue):
        return False
    queue.on_disconnect = callback
    return True


class LeanEvent:
    """``asyncio.Event`` (``set``, ``clear``, ``is_set``, ``await wait()``) whose list of
    waiters exists only while someone waits: an idle connection's ``writable`` event."""

    __slots__ = ("_set", "_waiters")

    def __init__(self, is_set: bool = False) -> None:
        self._set = is_set
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


class FlushTurn:
    """The direct writers of one event loop woken since its last turn, flushed by a single
    loop callback, in the order they were woken. Scheduling a callback per writer costs the
    loop about a microsecond each (an ``asyncio.Handle`` made, queued and run); a fan-out
    wakes one writer per subscriber.

    One per event loop (:meth:`of`): the queue is the loop's, like its ready queue, shared by
    every connection served on it and gone with it."""

    __slots__ = ("_due",)

    # Weak keys: an entry goes with its loop (the value must not refer to the loop).
    _per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FlushTurn] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self) -> None:
        self._due: list[DirectWriter] = []

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> FlushTurn:
        turn = cls._per_loop.get(loop)
        if turn is None:
            turn = cls._per_loop[loop] = cls()
        return turn

    def add(self, writer: DirectWriter) -> None:
        """Flush ``writer`` at the loop's next turn (called on the loop's thread)."""
        if not self._due:
            asyncio.get_running_loop().call_soon(self._run)
        self._due.append(writer)

    def _run(self) -> None:
        due, self._due = self._due, []
        for writer in due:
            try:
                writer._flush()
            except Exception:  # as asyncio does for a callback: log it, flush the others
                logger.exception("%s: writing to the socket failed", writer._label)


class DirectWriter:
    """Writes pending frames straight to uvicorn's transport, once per loop turn."""

    __slots__ = (
        "_compressed",
        "_deflating",
        "_in_flight",
        "_label",
        "_outbox",
        "_protocol",
        "_scheduled",
        "_stopped",
        "_turn",
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
        # The batch being compressed in a worker thread (a future of the executor, no
        # task) and its payload bytes, which count as pending until it is written.
        self._deflating: asyncio.Future[bytes | None] | None = None
        self._in_flight = 0
        self._turn = FlushTurn.of(asyncio.get_running_loop())

    def wake(self) -> None:
        if self._scheduled or self._waiter is not None or self._stopped:
            return
        self._scheduled = True
        self._turn.add(self)

    def buffered(self) -> int:
        return self._protocol.transport.get_write_buffer_size() + self._in_flight

    async def until_below(self, limit: int) -> None:
        protocol = self._protocol
        while (
            not self._stopped
            and not protocol.disconnected
            and self._outbox.nbytes + self.buffered() > limit
        ):
            if self._deflating is not None:
                # written (or dropped) by _deflated before this wakes; never cancelled here
                await asyncio.wait((self._deflating,))
            elif not protocol.writable.is_set():
                # paused: resumed once the buffer is under the transport's low-water mark
                await protocol.writable.wait()
            elif self._outbox.nbytes:
                await asyncio.sleep(0)  # the flush is due this loop turn
            else:  # a buffer over ``limit`` yet under the high-water mark: wait a little
                await asyncio.sleep(PAUSE_POLL)

    def stop(self) -> None:
        self._stopped = True
        self._in_flight = 0  # a batch being compressed is dropped when done
        if self._waiter is not None:
            self._waiter.cancel()
            self._waiter = None

    def close(self, code: int, reason: str) -> None:
        self.stop()
        self._outbox.drain()  # never sent: the close goes right behind what the socket holds
        protocol = self._protocol
        transport = protocol.transport
        if protocol.disconnected or transport.is_closing():
            return
        if not protocol.close_sent and protocol.conn.state is State.OPEN:
            protocol.conn.send_close(code, reason)
            transport.write(b"".join(protocol.conn.data_to_send()))
            protocol.close_sent = True  # uvicorn closes the transport when the client answers
        asyncio.get_running_loop().call_later(CLOSE_GRACE, self._cut_off)

    def _cut_off(self) -> None:
        protocol = self._protocol
        if protocol.disconnected:
            return
        logger.info(
            "%s: gone %g s after its close with %d bytes unsent; connection aborted",
            self._label,
            CLOSE_GRACE,
            protocol.transport.get_write_buffer_size(),
        )
        protocol.transport.abort()

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
        if self._deflating is not None:
            return  # behind the batch being compressed: flushed once it is written
        if not protocol.writable.is_set():
            self._waiter = asyncio.get_running_loop().create_task(self._when_writable())
            return
        frames = self._outbox.drain()
        if not frames:
            return
        if self._compressed:
            self._write_compressed(frames)
        elif len(frames) == 1:
            transport.write(frames[0])
        else:
            transport.write(b"".join(frames))
        self._outbox.handed_on(self.buffered())

    def _write_compressed(self, frames: list[bytes]) -> None:
        """Compress and write ``frames``: up to :data:`DEFLATE_ON_LOOP` bytes of payload
        here, the rest in a worker thread (:meth:`_deflated` writes it)."""
        protocol = self._protocol
        conn = protocol.conn
        payloads = [payload for frame in frames for payload in payloads_of(frame)]
        on_loop = deflate_split(payloads)
        try:
            for payload in payloads[:on_loop]:
                conn.send_text(payload)
        except InvalidState:
            return
        if on_loop:
            protocol.transport.write(b"".join(conn.data_to_send()))
        if on_loop == len(payloads):
            return
        rest = payloads[on_loop:]
        self._in_flight = sum(map(len, rest))
        self._deflating = asyncio.get_running_loop().run_in_executor(
            deflate_pool(), deflate_frames, list(conn.extensions), rest, self._gone
        )
        self._deflating.add_done_callback(self._deflated)

    def _gone(self) -> bool:
        """Whether this writer will write nothing more (asked from the worker thread)."""
        return self._stopped or self._protocol.disconnected

    def _deflated(self, done: asyncio.Future[bytes | None]) -> None:
        """A batch compressed in a worker thread: write it, unless the connection was closed
        or lost meanwhile, then flush what was queued behind it."""
        self._deflating = None
        self._in_flight = 0
        protocol = self._protocol
        transport = protocol.transport
        error = asyncio.CancelledError() if done.cancelled() else done.exception()
        if error is not None:  # the compressor's state is unknown: no frame may follow
            if not self._stopped:
                logger.error("%s: compressing frames failed", self._label, exc_info=error)
                self.close(1011, "internal error")
            return
        data = done.result()
        if not (
            data is None
            or self._stopped
            or protocol.disconnected
            or protocol.close_sent
            or transport.is_closing()
            or protocol.conn.state is not State.OPEN
        ):
            transport.write(data)
            self._outbox.handed_on(self.buffered())
        if len(self._outbox):
            self.wake()

    async def _when_writable(self) -> None:
        try:
            await self._protocol.writable.wait()
        finally:
            self._waiter = None
        self._flush()


class AsgiWriter:
    """The portable writer: a task awaiting the ASGI ``send_text`` for every frame."""

    __slots__ = (
        "_closing",
        "_label",
        "_outbox",
        "_progress",
        "_ready",
        "_stopped",
        "_task",
        "_unsent",
        "_websocket",
    )

    def __init__(self, websocket: WebSocket, outbox: Outbox, label: str) -> None:
        self._websocket = websocket
        self._outbox = outbox
        self._label = label
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._unsent = 0  # bytes taken from the outbox and not yet sent
        self._progress = asyncio.Event()  # set after every frame sent
        self._stopped = False

    def wake(self) -> None:
        self._ready.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def buffered(self) -> int:
        return self._unsent

    async def until_below(self, limit: int) -> None:
        while not self._stopped and self._outbox.nbytes + self._unsent > limit:
            self._progress.clear()
            await self._progress.wait()

    def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
        self._unsent = 0
        self._progress.set()

    def close(self, code: int, reason: str) -> None:
        self.stop()
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close(code, reason))
            self._closing.add_done_callback(self._closed)

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(TimeoutError, RuntimeError, OSError, WebSocketDisconnect):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._websocket.close(code, reason)

    def _closed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s: closing failed", self._label, exc_info=task.exception())

    async def _run(self) -> None:
        send = self._websocket.send_text
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                frames = self._outbox.drain()
                self._unsent = sum(map(len, frames))
                for frame in frames:
                    for payload in payloads_of(frame):  # an entry may join several frames
                        await send(payload.decode())
                    self._unsent -= len(frame)
                    self._progress.set()
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            logger.debug("%s: writer stopped: %r", self._label, exc)
            self._stopped = True
            self._progress.set()
