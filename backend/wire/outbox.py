"""A client's bounded outbox: frames waiting for that client's writer.

The hub pushes frames (complete WebSocket frames, ``bytes``) without awaiting; the outbox
calls its ``wake`` callback when it stops being empty, and the client's writer drains it.
A forming-bar update replaces an unsent update of the same bar of the same key in place
(only the newest matters). Other frames are never dropped: when the outbox stays over its
soft limit longer than the slow-client timeout, or reaches the hard limit, the hub closes
the client with 1013 and counts it. Memory per client is bounded either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

HARD_LIMIT_FACTOR = 4


class Outbox:
    """Pending frames of one client, with conflation of forming-bar updates."""

    __slots__ = (
        "_frames",
        "_hard_limit",
        "_seq",
        "_wake",
        "conflations",
        "over_limit_since",
        "soft_limit",
    )

    def __init__(self, soft_limit: int, wake: Callable[[], None] | None = None) -> None:
        self.soft_limit = soft_limit
        self._hard_limit = soft_limit * HARD_LIMIT_FACTOR
        # slot -> frame, in arrival order; replacing a value keeps its place (dicts do).
        self._frames: dict[Hashable, bytes] = {}
        self._wake = wake
        self._seq = 0
        self.over_limit_since: float | None = None
        self.conflations = 0

    def __len__(self) -> int:
        return len(self._frames)

    def set_wake(self, wake: Callable[[], None] | None) -> None:
        """Call ``wake`` (no arguments, must not block) whenever the outbox stops being empty."""
        self._wake = wake

    def push(self, frame: bytes, slot: Hashable | None = None) -> bool:
        """Queue ``frame``; a frame with the ``slot`` of a pending one replaces it in place.

        Returns False when the hard limit is reached: the caller must close the client.
        """
        if slot is not None and slot in self._frames:
            self._frames[slot] = frame
            self.conflations += 1
            return True
        frames = self._frames
        pending = len(frames) + 1
        if pending > self._hard_limit:
            return False
        if slot is None:
            self._seq += 1
            slot = self._seq
        frames[slot] = frame
        if pending == 1:
            if self._wake is not None:
                self._wake()
        elif pending > self.soft_limit and self.over_limit_since is None:
            self.over_limit_since = time.monotonic()
        return True

    def drain(self) -> list[bytes]:
        """Take every pending frame, oldest first."""
        taken = list(self._frames.values())
        self._frames.clear()
        self.over_limit_since = None
        return taken

    def stalled_for(self, now: float) -> float:
        """Seconds the outbox has been over its soft limit (0 when it is not)."""
        return 0.0 if self.over_limit_since is None else now - self.over_limit_since
