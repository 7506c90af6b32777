"""The provider process's side of its pipe to the hub: events out, in order, in batches.

A thread that hands over a burst of events it gathered (``put_many``: a provider's
``hold_updates``/``release_updates``) writes them to the pipe itself when nothing else is
being written or waiting and the pipe has room for them: no other thread is woken on the
way (on a busy core, waking a writer thread costs two context switches and a wait for the
GIL per burst, about as much as the rest of the provider's work on an update). Everything
else (single events, which the writer gathers into batches; the pipe is full because the
hub is behind; another thread is writing; events are already waiting) is appended to a list
that the writer thread sends in batches, merging superseded states of a forming bar when
more than a batch is waiting. Order is kept: a thread writes
directly only when no event is waiting and no write is in progress, and events that arrive
while a write is in progress wait for it.

The writer thread also sends a heartbeat after a second without a write and ends the
process when the hub is gone.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.connection import Connection

from backend.runtime.messages import Event, Heartbeat, conflate, encode_batch

__all__ = ["EventPipe"]

logger = logging.getLogger(__name__)

BATCH_MAX = 500  # events per pipe write: batches amortize pickling, small ones keep latency
REPORT_EVERY = 60.0
IDLE_HEARTBEAT = 1.0
_HEADER = 8  # multiprocessing's length header: 4 bytes, or 4 + 8 for a large message
_FIONREAD = struct.Struct("i")


class EventPipe:
    """Sends a provider process's events to the hub over ``conn`` (the write end of a pipe).

    ``put``/``put_many`` may be called from any thread. ``heartbeat`` makes the idle
    writer's message (it says how many history requests are in progress), also sent with
    the count of the bar states merged from a backlog.
    """

    def __init__(
        self, key: str, conn: Connection, heartbeat: Callable[[], Heartbeat], parent: int
    ) -> None:
        self.key = key
        self._conn = conn
        self._heartbeat = heartbeat
        self._parent = parent
        self._lock = threading.Lock()  # guards _waiting and _writing
        self._waiting: list[Event] = []
        self._writing = False  # a thread is writing to the pipe
        self._wake = threading.Event()  # the writer thread has events to send
        self._last_write = time.monotonic()
        self._capacity = _pipe_capacity(conn)
        self._stopping = False
        self._conflated = 0
        self._reported = time.monotonic() - REPORT_EVERY  # the first merge is reported at once

    # ------------------------------------------------------------------ any thread

    def put(self, event: Event) -> None:
        """Send ``event`` through the writer thread, after everything put before it.

        One event at a time goes to the writer thread, which sends what gathered meanwhile
        in one batch: a thread that publishes many updates one by one must not cost the hub
        one pipe message each."""
        with self._lock:
            self._waiting.append(event)
            self._wake.set()

    def put_many(self, events: list[Event]) -> None:
        """Send ``events`` (in this order, after everything put before them), from this
        thread when nothing waits: a burst that its thread gathered (``hold_updates``)."""
        with self._lock:
            if self._writing or self._waiting or len(events) > BATCH_MAX:
                self._waiting.extend(events)
                self._wake.set()
                return
            self._writing = True
        try:
            payload = self._encode(events)
            if self._room() >= len(payload) + _HEADER:
                self._send(payload)
                return
            with self._lock:  # the hub is behind: let the writer wait for it
                self._waiting[:0] = events
        finally:
            self._done_writing()

    def idle(self) -> bool:
        """Nothing waiting and nothing being written."""
        with self._lock:
            return not self._waiting and not self._writing

    def stop(self) -> None:
        """Let the writer thread end once everything waiting is written."""
        self._stopping = True
        self._wake.set()

    # ------------------------------------------------------------------ writer thread

    def write_loop(self) -> None:
        """The writer thread: send what waits; heartbeats; exit when the hub is gone."""
        while True:
            woken = self._wake.wait(IDLE_HEARTBEAT)
            with self._lock:
                self._wake.clear()
                events: list[Event] = []
                if self._waiting and not self._writing:
                    events, self._waiting = self._waiting, []
                    self._writing = True
            if events:
                try:
                    self._write_batches(events)
                finally:
                    self._done_writing()
                continue
            if woken:
                continue  # another thread is writing; it wakes us if more is waiting
            if self._stopping and self.idle():
                return  # everything was written (a second after the stop); exiting
            if os.getppid() != self._parent:
                logger.error("provider %s: the hub is gone; exiting", self.key)
                os._exit(1)
            if time.monotonic() - self._last_write >= IDLE_HEARTBEAT:
                self.put(self._heartbeat())

    def _write_batches(self, events: list[Event]) -> None:
        if len(events) > BATCH_MAX:  # the hub is behind: only the newest state of a bar
            before = len(events)
            events = conflate(events)
            merged = before - len(events)
            if merged:
                self._conflated += merged
                # counted by the hub (candlewire_provider_updates_merged_total)
                events.append(replace(self._heartbeat(), merged=merged))
        if self._conflated and time.monotonic() - self._reported > REPORT_EVERY:
            logger.warning(
                "provider %s: the hub fell behind; %d superseded bar updates merged",
                self.key,
                self._conflated,
            )
            self._conflated, self._reported = 0, time.monotonic()
        for start in range(0, len(events), BATCH_MAX):
            self._send(self._encode(events[start : start + BATCH_MAX]))

    def _encode(self, events: list[Event]) -> bytes:
        """``events`` as one pipe message; one that cannot be pickled (a provider's object
        in an event's field) is dropped and logged, not raised: it ended the writer thread,
        and with it every later event and heartbeat of the process."""
        try:
            return encode_batch(events)
        except Exception:  # noqa: BLE001 - pickling raises many kinds; find the bad ones
            kept = []
            for event in events:
                try:
                    encode_batch([event])
                except Exception as exc:  # noqa: BLE001
                    logger.error(
                        "provider %s: an event could not be sent (%s: %s); dropped: %.200r",
                        self.key,
                        type(exc).__name__,
                        exc,
                        event,
                    )
                else:
                    kept.append(event)
            return encode_batch(kept)

    # ------------------------------------------------------------------ helpers

    def _done_writing(self) -> None:
        with self._lock:
            self._writing = False
            if self._waiting:
                self._wake.set()

    def _send(self, payload: bytes) -> None:
        try:
            self._conn.send_bytes(payload)
        except OSError:  # BrokenPipeError included: the hub closed our pipe
            os._exit(1)  # nobody is left to serve
        self._last_write = time.monotonic()

    def _room(self) -> int:
        """Bytes the pipe takes now without blocking (0 if it cannot say)."""
        if self._capacity <= 0:
            return 0
        try:
            buffer = bytearray(_FIONREAD.size)
            fcntl.ioctl(self._conn.fileno(), termios.FIONREAD, buffer)
        except OSError:
            return 0
        return self._capacity - int(_FIONREAD.unpack(buffer)[0])


def _pipe_capacity(conn: Connection) -> int:
    """The pipe's buffer size (Linux ``F_GETPIPE_SZ``); 0 where it cannot be read, which
    sends every event through the writer thread."""
    get_size = getattr(fcntl, "F_GETPIPE_SZ", None)
    if get_size is None:
        return 0
    try:
        return int(fcntl.fcntl(conn.fileno(), get_size))
    except OSError:
        return 0
