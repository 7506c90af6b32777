"""How the hub's WebSocket connections read: uvicorn's ``websockets-sansio`` protocol, but
reading on while the connection's reader keeps up.

uvicorn's protocol stops reading the socket after every message it queues for the app
(``transport.pause_reading()``) and starts again when the app takes it and nothing else
waits (``resume_reading()``). Each pause and resume is a change of the event loop's
selector (an ``epoll_ctl`` and its bookkeeping), so a client that sends one request and
waits for its answer, the usual way, cost the hub two of them per request: about a sixth
of the hub's time in a storm of small history requests (README, "Performance").

:class:`ReadOnProtocol` pauses only where the pause protects something: when a message
arrives while an earlier one still waits for the reader, or when the message is large
(:data:`LARGE_MESSAGE`). So the input a connection can queue stays bounded as before
(a message waiting and one more, at most :data:`LARGE_MESSAGE` bytes of it, besides the
read that brought them), and the reader's pace still holds a flooding client back.
:data:`pauses` counts the pauses (``/metrics``).

Like ``backend.ws.writers`` (whose import of uvicorn's protocol class it uses), this module
knows uvicorn's internals; without uvicorn's sansio module :func:`protocol_class` is None
and the server names the protocol as before.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from backend.ws.writers import sansio_protocol_class

logger = logging.getLogger(__name__)

LARGE_MESSAGE = 64 * 1024  # bytes: a message this large pauses reading at once


class _Counter:
    """Reading pauses of every connection of the process (one number, not one per
    connection)."""

    __slots__ = ("pauses",)

    def __init__(self) -> None:
        self.pauses = 0


pauses = _Counter()


@functools.cache
def protocol_class() -> type[Any] | None:
    """The hub's protocol class for uvicorn's ``ws`` setting; None (logged) when uvicorn's
    websockets-sansio protocol, or what the class relies on, is not there."""
    found = sansio_protocol_class()  # logs why when there is none
    if found is None:
        return None
    base: type[Any] = found
    if not callable(getattr(base, "send_receive_event_to_app", None)):
        logger.info("uvicorn's websockets-sansio protocol has changed: reading as it does")
        return None

    class ReadOnProtocol(base):  # type: ignore[misc]
        """uvicorn's protocol, pausing reads only behind a waiting or a large message."""

        read_paused: bool  # uvicorn's: whether it paused the transport's reading

        def send_receive_event_to_app(self) -> None:
            if self.read_paused:
                super().send_receive_event_to_app()
                return
            size = sum(len(frame) for frame in self.frames)
            self.read_paused = True  # so that uvicorn's method does not pause: we decide
            try:
                super().send_receive_event_to_app()
            finally:
                self.read_paused = False
            if self.queue.qsize() > 1 or size >= LARGE_MESSAGE:
                self.read_paused = True
                self.transport.pause_reading()
                pauses.pauses += 1

    ReadOnProtocol.__qualname__ = ReadOnProtocol.__name__
    ReadOnProtocol.__module__ = __name__
    return ReadOnProtocol
