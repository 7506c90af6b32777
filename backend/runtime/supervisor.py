"""The supervisor: starts one process per enabled provider, watches it, restarts it.

Each provider process gets a command queue (hub -> provider) and a pipe (provider -> hub).
The hub's event loop reads the pipe with ``add_reader``: no thread hop, no polling. The
process sentinel is watched the same way, so a death is seen at once. A process that stops
answering pings for ``HEARTBEAT_TIMEOUT`` is killed. Restarts back off from 1 s to 30 s and
the backoff resets after a minute of stable running. When a (re)started process reports
``Ready``, the hub replays every open subscription into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import select
import time
from collections.abc import Callable
from enum import Enum
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from typing import TYPE_CHECKING, Any

import psutil

from backend.errors import ProviderError, ProviderUnavailable
from backend.model.bars import Bar
from backend.runtime.messages import (
    Command,
    GetHistory,
    Heartbeat,
    HistoryReply,
    Ping,
    Pong,
    Ready,
    Shutdown,
    Status,
    WireEvent,
    decode_batch,
)
from backend.runtime.runner import run_provider
from backend.tasks import Tasks, cancel_owned, start_owned

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

    from backend.settings import Settings

logger = logging.getLogger(__name__)

BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0
STARTUP_TIMEOUT = 60.0
EXIT_STATUS_WAIT = 0.5  # s: at most, for the exit status once the sentinel closed (_on_exit)
PING_EVERY = 1.0
# Per wakeup of the pipe reader, at most this many events are taken from the pipe; then
# the client writers get their turn.
MAX_EVENTS_PER_WAKEUP = 1_000
# ... and at most this long dispatching them: a batch of 500 bar updates to 50 subscribers
# each is 25,000 frames queued, 30-50 ms of one callback holding the event loop (seen by the
# stall probe once the hub fell behind and its provider's batches grew). Events are
# dispatched DISPATCH_SLICE at a time until the budget is spent; the rest waits for the next
# wakeup, after the writers have sent what was queued so far. A slice is filled from as many
# pipe messages as are waiting: a provider that writes its updates one by one (each as it
# arrived upstream) gets them dispatched together once the hub is behind, so a client with
# several of them gets one socket write instead of one each; a hub that keeps up sees one
# message per wakeup, and nothing waits for more.
DISPATCH_BUDGET = 0.005
DISPATCH_SLICE = 50

EventSink = Callable[[str, list[WireEvent]], None]
ReadySink = Callable[[str], None]
# Called around each wakeup of a pipe reader (:meth:`ProviderProcess._drain`): before its
# first slice, and after its last (also when one raised).
WakeupHooks = tuple[Callable[[], None], Callable[[], None]]


class _Exited(ProviderUnavailable):
    """The process exited with the request in hand (asked again of its successor)."""


class ProviderState(Enum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    STOPPED = "stopped"


class ProviderProcess:
    """One provider: its OS process, its channels, its state and its pending requests."""

    def __init__(
        self,
        key: str,
        path: str,
        settings: Settings,
        on_events: EventSink,
        on_ready: ReadySink,
    ) -> None:
        self.key = key
        self.path = path
        self.settings = settings
        self.on_events = on_events
        self.on_ready = on_ready
        self.state = ProviderState.STOPPED
        self.pid: int | None = None
        self.restarts = 0
        # superseded forming-bar states its process merged because the hub was behind
        self.merged = 0
        self.last_update: float | None = None
        self.last_error: str | None = None
        self.status = Status("unknown")
        self.persist = True
        self.budgeted = True  # its history calls count against the fair-use budgets
        self.started_at = 0.0
        self.last_seen = 0.0
        self.heard = False  # a sign of life came from the process started last
        self._ctx = multiprocessing.get_context("spawn")
        self._process: SpawnProcess | None = None
        self._commands: Queue[Command] | None = None
        self._events: Connection | None = None
        # ``Connection.poll()`` builds a selector per call (an eighth of a provider node's
        # time); one ``poll`` object registered once answers the same question.
        self._waiting: select.poll | None = None
        self._pending: dict[int, asyncio.Future[list[Bar]]] = {}
        self.wakeup: WakeupHooks | None = None  # see WakeupHooks (Supervisor.on_wakeup)
        self._backlog: list[WireEvent] = []  # the undispatched rest of the current batch
        self._next = 0  # its first undispatched event
        self._ids = itertools.count(1)
        self._ready = asyncio.Event()
        self._exited = asyncio.Event()
        self._backoff = BACKOFF_INITIAL
        self._restart: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    def _transition(self, state: ProviderState, why: str = "") -> None:
        if state is not self.state:
            logger.info("provider %s: %s -> %s %s", self.key, self.state.value, state.value, why)
            self.state = state

    async def start(self) -> None:
        """Spawn the process and start watching it."""
        loop = asyncio.get_running_loop()
        self._ready.clear()
        self._exited.clear()
        commands: Queue[Command] = self._ctx.Queue()
        reader, writer = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=run_provider,
            args=(self.key, self.path, self.settings, commands, writer),
            name=f"candlewire-{self.key}",
        )
        self._transition(ProviderState.STARTING)
        await asyncio.to_thread(process.start)
        writer.close()
        self._process, self._commands, self._events = process, commands, reader
        self._waiting = select.poll()
        self._waiting.register(reader.fileno(), select.POLLIN)
        self.pid = process.pid
        self.started_at = self.last_seen = time.monotonic()
        self.heard = False
        loop.add_reader(reader.fileno(), self._on_readable)
        loop.add_reader(process.sentinel, self._on_exit)

    async def stop(self, timeout: float = 5.0) -> None:
        """Ask the process to stop; terminate, then kill it if it does not."""
        self._transition(ProviderState.STOPPING)
        if self._restart is not None:
            self._restart.cancel()
        process = self._process
        if process is None or self._exited.is_set():
            self._transition(ProviderState.STOPPED)
            return
        self.send(Shutdown())
        for signal_it in (None, process.terminate, process.kill):
            if signal_it is not None:
                signal_it()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout / 2):
                    await self._exited.wait()
                break
        self._transition(ProviderState.STOPPED)

    def kill(self, why: str) -> None:
        """Kill a process that stopped answering; the exit handler restarts it."""
        if self._process is not None and self._process.is_alive():
            logger.error("provider %s (pid %s): %s; killing it", self.key, self.pid, why)
            self.last_error = why
            self._process.kill()

    def excuse(self, stalled: float) -> None:
        """The hub did not run for ``stalled`` seconds (SIGSTOP, a suspended VM, a blocked
        event loop): whatever the process wrote meanwhile waits unread in its pipe, so that
        time is not its silence (its heartbeat and startup clocks move on by it, to now at
        most). Killing it for it restarted every healthy provider after each such pause."""
        now = time.monotonic()
        self.last_seen = min(self.last_seen + stalled, now)
        if self.state is ProviderState.STARTING:
            self.started_at = min(self.started_at + stalled, now)

    def check(self, heartbeat_timeout: float) -> None:
        """Called every second by the supervisor: ping, and kill if unresponsive."""
        if self.state not in (ProviderState.STARTING, ProviderState.RUNNING):
            return
        now = time.monotonic()
        # Before its first sign of life a new process is still starting Python and importing
        # (a loaded machine takes long): it has STARTUP_TIMEOUT for that, as for init().
        limit = heartbeat_timeout if self.heard else max(heartbeat_timeout, STARTUP_TIMEOUT)
        if now - self.last_seen > limit:
            self.kill(f"no heartbeat for {now - self.last_seen:.0f} s")
        elif self.state is ProviderState.STARTING and now - self.started_at > STARTUP_TIMEOUT:
            self.kill(f"init() did not finish within {STARTUP_TIMEOUT:.0f} s")
        else:
            self.send(Ping(int(now)))

    def _on_exit(self) -> None:
        process = self._process
        if process is None:
            return
        loop = asyncio.get_running_loop()
        self._drain(limit=1_000_000, budget=float("inf"))  # what it wrote before it exited
        loop.remove_reader(process.sentinel)
        if self._events is not None:
            loop.remove_reader(self._events.fileno())
            self._events.close()
            self._events = None
            self._waiting = None
        # The sentinel closes with the child's files, a moment before the exit status can be
        # collected: a join(0) then found no status ("exit code None" after a kill -9).
        process.join(EXIT_STATUS_WAIT)
        code = process.exitcode
        self._process = None
        self._ready.clear()  # a history request waits for the next Ready, never a dead queue
        if self._commands is not None:
            self._commands.close()
            self._commands.cancel_join_thread()
            self._commands = None
        self._exited.set()
        self._fail_pending(_Exited(f"provider {self.key} exited (code {code})"))
        if self.state is ProviderState.STOPPING:
            return
        why = self.last_error  # a kill's reason, if it was killed
        if self.status.state == "failed":  # the process said why it could not start
            self.last_error = f"{self.status.detail} (exit code {code})"
            why = self.status.detail
        self.last_error = self.last_error or f"process exited with code {code}"
        # The state change below is an INFO line: a provider that crashed (os._exit, a
        # segfault, the OOM killer) must leave more than that in the log.
        logger.error(
            "provider %s (pid %s) exited with code %s%s; restarting it",
            self.key,
            process.pid,
            code,
            f" ({why})" if why else "",
        )
        self._schedule_restart(code)

    def _schedule_restart(self, code: int | None) -> None:
        if time.monotonic() - self.started_at > STABLE_AFTER:
            self._backoff = BACKOFF_INITIAL
        delay, self._backoff = self._backoff, min(self._backoff * 2, BACKOFF_MAX)
        self._transition(ProviderState.BACKOFF, f"(exit code {code}; restart in {delay:.0f} s)")
        loop = asyncio.get_running_loop()
        self._restart = loop.call_later(delay, self._spawn_restart)

    def _spawn_restart(self) -> None:
        self._restart = None
        if self.state is not ProviderState.BACKOFF:
            return
        self.restarts += 1
        task = asyncio.get_running_loop().create_task(self.start())
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("provider %s: restart failed", self.key, exc_info=task.exception())
            self._schedule_restart(None)

    # ------------------------------------------------------------------ channels

    def send(self, command: Command) -> None:
        """Queue a command for the process (never blocks the event loop)."""
        if self._commands is not None and self._process is not None:
            with contextlib.suppress(ValueError, OSError):
                self._commands.put_nowait(command)

    def _on_readable(self) -> None:
        self._drain()

    def _drain(self, limit: int = MAX_EVENTS_PER_WAKEUP, budget: float = DISPATCH_BUDGET) -> None:
        """Dispatch what waits in the pipe, a slice at a time, within ``limit`` events and
        ``budget`` seconds; between the :attr:`wakeup` hooks, if set. Nothing reaches a
        client's socket before this returns (the writers flush in a later callback)."""
        hooks = self.wakeup
        if hooks is None:
            self._dispatch_waiting(limit, budget)
            return
        hooks[0]()
        try:
            self._dispatch_waiting(limit, budget)
        finally:
            hooks[1]()

    def _dispatch_waiting(self, limit: int, budget: float) -> None:
        events = self._events
        if events is None:
            return
        loop = asyncio.get_running_loop()
        deadline = time.perf_counter() + budget
        taken = 0
        try:
            while True:
                if self._next >= len(self._backlog):
                    if taken >= limit:
                        break
                    taken += self._refill(events)
                    if not self._backlog:
                        return
                elif time.perf_counter() >= deadline:
                    break
                start = self._next
                self._next = start + DISPATCH_SLICE
                self._dispatch(self._backlog[start : self._next])
        except (EOFError, OSError):
            loop.remove_reader(events.fileno())
            return
        # More may be waiting. Come back after the client writers had their turn: an event
        # loop need not signal the pipe again for data that was already there (uvloop).
        loop.call_soon(self._drain)

    def _refill(self, events: Connection) -> int:
        """Read pipe messages while they are waiting, until a slice is full; the count
        read. The backlog must be fully dispatched before."""
        backlog: list[WireEvent] = []
        waiting = self._waiting
        while len(backlog) < DISPATCH_SLICE and (
            waiting.poll(0) if waiting is not None else events.poll()
        ):
            batch = decode_batch(events.recv_bytes())
            if backlog:
                backlog += batch
            else:
                backlog = batch
        self._backlog, self._next = backlog, 0
        return len(backlog)

    def _dispatch(self, batch: list[WireEvent]) -> None:
        self.last_seen = time.monotonic()
        self.heard = True
        forward: list[WireEvent] = []
        for event in batch:
            if type(event) is tuple:  # a bar update: most of the traffic, straight through
                forward.append(event)
                continue
            match event:
                case HistoryReply(request_id, bars, error):
                    self._resolve(request_id, bars, error)
                case Heartbeat(merged=merged):
                    self.merged += merged
                case Pong():
                    pass
                case Ready(pid, persist, budgeted):
                    self.pid = pid
                    self.persist = persist
                    self.budgeted = budgeted
                    self.last_error = None
                    if self.status.state == "failed":  # a failed start's, not this one's
                        self.status = Status("unknown")
                    self._transition(ProviderState.RUNNING)
                    self._ready.set()
                    self.on_ready(self.key)
                case Status():
                    self.status = event
                    forward.append(event)
                case _:
                    forward.append(event)
        if forward:
            self.on_events(self.key, forward)

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until the process reported ``Ready``; False on timeout. A cancel is never
        lost (:func:`asyncio.timeout`, not ``wait_for``: see :meth:`get_history`)."""
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ history

    async def get_history(
        self, symbol: str, interval: str, start: str, end: str, count: int, timeout: float
    ) -> list[Bar]:
        """Ask the process for history; raises ``ProviderError`` on failure or timeout.

        A request waits (within ``timeout``) for a process that is starting or restarting.
        One the process took with it when it exited is asked again, once, of the restarted
        process (twice would let one request that kills its provider do it again and again).

        Its waits are :func:`asyncio.timeout` blocks, not ``asyncio.wait_for``: on Python
        3.11 ``wait_for`` drops a cancel that comes as what it waits for is done (the answer
        just came, the process just got ready) and returns it, and the cancelled caller
        went on (a stopped scan waited out its next history call, up to ``timeout``).
        """
        deadline = time.monotonic() + timeout
        for attempt in range(2):
            await self._until_ready(deadline)
            request_id = next(self._ids)
            future: asyncio.Future[list[Bar]] = asyncio.get_running_loop().create_future()
            self._pending[request_id] = future
            self.send(GetHistory(request_id, symbol, interval, start, end, count))
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    return await future
            except TimeoutError:
                message = (
                    f"provider {self.key} did not answer history of {symbol} {interval} "
                    f"within {timeout:g} s"
                )
                logger.warning("%s", message)  # the client's error alone left no trace here
                raise ProviderUnavailable(message) from None
            except _Exited:
                if attempt or self.state is ProviderState.STOPPING:
                    raise
                logger.info("provider %s: asking the restarted process again", self.key)
            finally:
                self._pending.pop(request_id, None)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _until_ready(self, deadline: float) -> None:
        if self._ready.is_set():
            return
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._ready.wait()
        except TimeoutError:
            raise ProviderUnavailable(
                f"provider {self.key} is {self.state.value}; try again shortly"
            ) from None

    def _resolve(self, request_id: int, bars: list[Bar], error: BaseException | None) -> None:
        future = self._pending.pop(request_id, None)
        if future is None or future.done():
            return
        if error is None:
            future.set_result(bars)
        elif isinstance(error, ProviderError):
            future.set_exception(error)
        else:
            future.set_exception(ProviderUnavailable(f"{self.key}: {error}"))

    def _fail_pending(self, error: ProviderError) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    def resources(self) -> tuple[int, int] | None:
        """The process's resident memory (bytes) and threads now; ``None`` when it is not
        running (or just went)."""
        if self._process is None or self.pid is None or not self._process.is_alive():
            return None
        try:
            process = psutil.Process(self.pid)
            with process.oneshot():
                return process.memory_info().rss, process.num_threads()
        except psutil.Error:
            return None

    def health(self) -> dict[str, Any]:
        resources = self.resources()
        return {
            "state": self.state.value,
            "pid": self.pid if self._process is not None else None,
            "restarts": self.restarts,
            "last_update": self.last_update,
            "last_error": self.last_error,
            "status": self.status.state,
            "status_detail": self.status.detail,
            "memory_bytes": resources[0] if resources else None,
            "threads": resources[1] if resources else None,
        }


class Supervisor:
    """All provider processes of the hub."""

    def merged(self) -> dict[str, int]:
        """The superseded bar states each provider's process merged since the hub started
        (:attr:`ProviderProcess.merged`), by provider key."""
        return {key: process.merged for key, process in self.providers.items()}

    def resources(self) -> dict[str, tuple[int, int]]:
        """Each running provider process's memory (bytes) and threads, by provider key."""
        found = {key: process.resources() for key, process in self.providers.items()}
        return {key: figures for key, figures in found.items() if figures is not None}

    def __init__(self, settings: Settings, on_events: EventSink, on_ready: ReadySink) -> None:
        self.settings = settings
        registry = settings.provider_registry()
        self.providers = {
            key: ProviderProcess(key, registry[key], settings, on_events, on_ready)
            for key in settings.PROVIDERS
        }
        self._tasks: Tasks = set()
        self._stopping = False

    def on_wakeup(self, begin: Callable[[], None], end: Callable[[], None]) -> None:
        """Call ``begin()`` before and ``end()`` after each wakeup of a provider's pipe
        reader (the slices of its events dispatched in one loop callback)."""
        for process in self.providers.values():
            process.wakeup = (begin, end)

    async def start(self) -> None:
        await asyncio.gather(*(p.start() for p in self.providers.values()))
        self._start_watchdog()

    def _start_watchdog(self, error: BaseException | None = None) -> None:
        # A watchdog that died (logged by start_owned) is started again: without it no
        # provider would be pinged, killed when silent, or restarted.
        if not self._stopping:
            start_owned(self._tasks, self._watch(), "provider-watchdog", self._start_watchdog)

    async def stop(self) -> None:
        self._stopping = True
        await cancel_owned(self._tasks)
        await asyncio.gather(*(p.stop() for p in self.providers.values()))

    def get(self, key: str) -> ProviderProcess | None:
        return self.providers.get(key)

    async def _watch(self) -> None:
        ticked = time.monotonic()
        while True:
            await asyncio.sleep(PING_EVERY)
            now = time.monotonic()
            late, ticked = now - ticked - PING_EVERY, now
            if late > PING_EVERY:  # the hub itself did not run: its providers were not heard
                logger.warning(
                    "the hub did not run for %.0f s (stopped, suspended or blocked): its"
                    " providers' heartbeat clocks skip the pause",
                    late,
                )
                for provider in self.providers.values():
                    provider.excuse(late)
            for provider in self.providers.values():
                try:
                    provider.check(self.settings.HEARTBEAT_TIMEOUT)
                except OSError:  # the pipe or the process went away under us
                    logger.exception("provider %s: watchdog check failed", provider.key)


UNSERVED_STATES = frozenset({"backoff", "stopped"})
"""Provider process states in which it serves nothing (crashed or failed to start and waiting
to be started again; stopped)."""
UNSERVED_STATUSES = frozenset({"failed", "stuck"})
"""Provider statuses in which it serves nothing now: its start failed, or a hook of it has run
past ``HEARTBEAT_TIMEOUT``."""


def unserved(providers: dict[str, dict[str, Any]]) -> list[str]:
    """Why each provider of ``/health``'s ``providers`` that serves nothing now does not, in
    key order: what makes the hub's status ``degraded`` (the liveness answer, all a monitor
    without a key sees, would otherwise say ``ok`` with every provider down)."""
    troubled = []
    for key in sorted(providers):
        provider = providers[key]
        state, status = provider.get("state"), provider.get("status")
        if state in UNSERVED_STATES or status in UNSERVED_STATUSES:
            detail = provider.get("status_detail") or provider.get("last_error") or ""
            what = status if status in UNSERVED_STATUSES else state  # failed says more
            troubled.append(f"provider {key} {what}" + (f": {detail}" if detail else ""))
    return troubled
