"""A client's bounded outbox: frames waiting for that client's writer.

The hub pushes frames (complete WebSocket frames, ``bytes``) without awaiting; the outbox
calls its ``wake`` callback when it stops being empty, and the client's writer drains it.
A forming-bar update replaces an unsent update of the same bar of the same key in place
(only the newest matters). Other frames are never dropped.

The limits count what the client has not received yet, in frames and in bytes: the frames
here plus the bytes the writer already handed to the socket that are still unsent (the
transport's write buffer, reported by the writer). When that stays over the soft limits
longer than the slow-client timeout, or reaches ``HARD_LIMIT_FACTOR`` times them at any
moment, the hub closes the client with 1013 and counts it. Memory per client is bounded
either way; one large reply (a 10,000-bar ``data_init`` is about 1 MB) counts in full.

Replies the client asked for are paced by its reading instead: :meth:`Outbox.room` lets
one reply at a time through, once what is pending is under half the byte limit, so a
client asking for a hundred 10,000-bar series gets them all as fast as it reads them. A
reply kept waiting for room counts as a stall too, so one that never reads holds about
half the limit until the slow-client timeout closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable

HARD_LIMIT_FACTOR = 4
DEFAULT_MAX_BYTES = 4 * 1024 * 1024


def _nothing_buffered() -> int:
    return 0


async def _no_wait(limit: int) -> None:
    return None


class Outbox:
    """Pending frames of one client, with conflation of forming-bar updates."""

    __slots__ = (
        "_buffered",
        "_bytes",
        "_closed",
        "_frames",
        "_hard_bytes",
        "_hard_limit",
        "_in_transport",
        "_replying",
        "_seq",
        "_until_below",
        "_wake",
        "conflations",
        "max_bytes",
        "over_limit_since",
        "soft_limit",
        "waiting_since",
    )

    def __init__(
        self,
        soft_limit: int,
        wake: Callable[[], None] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.soft_limit = soft_limit
        self._hard_limit = soft_limit * HARD_LIMIT_FACTOR
        self.max_bytes = max_bytes
        self._hard_bytes = max_bytes * HARD_LIMIT_FACTOR
        # slot -> frame, in arrival order; replacing a value keeps its place (dicts do).
        self._frames: dict[Hashable, bytes] = {}
        self._bytes = 0
        # Bytes the writer handed to the socket and that are not sent yet, as last seen;
        # ``_buffered`` reads the current figure (asked only when a limit is at stake).
        self._in_transport = 0
        self._buffered: Callable[[], int] = _nothing_buffered
        self._until_below: Callable[[int], Awaitable[None]] = _no_wait
        self._replying: asyncio.Lock | None = None  # made on the first reply
        self._wake = wake
        self._seq = 0
        self._closed = False
        self.over_limit_since: float | None = None
        self.waiting_since: float | None = None  # a reply waits for room since then
        self.conflations = 0

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def nbytes(self) -> int:
        """Bytes of the frames waiting here (not counting the socket's buffer)."""
        return self._bytes

    def set_wake(
        self,
        wake: Callable[[], None] | None,
        buffered: Callable[[], int] | None = None,
        until_below: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        """Call ``wake`` (no arguments, must not block) whenever the outbox stops being empty;
        ``buffered()`` tells how many bytes the writer handed on that are not sent yet, and
        ``await until_below(n)`` returns once at most ``n`` bytes are pending (or the client
        is gone)."""
        self._wake = wake
        self._buffered = buffered or _nothing_buffered
        self._until_below = until_below or _no_wait

    @contextlib.asynccontextmanager
    async def room(self) -> AsyncIterator[None]:
        """Hold this while building and pushing a reply: replies go one at a time, each
        once the client has under half the byte limit pending."""
        if self._replying is None:
            self._replying = asyncio.Lock()
        async with self._replying:
            limit = self.max_bytes // 2
            if self._bytes + self._refresh_in_transport() > limit:
                self.waiting_since = time.monotonic()
                try:
                    await self._until_below(limit)
                finally:
                    self.waiting_since = None
            yield

    def room_now(self) -> bool:
        """Whether :meth:`room` would be had at once, when no reply holds or awaits it."""
        return self.pending_bytes() <= self.max_bytes // 2

    def pending_bytes(self) -> int:
        """Bytes the client has yet to receive: this outbox plus the writer's buffer."""
        return self._bytes + self._refresh_in_transport()

    def push(self, frame: bytes, slot: Hashable | None = None) -> bool:
        """Queue ``frame``; a frame with the ``slot`` of a pending one replaces it in place.

        Returns False when a hard limit is reached: the caller must close the client.
        """
        frames = self._frames
        if slot is not None:
            replaced = frames.get(slot)
            if replaced is not None:
                self._bytes += len(frame) - len(replaced)
                frames[slot] = frame
                self.conflations += 1
                return True
        if self._closed:
            return True  # the client is gone: nobody will read it
        pending = len(frames) + 1
        size = self._bytes + len(frame)
        if pending > self._hard_limit or (
            # the cached socket figure only falls as the client reads: ask again before refusing
            size + self._in_transport > self._hard_bytes
            and size + self._refresh_in_transport() > self._hard_bytes
        ):
            return False
        if slot is None:
            self._seq += 1
            slot = self._seq
        frames[slot] = frame
        self._bytes = size
        if pending == 1 and self._wake is not None:
            self._wake()
        if self.over_limit_since is None and (
            pending > self.soft_limit or size + self._in_transport > self.max_bytes
        ):
            self.over_limit_since = time.monotonic()
        return True

    def extend(
        self, slot: Hashable, frames: bytes, joined: dict[bytes, bytes] | None = None
    ) -> bool:
        """Append ``frames`` to the pending frame of ``slot`` (they go out right behind it,
        in the same write, and are replaced with it); False when none is pending. A frame
        that follows another always (an ``indicator_update`` after its ``data_update``)
        costs no entry of its own this way. ``joined`` (pending frame -> it with ``frames``)
        lets the outboxes that hold the same frame share one joined copy."""
        pending = self._frames.get(slot)
        if pending is None or self._closed:
            return False
        if joined is None:
            self._frames[slot] = pending + frames
        else:
            combined = joined.get(pending)
            if combined is None:
                combined = joined[pending] = pending + frames
            self._frames[slot] = combined
        self._bytes += len(frames)
        return True

    def drain(self) -> list[bytes]:
        """Take every pending frame, oldest first."""
        taken = list(self._frames.values())
        self._frames.clear()
        self._bytes = 0
        if self._in_transport <= self.max_bytes:
            self.over_limit_since = None
        return taken

    def handed_on(self, in_transport: int) -> None:
        """The writer wrote what it drained; ``in_transport`` bytes of it are still unsent."""
        self._in_transport = in_transport
        if self.over_limit_since is None:
            if self._over_soft():
                self.over_limit_since = time.monotonic()
        elif not self._over_soft():
            self.over_limit_since = None

    def stalled_for(self, now: float) -> float:
        """Seconds the client has been over a soft limit without a break, or has kept a
        reply waiting for room (0 when neither)."""
        waiting = 0.0 if self.waiting_since is None else now - self.waiting_since
        self.pending_bytes()
        if not self._over_soft():
            self.over_limit_since = None
            return waiting
        if self.over_limit_since is None:
            self.over_limit_since = now
        return max(waiting, now - self.over_limit_since)

    def over_hard_limit(self) -> bool:
        """Whether what the client has not received is over a hard limit now."""
        return len(self._frames) > self._hard_limit or self.pending_bytes() > self._hard_bytes

    def close(self) -> None:
        """The client is gone: drop what is pending, forget the writer, accept nothing more."""
        self._closed = True
        self._frames.clear()
        self._bytes = 0
        self._in_transport = 0
        self._wake = None
        self._buffered = _nothing_buffered
        self._until_below = _no_wait
        self.over_limit_since = None

    def _refresh_in_transport(self) -> int:
        self._in_transport = self._buffered()
        return self._in_transport

    def _over_soft(self) -> bool:
        return (
            len(self._frames) > self.soft_limit or self._bytes + self._in_transport > self.max_bytes
        )
