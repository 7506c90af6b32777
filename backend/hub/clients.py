"""A connected client as the hub sees it, and its reply jobs.

A client's requests take effect in the order it sent them (``requests``); what needs I/O to
answer (history, search) runs as a *reply job*. :class:`Replies` owns those jobs: jobs of one
lane (one series key, or the searches) run one after another, so replies of one kind come
in the order of their requests, while other lanes go on (a slow history of one key does not
hold up another chart). At most ``limit`` jobs are pending per client; submitting more waits,
which stops reading that client's frames until one finishes. A job that fails is logged and
reported through ``on_failure`` with the request it answered (so the client still gets an
answer to it, an error echoing it); removing the client cancels its jobs (and drops later ones:
the client may leave while its reader waits for a slot).

A frame that mixes ``data`` requests with others has its replies ordered as protocols.md
1.12 (4) says, "all data items of one frame before the other items": while it is taken the
jobs are held (:meth:`Replies.defer`), those of its ``data`` items marked ``first``, then
:meth:`Replies.flush` starts the first ones (with what their key's requests before them
asked: a key's replies keep their order) and every other one behind them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from backend.ratelimits import WorkBudget
from backend.wire.outbox import Outbox

logger = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]


class Replies:
    """The pending reply jobs of one client: ordered per lane, bounded, owned."""

    __slots__ = (
        "_cancelled",
        "_deferred",
        "_slots",
        "_tails",
        "_tasks",
        "first",
        "on_failure",
        "owner",
    )

    def __init__(
        self,
        limit: int,
        owner: str,
        on_failure: Callable[[BaseException, Any], None] | None = None,
    ) -> None:
        self.owner = owner
        self.on_failure = on_failure
        self._slots = asyncio.Semaphore(limit)
        self._tails: dict[Hashable, asyncio.Task[None]] = {}
        # a dict used as a set: 64 bytes empty (a set is 216), and every idle client has one
        self._tasks: dict[asyncio.Task[None], None] = {}
        self._cancelled = False
        # while a mixed frame is taken: its jobs, each with whether it is a ``data`` item's
        self._deferred: list[tuple[Hashable, Job, bool, Any]] | None = None
        self.first = False  # whether jobs submitted now are a ``data`` item's (deferred)

    @property
    def deferring(self) -> bool:
        return self._deferred is not None

    def defer(self) -> None:
        """Hold the jobs submitted from now until :meth:`flush`, each marked :attr:`first`
        as it is then."""
        self._deferred = []
        self.first = False

    async def flush(self) -> list[asyncio.Task[None]]:
        """Start the jobs held since :meth:`defer`: first, in their order, the ``first``
        ones and, in the lane of each, the jobs held before it (so a key's replies keep
        the order of its requests); then the others, each in its lane and after all of
        those. Returns the tasks started first."""
        held, self._deferred = self._deferred or [], None
        self.first = False
        last: dict[Hashable, int] = {}  # lane -> the index of its last first job
        for index, (lane, _, first, _) in enumerate(held):
            if first:
                last[lane] = index
        leading: list[asyncio.Task[None]] = []
        later: list[tuple[Hashable, Job, Any]] = []
        for index, (lane, job, _, request) in enumerate(held):
            if index <= last.get(lane, -1):
                task = await self._start(lane, job, request)
                if task is not None:
                    leading.append(task)
            else:
                later.append((lane, job, request))
        for lane, job, request in later:
            await self._start(lane, functools.partial(_after, leading, job), request)
        return leading

    async def submit(self, lane: Hashable, job: Job, request: Any = None) -> None:
        """Run ``job`` (the answer to ``request``, which ``on_failure`` gets if it raises)
        after the jobs already in ``lane``; waits while ``limit`` are pending. After
        :meth:`cancel` (the client is gone), ``job`` is dropped. While deferring
        (:meth:`defer`), ``job`` is held until :meth:`flush`."""
        if self._deferred is not None:
            self._deferred.append((lane, job, self.first, request))
            return
        await self._start(lane, job, request)

    async def _start(
        self, lane: Hashable, job: Job, request: Any = None
    ) -> asyncio.Task[None] | None:
        await self._slots.acquire()
        if self._cancelled:
            self._slots.release()
            return None
        previous = self._tails.get(lane)
        task = asyncio.get_running_loop().create_task(self._run(previous, job))
        self._tails[lane] = task
        self._tasks[task] = None
        task.add_done_callback(functools.partial(self._done, lane, request))
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def idle(self) -> None:
        """Wait until no job is pending (tests, shutdown)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    def cancel(self) -> None:
        """Cancel the pending jobs and drop those submitted later."""
        self._cancelled = True
        for task in self._tasks:
            task.cancel()

    async def _run(self, previous: asyncio.Task[None] | None, job: Job) -> None:
        try:
            if previous is not None:
                await asyncio.wait({previous})  # its outcome is its own; only the turn matters
            await job()
        finally:
            self._slots.release()

    def _done(self, lane: Hashable, request: Any, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        if self._tails.get(lane) is task:
            del self._tails[lane]
        # A dict keeps its grown table when emptied by deletions: an idle client that once
        # had replies would hold two of them (about 300 bytes); fresh ones hold none.
        if not self._tasks:
            self._tasks = {}
        if not self._tails:
            self._tails = {}
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.failed(error, request)

    def failed(self, error: BaseException, request: Any) -> None:
        """The reply to ``request`` raised ``error``: logged, and ``on_failure`` told."""
        logger.error("%s: a reply failed", self.owner, exc_info=error)
        if self.on_failure is not None:
            self.on_failure(error, request)


async def _after(firsts: list[asyncio.Task[None]], job: Job) -> None:
    """``job`` once every task of ``firsts`` has ended (their outcomes are their own)."""
    pending = [task for task in firsts if not task.done()]
    if pending:
        await asyncio.wait(pending)
    await job()


class Client:
    """One connected client: its outbox, how to close it, its pending replies and its
    history budget."""

    __slots__ = ("budget", "id", "kick", "outbox", "peer", "replies", "small_bars")

    def __init__(
        self,
        client_id: int,
        peer: str,
        outbox: Outbox,
        kick: Callable[[int, str], None],
        replies: Replies,
    ) -> None:
        self.id = client_id
        self.peer = peer
        self.outbox = outbox
        self.kick = kick
        self.replies = replies
        # the history bars it was sent lately (``requests``; made once it asked for
        # ``BUDGET_FROM`` bars in all), and the bars it asked for before that
        self.budget: WorkBudget | None = None
        self.small_bars = 0
