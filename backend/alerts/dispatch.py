"""Scheduling of alert deliveries: bounded concurrency overall and per destination, and a
bounded backlog, so a hanging or slow endpoint never starves the others.

A delivery is a job for one *destination* (the origin of its URL: scheme, host, port). At
most ``at_once`` jobs run in all and ``per_destination`` per destination; the others wait,
the destinations served in turn (round robin), so one destination with a thousand waiting
jobs delays another's next job by at most one turn. At most ``backlog`` jobs wait in all:
beyond, the *oldest* waiting job of the destination with the most waiting jobs is dropped
(a newer event says more about the alert's state than an older one, and the destination
that causes the backlog pays for it), reported through ``on_drop`` (logged and counted by
the owner). A job holds its slot only while it works: a retry's wait (:func:`pause`) gives the
slot to the next job and waits its turn again after (ahead of new jobs), so a client that
names many hanging endpoints cannot keep the slots through its retries. Nothing here touches
the network: jobs are started through ``start`` (the owner's task set), so the policy is
tested without any endpoint.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any

Job = Callable[[], Coroutine[Any, Any, None]]
AT_ONCE = 32
PER_DESTINATION = 4
BACKLOG = 1_000


class _Slot:
    """The slot a running job holds (``held``), and the way to wait without it."""

    def __init__(self, dispatcher: Dispatcher, destination: str) -> None:
        self.dispatcher, self.destination, self.held = dispatcher, destination, True

    async def pause(self, seconds: float) -> None:
        self.dispatcher._release(self.destination)
        self.held = False
        await asyncio.sleep(seconds)
        await self.dispatcher._resume(self.destination)
        self.held = True


_SLOT: ContextVar[_Slot | None] = ContextVar("alert_delivery_slot", default=None)


async def pause(seconds: float) -> None:
    """Wait ``seconds`` (a retry's backoff) without holding a delivery slot, then wait for
    one again; a plain sleep outside a dispatched job."""
    slot = _SLOT.get()
    if slot is None:
        await asyncio.sleep(seconds)
    else:
        await slot.pause(seconds)


class Dispatcher:
    """Runs delivery jobs under the limits above; :meth:`close` drops what waits."""

    def __init__(
        self,
        start: Callable[[Coroutine[Any, Any, None], str], object],
        on_drop: Callable[[str, str], None],
        at_once: int = AT_ONCE,
        per_destination: int = PER_DESTINATION,
        backlog: int = BACKLOG,
    ) -> None:
        self._start = start
        self._on_drop = on_drop
        self.at_once = at_once
        self.per_destination = per_destination
        self.backlog = backlog
        self._waiting: dict[str, deque[tuple[str, Job]]] = {}  # insertion order: the turn
        self._running: dict[str, int] = {}
        # jobs back from a pause, waiting for a slot of their destination (before new jobs)
        self._resuming: dict[str, deque[asyncio.Future[None]]] = {}
        self._busy = 0
        self._queued = 0
        self._closed = False

    @property
    def waiting(self) -> int:
        return self._queued

    @property
    def running(self) -> int:
        return self._busy

    def submit(self, destination: str, name: str, job: Job) -> None:
        """Run ``job`` (named ``name``) for ``destination`` when the limits allow."""
        if self._closed:
            return
        self._waiting.setdefault(destination, deque()).append((name, job))
        self._queued += 1
        if self._queued > self.backlog:
            self._drop_one()
        self._pump()

    def close(self) -> None:
        """Start nothing more (shutdown); running jobs are the owner's to cancel."""
        self._closed = True
        self._waiting.clear()
        self._queued = 0
        for futures in self._resuming.values():
            for future in futures:
                future.cancel()
        self._resuming.clear()

    def _drop_one(self) -> None:
        destination = max(self._waiting, key=lambda d: len(self._waiting[d]))
        queue = self._waiting[destination]
        name, _ = queue.popleft()
        if not queue:
            del self._waiting[destination]
        self._queued -= 1
        self._on_drop(destination, name)

    def _pump(self) -> None:
        while self._busy < self.at_once and not self._closed:
            back = next(
                (d for d in self._resuming if self._running.get(d, 0) < self.per_destination),
                None,
            )
            if back is not None:
                futures = self._resuming[back]
                future = futures.popleft()
                if not futures:
                    del self._resuming[back]
                if not future.done():  # not cancelled meanwhile
                    self._take(back)
                    future.set_result(None)
                continue
            destination = next(
                (d for d in self._waiting if self._running.get(d, 0) < self.per_destination),
                None,
            )
            if destination is None:
                return
            queue = self._waiting.pop(destination)
            name, job = queue.popleft()
            if queue:
                self._waiting[destination] = queue  # to the end of the turn
            self._queued -= 1
            self._take(destination)
            self._start(self._run(destination, job), name)

    def _take(self, destination: str) -> None:
        self._busy += 1
        self._running[destination] = self._running.get(destination, 0) + 1

    def _release(self, destination: str) -> None:
        self._busy -= 1
        left = self._running[destination] - 1
        if left:
            self._running[destination] = left
        else:
            del self._running[destination]
        self._pump()

    async def _resume(self, destination: str) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._resuming.setdefault(destination, deque()).append(future)
        self._pump()
        await future

    async def _run(self, destination: str, job: Job) -> None:
        slot = _Slot(self, destination)
        token = _SLOT.set(slot)
        try:
            await job()
        finally:
            _SLOT.reset(token)
            if slot.held:
                self._release(destination)
