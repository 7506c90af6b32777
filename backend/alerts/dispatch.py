"""Scheduling of alert deliveries: bounded concurrency overall and per destination, and a
bounded backlog, so a hanging or slow endpoint never starves the others.

A delivery is a job for one *destination* (the origin of its URL: scheme, host, port) on
behalf of an *owner* (who made the alert; ``None`` for the operator's own webhook). At most
``at_once`` jobs run in all, ``per_destination`` per destination and ``per_owner`` per
owner; the others wait, the destinations served in turn (round robin), and the owners of
one destination in turn, so one destination with a thousand waiting jobs delays another's
next job by at most one turn, and one client that names many hanging endpoints holds at
most its own share of the slots. At most ``backlog`` jobs wait in all: beyond, the *oldest*
waiting job of the owner with the most waiting jobs at the destination with the most is
dropped (a newer event says more about the alert's state than an older one, and who causes
the backlog pays for it), reported through ``on_drop`` (logged and counted by the caller).
A job holds its slot only while it works: a retry's wait (:func:`pause`) gives the slot to
the next job and waits its turn again after (ahead of new jobs), so a client that names
many hanging endpoints cannot keep the slots through its retries. Nothing here touches the
network: jobs are started through ``start`` (the caller's task set), so the policy is
tested without any endpoint.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any

Job = Callable[[], Coroutine[Any, Any, None]]
Owner = str | None
AT_ONCE = 32
PER_DESTINATION = 4
PER_OWNER = 8
BACKLOG = 1_000


class _Slot:
    """The slot a running job holds (``held``), and the way to wait without it."""

    def __init__(self, dispatcher: Dispatcher, destination: str, owner: Owner) -> None:
        self.dispatcher, self.destination, self.owner = dispatcher, destination, owner
        self.held = True

    async def pause(self, seconds: float) -> None:
        self.dispatcher._release(self.destination, self.owner)
        self.held = False
        await asyncio.sleep(seconds)
        await self.dispatcher._resume(self.destination, self.owner)
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
        per_owner: int = PER_OWNER,
    ) -> None:
        self._start = start
        self._on_drop = on_drop
        self.at_once = at_once
        self.per_destination = per_destination
        self.per_owner = per_owner
        self.backlog = backlog
        # destination -> owner -> jobs; the insertion orders are the turns (destinations in
        # turn, and the owners of one destination in turn)
        self._waiting: dict[str, dict[Owner, deque[tuple[str, Job]]]] = {}
        self._counts: dict[str, int] = {}  # waiting jobs per destination
        self._running: dict[str, int] = {}
        self._owners: dict[str, int] = {}  # running jobs per owner
        # jobs back from a pause, waiting for a slot of their destination (before new jobs)
        self._resuming: dict[str, deque[tuple[asyncio.Future[None], Owner]]] = {}
        self._busy = 0
        self._queued = 0
        self._closed = False

    @property
    def waiting(self) -> int:
        return self._queued

    @property
    def running(self) -> int:
        return self._busy

    def submit(self, destination: str, name: str, job: Job, owner: Owner = None) -> None:
        """Run ``job`` (named ``name``) for ``destination`` on behalf of ``owner`` when the
        limits allow."""
        if self._closed:
            return
        self._waiting.setdefault(destination, {}).setdefault(owner, deque()).append((name, job))
        self._counts[destination] = self._counts.get(destination, 0) + 1
        self._queued += 1
        if self._queued > self.backlog:
            self._drop_one()
        self._pump()

    def close(self) -> None:
        """Start nothing more (shutdown); running jobs are the owner's to cancel."""
        self._closed = True
        self._waiting.clear()
        self._counts.clear()
        self._queued = 0
        for futures in self._resuming.values():
            for future, _ in futures:
                future.cancel()
        self._resuming.clear()

    def _drop_one(self) -> None:
        destination = max(self._counts, key=self._counts.__getitem__)
        owners = self._waiting[destination]
        owner = max(owners, key=lambda o: len(owners[o]))
        name, _ = self._take_waiting(destination, owner, keep_turn=True)
        self._on_drop(destination, name)

    def _pump(self) -> None:
        while self._busy < self.at_once and not self._closed:
            if self._wake_one():
                continue
            found = self._next_waiting()
            if found is None:
                return
            destination, owner = found
            name, job = self._take_waiting(destination, owner, keep_turn=False)
            self._take(destination, owner)
            self._start(self._run(destination, job, owner), name)

    def _take_waiting(self, destination: str, owner: Owner, keep_turn: bool) -> tuple[str, Job]:
        """The oldest waiting job of ``owner`` at ``destination``; unless ``keep_turn``, the
        owner and the destination go to the end of their turns."""
        owners = self._waiting[destination]
        jobs = owners[owner]
        taken = jobs.popleft()
        if not jobs:
            del owners[owner]
        elif not keep_turn:
            owners[owner] = owners.pop(owner)
        if not owners:
            del self._waiting[destination]
        elif not keep_turn:
            self._waiting[destination] = self._waiting.pop(destination)
        left = self._counts[destination] - 1
        if left:
            self._counts[destination] = left
        else:
            del self._counts[destination]
        self._queued -= 1
        return taken

    def _free(self, destination: str, owner: Owner) -> bool:
        return self._running.get(destination, 0) < self.per_destination and (
            owner is None or self._owners.get(owner, 0) < self.per_owner
        )

    def _wake_one(self) -> bool:
        """Give a slot to a job back from a pause (they go before new jobs); False if none
        can have one."""
        for destination, futures in self._resuming.items():
            for i, (future, owner) in enumerate(futures):
                if future.done():  # cancelled meanwhile
                    del futures[i]
                elif not self._free(destination, owner):
                    continue
                else:
                    del futures[i]
                    self._take(destination, owner)
                    future.set_result(None)
                if not futures:
                    del self._resuming[destination]
                return True
        return False

    def _next_waiting(self) -> tuple[str, Owner] | None:
        """The destination whose turn it is, and the owner whose turn it is there, among
        those with a free slot (the jobs of an owner at its limit wait, the others pass
        them): a look at each waiting destination and owner, not at each job."""
        for destination, owners in self._waiting.items():
            if self._running.get(destination, 0) >= self.per_destination:
                continue
            for owner in owners:
                if owner is None or self._owners.get(owner, 0) < self.per_owner:
                    return destination, owner
        return None

    def _take(self, destination: str, owner: Owner) -> None:
        self._busy += 1
        self._running[destination] = self._running.get(destination, 0) + 1
        if owner is not None:
            self._owners[owner] = self._owners.get(owner, 0) + 1

    def _release(self, destination: str, owner: Owner) -> None:
        self._busy -= 1
        _count_down(self._running, destination)
        if owner is not None:
            _count_down(self._owners, owner)
        self._pump()

    async def _resume(self, destination: str, owner: Owner) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._resuming.setdefault(destination, deque()).append((future, owner))
        self._pump()
        await future

    async def _run(self, destination: str, job: Job, owner: Owner) -> None:
        slot = _Slot(self, destination, owner)
        token = _SLOT.set(slot)
        try:
            await job()
        finally:
            _SLOT.reset(token)
            if slot.held:
                self._release(destination, owner)


def _count_down(counts: dict[str, int], key: str) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]
