"""The provider process: runs one ``Provider`` and talks to the hub.

Threads inside a provider process:

* **commands**: blocks on the command queue; answers ``Ping`` at once, hands ``GetHistory``
  to a bounded thread pool and every other command to the control thread.
* **control** (the main thread): calls ``init`` and then the streaming hooks one at a time,
  in the order the hub sent them; checks staleness every second.
* **writer**: writes the events that had to wait to the hub's pipe in batches (merging
  superseded states of a forming bar when the hub is behind); sends a heartbeat when idle;
  exits the process if the hub is gone. A thread that publishes while nothing waits writes
  its events itself (:mod:`.pipe_out`).
* **history pool**: ``HISTORY_THREADS`` workers calling ``get_history``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import queue
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from backend import logs
from backend.errors import CandlewireError, ProviderError, ProviderUnavailable
from backend.model import intervals
from backend.model.bars import Bar, SeriesId, flaw, to_bar
from backend.runtime import output
from backend.runtime.messages import (
    Command,
    GetHistory,
    Heartbeat,
    HistoryReply,
    NoUpdate,
    Ping,
    Pong,
    Ready,
    Shutdown,
    StartStreaming,
    Status,
    StopStreaming,
    StreamUntil,
)
from backend.runtime.pipe_out import EventPipe
from backend.runtime.registry import load_provider_class

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

    from backend.runtime.provider import Provider
    from backend.settings import Settings

logger = logging.getLogger(__name__)

# A provider's threads are I/O multiplexers: the writer must get the GIL soon after its pipe
# write returns, not after CPython's default 5 ms, or a busy provider thread throttles it.
_SWITCH_INTERVAL = 0.001
_PR_SET_PDEATHSIG = 1
FENCED_EXIT = 3  # the exit code of a process that stopped itself at its lease deadline
PARENT_SILENCE = 1.5  # seconds without a command (pings come every second): a frozen parent
FENCE_SETTLE = 0.25  # then this long for the command thread to read what waits, if anything
# The fence closes this long before the deadline (its settle and a late wake-up included):
# the deadline is the earliest moment a standby may take the lease, and from then on the
# two must not stream side by side. A running node renews and pings long before it.
FENCE_LEAD = 0.5
# A history reply over this many times its count and EXCESS_BARS more is cut to its window.
EXCESS_FACTOR = 4
EXCESS_BARS = 10_000


def run_provider(
    key: str,
    path: str,
    settings: Settings,
    commands: Queue[Command],
    events: Connection,
) -> None:
    """Entry point of a provider process (target of ``multiprocessing.Process``)."""
    logs.configure(settings.LOG_LEVEL, f"provider:{key}", logs.secrets_of(settings))
    output.capture()  # print() and stderr writes of the provider: log lines, prefixed
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the hub stops us; Ctrl+C is for the hub
    sys.setswitchinterval(_SWITCH_INTERVAL)
    runner = ProviderRunner(key, path, settings, commands, events)
    signal.signal(signal.SIGTERM, lambda *_: runner.request_stop())
    sys.exit(runner.run())


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when the hub dies, even by ``kill -9``."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ProviderRunner:
    """Owns one provider instance and the threads that serve it."""

    def __init__(
        self,
        key: str,
        path: str,
        settings: Settings,
        commands: Queue[Command],
        events: Connection,
    ) -> None:
        self.key = key
        self.path = path
        self.settings = settings
        self.commands = commands
        self.events = events
        self.parent = os.getppid()
        self.pipe = EventPipe(key, events, lambda: Heartbeat(self.busy_history), self.parent)
        self.control: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self.stopping = threading.Event()
        self.pool = ThreadPoolExecutor(settings.HISTORY_THREADS, thread_name_prefix="history")
        self.busy_history = 0
        self.busy_lock = threading.Lock()
        self.stream_until: float | None = None  # StreamUntil: set by the command thread
        self.last_word = time.monotonic()  # when the last command came (set by that thread)
        self.code = 0
        # the control hook running now and since when (set by the control thread)
        self.hook: tuple[float, Command] | None = None
        self.hook_reported = False  # it ran past HEARTBEAT_TIMEOUT and was reported
        # get_history calls running now: request id -> (since when, request); those that ran
        # past HISTORY_TIMEOUT and were reported (guarded by busy_lock)
        self.history_calls: dict[int, tuple[float, GetHistory]] = {}
        self.history_reported: set[int] = set()
        self.stuck_reported = False  # the last status sent was "stuck" (under status_lock)
        # the provider's own last status (report_status), shown again when nothing is stuck
        self.own_status: Status | None = None
        self.status_lock = threading.Lock()

    def stop(self) -> None:
        self.stopping.set()
        self.pipe.stop()
        self.control.put(Shutdown())

    def request_stop(self) -> None:
        """Stop, from a signal handler: it runs on the main thread between two bytecodes,
        perhaps while that thread holds a lock (inside ``threading.Event.set``, say, or a
        second SIGTERM inside the handler of the first), so it only does what takes no lock
        twice: ``SimpleQueue.put`` is reentrant. The control loop then calls :meth:`stop`."""
        self.control.put(Shutdown())

    def run(self) -> int:
        """Load the provider, serve commands until told to stop; return the exit code."""
        threading.Thread(target=self.pipe.write_loop, name="writer", daemon=True).start()
        try:
            provider = load_provider_class(self.path)()
            provider._attach(
                self.key, self.settings, self.pipe.put, self.pipe.put_many, self._own_status
            )
        except CandlewireError as exc:
            logger.exception("provider %s could not be loaded", self.key)
            return self._fail(f"could not be loaded: {exc}", 1)
        threading.Thread(target=self._command_loop, args=(provider,), daemon=True).start()
        try:
            provider.init()
        except SystemExit as exc:  # init() gave up: say so, or only "exit code N" is known
            code = exc.code if isinstance(exc.code, int) else 1
            logger.error("provider %s: init() called sys.exit(%r)", self.key, exc.code)
            return self._fail(f"init() called sys.exit({exc.code!r})", code)
        except Exception as exc:  # a broken init() must restart the process, with its traceback
            logger.exception("provider %s: init() failed", self.key)
            return self._fail(f"init() failed: {_describe(exc)}", 1)
        # What exists now (modules, the provider's clients and tables) is frozen out of
        # garbage collection: a full collection of a provider process that imported an
        # exchange client and websockets (57,000 objects) took 65-72 ms here (load 12), every
        # update it carries waiting; after the freeze, one scans only what came since.
        gc.freeze()
        persist = bool(getattr(provider, "persist_history", True))
        budgeted = bool(getattr(provider, "history_budget", True))
        self.pipe.put(Ready(os.getpid(), persist, budgeted))
        logger.info("provider %s ready (pid %d)", self.key, os.getpid())
        self._control_loop(provider)
        self._shutdown(provider)
        return self._finish(self.code)

    # ------------------------------------------------------------------ threads

    def _command_loop(self, provider: Provider) -> None:
        while not self.stopping.is_set():
            try:
                command = self.commands.get()
            except (EOFError, OSError):
                self.stop()
                return
            self.last_word = time.monotonic()
            match command:
                case Ping(seq):
                    self.pipe.put(Pong(seq))
                    self._watch_hook(provider)
                case GetHistory():
                    with self.busy_lock:
                        self.busy_history += 1
                    self.pool.submit(self._answer_history, provider, command)
                case Shutdown():
                    self.stop()
                    return
                case StreamUntil(deadline):
                    self.stream_until = deadline
                case _:
                    self.control.put(command)

    def _control_loop(self, provider: Provider) -> None:
        while not self.stopping.is_set():
            until = self.stream_until
            wait = 1.0
            if until is not None:  # wake when the fence could close
                due = max(until - FENCE_LEAD, self.last_word + PARENT_SILENCE) - time.monotonic()
                wait = min(1.0, max(0.05, due))
            try:
                command = self.control.get(timeout=wait)
            except queue.Empty:
                command = None
            if self._fenced(provider):
                return
            self._check_staleness(provider)
            if command is not None:
                self._run_hook(provider, command)

    def _fenced(self, provider: Provider) -> bool:
        """Within :data:`FENCE_LEAD` of the :class:`StreamUntil` deadline while streaming,
        with no word from the node (not even its pings) for :data:`PARENT_SILENCE`: the node
        is frozen or its event loop stalled, it renews no lease, and a standby may take over
        at the deadline. Stop (exit code
        :data:`FENCED_EXIT`): the node restarts the process once it runs again, and the new
        process streams only what it is asked. A node that runs but lost Redis keeps
        pinging; it stops its streams itself at the same deadline."""
        if not self._past_deadline(provider):
            return False
        # This process may itself have been paused (SIGSTOP, swapped out, starved): what the
        # node sent meanwhile may still wait unread. The command thread reads it first.
        if self.stopping.wait(FENCE_SETTLE):
            return False
        if not self.commands.empty() or not self._past_deadline(provider):
            return False
        until = self.stream_until or 0.0
        logger.error(
            "provider %s: its node renewed no lease and the lease ends in %.1f s (frozen or "
            "stalled): stopping its streams and exiting, so that no two nodes stream it",
            self.key,
            max(0.0, until - time.monotonic()),
        )
        self.code = FENCED_EXIT
        self.stop()
        return True

    def _past_deadline(self, provider: Provider) -> bool:
        until = self.stream_until
        now = time.monotonic()
        return (
            until is not None
            and now >= until - FENCE_LEAD
            and now - self.last_word >= PARENT_SILENCE
            and bool(provider.streaming_keys())
        )

    def _watch_hook(self, provider: Provider) -> None:
        """A control hook (``start_streaming``, ``on_close``, ``no_update``) that has not
        returned within ``HEARTBEAT_TIMEOUT`` holds up every later subscription and
        unsubscription of the provider, while its other threads (and pings) go on: it is
        logged once, ``/health`` shows the provider ``stuck``, and the clients of the key it
        was starting get an ``error``."""
        self._watch_history(provider)
        hook = self.hook
        if hook is None or self.hook_reported:
            return
        started, command = hook
        stuck = time.monotonic() - started
        if stuck < self.settings.HEARTBEAT_TIMEOUT:
            return
        self.hook_reported = True
        what = _hook_name(command)
        detail = f"{what} has not returned for {stuck:.0f} s; later subscriptions wait behind it"
        logger.error("provider %s: %s", self.key, detail)
        self._report_stuck()
        if isinstance(command, StartStreaming):
            message = f"{self.key}: {what} has not returned; no live updates"
            provider.notify(command.symbol, command.interval, "provider_unavailable", message)

    def _watch_history(self, provider: Provider) -> None:
        """A ``get_history`` call that has not returned within ``HISTORY_TIMEOUT`` (its
        client already got an error) holds one of the ``HISTORY_THREADS`` for good, and
        when all are held every later history call of the provider times out: it is
        logged once, and ``/health`` shows the provider ``stuck`` until it returns."""
        now = time.monotonic()
        limit = self.settings.HISTORY_TIMEOUT
        with self.busy_lock:
            late = [
                (request_id, now - started, request)
                for request_id, (started, request) in self.history_calls.items()
                if request_id not in self.history_reported and now - started >= limit
            ]
            self.history_reported.update(request_id for request_id, _, _ in late)
            held = len(self.history_calls)
        for _, took, request in late:
            logger.error(
                "provider %s: get_history(%r, %r) has not returned for %.0f s; %d of %d "
                "history threads are busy",
                self.key,
                request.symbol,
                request.interval,
                took,
                held,
                self.settings.HISTORY_THREADS,
            )
        if late:
            self._report_stuck()

    def _report_stuck(self) -> None:
        """Send the provider's status from what is stuck now: a control hook and the
        history calls past their timeout (``stuck``, naming the provider's own status), or,
        when nothing is any more, the provider's own last status again (``ok`` if it never
        reported one): a ``banned`` provider whose history call returned is still banned."""
        with self.status_lock:
            parts = self._stuck_parts()
            if parts:
                self.stuck_reported = True
                self.pipe.put(Status("stuck", self._stuck_detail(parts)))
            elif self.stuck_reported:
                self.stuck_reported = False
                self.pipe.put(self.own_status or Status("ok", ""))

    def _own_status(self, status: Status) -> None:
        """The provider reported its own state (any thread): sent as it is, or, while
        something is stuck, kept for when it returns and named in the ``stuck`` detail."""
        with self.status_lock:
            self.own_status = status
            parts = self._stuck_parts() if self.stuck_reported else []
            if parts:
                self.pipe.put(Status("stuck", self._stuck_detail(parts)))
            else:  # (what was stuck may have returned a moment ago: nothing is now)
                self.stuck_reported = False
                self.pipe.put(status)

    def _stuck_parts(self) -> list[str]:
        """What is stuck now, one phrase each (under ``status_lock``)."""
        parts = []
        hook = self.hook
        if hook is not None and self.hook_reported:
            parts.append(f"{_hook_name(hook[1])} has not returned; later subscriptions wait")
        with self.busy_lock:
            late = [self.history_calls[i][1] for i in self.history_reported]
            threads = len(self.history_calls)
        if late:
            names = ", ".join(f"{r.symbol} {r.interval}" for r in late[:3])
            parts.append(
                f"{len(late)} get_history call(s) past HISTORY_TIMEOUT ({names}); "
                f"{threads} of {self.settings.HISTORY_THREADS} history threads busy"
            )
        return parts

    def _stuck_detail(self, parts: list[str]) -> str:
        own = self.own_status
        if own is not None:
            said = f"{own.state}: {own.detail}" if own.detail else own.state
            parts = [*parts, f"its own status: {said}"]
        return "; ".join(parts)

    def _run_hook(self, provider: Provider, command: Command) -> None:
        self.hook = (time.monotonic(), command)
        try:
            self._call_hook(provider, command)
        finally:
            started = self.hook[0]
            self.hook = None
            if self.hook_reported:
                self.hook_reported = False
                took = time.monotonic() - started
                logger.warning(
                    "provider %s: %s returned after %.0f s", self.key, _hook_name(command), took
                )
                self._report_stuck()

    def _call_hook(self, provider: Provider, command: Command) -> None:
        try:
            match command:
                case StartStreaming(client, symbol, interval):
                    provider._subscribe(client, symbol, interval)
                case StopStreaming(client, symbol, interval):
                    provider._unsubscribe(client, symbol, interval)
                case NoUpdate(symbol, interval):
                    logger.info("provider %s: no update on %s %s", self.key, symbol, interval)
                    provider.no_update(symbol, interval)
                case Shutdown():
                    self.stop()
        except Exception as exc:  # a hook's bug must not stop the provider; it is logged
            logger.exception("provider %s: hook failed: %s", self.key, _hook_name(command))
            if isinstance(command, StartStreaming):  # the chart would wait in silence
                message = (
                    f"{self.key}: {_hook_name(command)} failed ({type(exc).__name__}); "
                    "live updates may not come"
                )
                provider.notify(command.symbol, command.interval, "provider_error", message)

    def _check_staleness(self, provider: Provider) -> None:
        for symbol, interval in provider._stale_keys(time.monotonic()):
            self._run_hook(provider, NoUpdate(symbol, interval))

    def _answer_history(self, provider: Provider, request: GetHistory) -> None:
        with self.busy_lock:
            self.history_calls[request.request_id] = (time.monotonic(), request)
        try:
            raw = provider.get_history(
                request.symbol, request.interval, request.start, request.end, request.count
            )
            bars = _to_bars(
                raw, SeriesId(provider.source, request.symbol, request.interval), self.key
            )
            reply = HistoryReply(request.request_id, _within(bars, request, self.key))
        except CandlewireError as exc:
            logger.warning("provider %s: get_history(%s): %s", self.key, request.symbol, exc)
            reply = HistoryReply(request.request_id, error=exc)
        # Vendor errors: log the traceback, send a picklable error. SystemExit too: on a
        # pool thread it would end nothing but this call, and the client would wait out
        # HISTORY_TIMEOUT for a reply that never comes.
        except BaseException as exc:
            logger.exception("provider %s: get_history failed for %r", self.key, request)
            # The vendor's text may carry internal URLs and hosts: it stays in the log above.
            error = ProviderUnavailable(f"{self.key}: history failed ({type(exc).__name__})")
            reply = HistoryReply(request.request_id, error=error)
        finally:
            with self.busy_lock:
                self.busy_history -= 1
                started, _ = self.history_calls.pop(request.request_id)
                was_reported = request.request_id in self.history_reported
                self.history_reported.discard(request.request_id)
        self.pipe.put(reply)
        if was_reported:
            logger.warning(
                "provider %s: get_history(%r, %r) returned after %.0f s",
                self.key,
                request.symbol,
                request.interval,
                time.monotonic() - started,
            )
            self._report_stuck()

    # ------------------------------------------------------------------ stopping

    def _shutdown(self, provider: Provider) -> None:
        try:
            provider.shutdown()
        except Exception:  # a failing cleanup is logged; the process exits anyway
            logger.exception("provider %s: shutdown() failed", self.key)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _fail(self, why: str, code: int) -> int:
        """Exit a process that could not start, after telling the hub why (``/health``
        shows it as the provider's ``failed`` status and its ``last_error``)."""
        secrets = [*logs.secrets_of(self.settings), *logs.environment_secrets()]
        self.pipe.put(Status("failed", logs.RedactSecrets(secrets).redact(why)))
        return self._finish(code)

    def _finish(self, code: int) -> int:
        deadline = time.monotonic() + 2.0
        while not self.pipe.idle() and time.monotonic() < deadline:
            time.sleep(0.01)
        return code


def _within(bars: list[Bar], request: GetHistory, key: str) -> list[Bar]:
    """``bars`` (sorted) as sent to the hub: a reply far larger than asked (a provider that
    returns its whole data set whatever the window) keeps the bars of the window asked,
    logged; a million bars stalled the hub for seconds and filled the store and the cache
    with bars nobody asked for. Every bar of the window stays (the hub counts the window as
    known), and a usual reply, even with a few bars either side of it, is kept whole."""
    if len(bars) <= max(EXCESS_FACTOR * request.count, request.count + EXCESS_BARS):
        return bars
    try:
        start = intervals.parse_query_time(request.start)
        end = intervals.parse_query_time(request.end)
    except ValueError:
        return bars
    kept = [
        bar for bar in bars if (start is None or bar[0] >= start) and (end is None or bar[0] <= end)
    ]
    logger.warning(
        "provider %s: get_history(%r, %r, %s, %s, count %d) returned %d bars: kept the %d "
        "of the window asked",
        key,
        request.symbol,
        request.interval,
        request.start,
        request.end,
        request.count,
        len(bars),
        len(kept),
    )
    return kept


def _to_bars(raw: Any, series: SeriesId, key: str) -> list[Bar]:
    """Bars from what ``get_history`` returned, sorted by time with duplicates removed (the
    last one wins). An item that is no bar, or an impossible one (:func:`flaw`), is skipped,
    and the call logged once with how many and the first of them: one bad row of a vendor
    does not cost the client the rest. When no item at all is a bar, the provider's code is
    wrong, not the window empty: raises :class:`ProviderError` saying so (the client gets
    it, and the hub does not take the window for one without bars)."""
    if raw is None:
        return []
    if hasattr(raw, "to_dict"):  # a pandas DataFrame
        raw = raw.to_dict("records")
    by_time: dict[int, Bar] = {}
    bad: list[str] = []
    for item in raw:
        try:
            bar = to_bar(item, series)
        except (ValueError, TypeError, OverflowError) as exc:
            bad.append(str(exc))
            continue
        problem = flaw(bar)
        if problem is not None:
            bad.append(f"a bar at {intervals.format_date(bar[0])} with {problem}")
            continue
        by_time[bar[0]] = bar
    if bad:
        logger.warning(
            "get_history(%s, %s) returned %d item(s) that are not bars, skipped; the first: %s",
            series.name,
            series.interval,
            len(bad),
            bad[0],
        )
        if not by_time:
            raise ProviderError(  # its first item stays in the log line above
                f"{key}: none of the {len(bad)} items get_history returned is a bar"
            )
    return [by_time[t] for t in sorted(by_time)]


def _describe(exc: BaseException) -> str:
    """An exception for ``/health``: its type and the first line of its text, clipped."""
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _hook_name(command: Command) -> str:
    """The hook a control command runs, for the log: ``start_streaming('AAA', '1m')``."""
    match command:
        case StartStreaming(_, symbol, interval):
            return f"start_streaming({symbol!r}, {interval!r})"
        case StopStreaming(_, symbol, interval):
            return f"on_close({symbol!r}, {interval!r})"
        case NoUpdate(symbol, interval):
            return f"no_update({symbol!r}, {interval!r})"
    return type(command).__name__
