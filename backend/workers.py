"""The hub's worker processes of ``server.py --role hub --workers N``: N processes on one port.

Worker 1 is the process started by the user. It forks workers 2..N (:func:`fork_workers`)
once the app's modules are imported, keeps them running (:class:`WorkerKeeper`: a worker
that exits is logged and started again, as a fresh ``server.py`` process, with a growing
delay while it keeps exiting soon after its start) and stops them when it stops
(:func:`stop_workers`). Each worker stops by itself when worker 1 is gone
(:func:`follow_parent`), even after a SIGKILL.

Not: the app each worker serves (``backend.app``), the listening socket (``server.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

logger = logging.getLogger("candlewire.workers")

POLL_SECONDS = 0.5
FIRST_DELAY_SECONDS = 1.0  # before a worker that exited is started again
MAX_DELAY_SECONDS = 60.0
STABLE_SECONDS = 60.0  # a worker that ran this long starts again after FIRST_DELAY_SECONDS
SERVER_SCRIPT = Path(__file__).resolve().parent.parent / "server.py"


def fork_workers(count: int) -> tuple[int | None, list[int], int]:
    """Workers 2..N of ``--workers N``: forks of this process, made after the app's modules
    were imported (so a worker starts in a moment) and before any thread or event loop.
    Returns ``(parent, [], index)`` in a worker (``parent``: the pid to follow; ``index``:
    2..N), ``(None, pids, 1)`` in the first. Each worker binds the port again with
    ``SO_REUSEPORT``; they share the DB file (SQLite in WAL mode)."""
    import backend.app  # noqa: F401 - imported once, before the forks

    parent, pids = os.getpid(), []
    for index in range(2, count + 1):
        pid = os.fork()
        if pid == 0:
            return parent, [], index
        pids.append(pid)
    return None, pids, 1


def stop_workers(pids: list[int], timeout: float = 10.0) -> None:
    """SIGTERM to each worker, SIGKILL to those still running after ``timeout``."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    waiting = set(pids)
    while waiting:
        for pid in list(waiting):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue
            waiting.discard(pid)
        if waiting and time.monotonic() > deadline:
            for pid in waiting:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        elif waiting:
            time.sleep(0.05)


def follow_parent(parent: int) -> None:
    """A worker stops (SIGTERM to itself) when the worker that started it is gone, even if
    that one was killed with SIGKILL."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(POLL_SECONDS)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="follow-parent", daemon=True).start()


def hub_run(first: int) -> str:
    """The run of the hub whose worker 1 is process ``first`` (what its workers, those
    started again alone included, share: the alerts note it): that pid and the time it
    started, as a pid alone may come back in a later run."""
    try:
        started = psutil.Process(first).create_time()
    except psutil.Error:
        started = 0.0
    return f"{first}@{started:.2f}"


def worker_of(text: str) -> tuple[int, int]:
    """``--worker-of PARENT:INDEX`` (given by :class:`WorkerKeeper` only)."""
    parent, _, index = text.partition(":")
    return int(parent), int(index)


@dataclass
class _Worker:
    index: int
    pid: int
    started: float  # time.monotonic()
    delay: float  # before the next start, should it exit soon


class WorkerKeeper:
    """Worker 1's watch over workers 2..N (a thread of its own, owned by the hub server).

    Every ``POLL_SECONDS`` it reaps the workers that exited. Each one is logged with its exit
    status and started again after its delay: ``FIRST_DELAY_SECONDS``, doubled (up to
    ``MAX_DELAY_SECONDS``) each time it exits within ``STABLE_SECONDS`` of its start, so a
    worker that cannot start costs a line a minute, not a loop. ``start(index)`` starts a
    worker (by default a new ``server.py`` with this process's arguments, ``--port`` the
    port actually bound and ``--worker-of``); :meth:`stop` ends the watch before the
    workers are stopped, so none is started again meanwhile.
    """

    def __init__(
        self,
        pids: list[int],
        port: int,
        argv: list[str],
        start: Callable[[int], int] | None = None,
    ) -> None:
        now = time.monotonic()
        self._workers = {
            i: _Worker(i, pid, now, FIRST_DELAY_SECONDS) for i, pid in enumerate(pids, start=2)
        }
        self._port = port
        self._argv = argv
        self._start = start or self._spawn
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.restarts = 0
        self._thread = threading.Thread(target=self._run, name="worker-keeper", daemon=True)

    def run(self) -> None:
        """Start watching (once the first worker's app has started)."""
        if self._workers:
            self._thread.start()

    def stop(self) -> list[int]:
        """Stop watching; return the pids of the workers to stop."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            return [w.pid for w in self._workers.values() if w.pid > 0]

    def _run(self) -> None:
        pending: dict[int, float] = {}  # index -> when to start it again
        while not self._stopping.wait(POLL_SECONDS):
            now = time.monotonic()
            for worker in list(self._workers.values()):
                if worker.pid > 0 and (status := _exited(worker.pid)) is not None:
                    pending[worker.index] = now + self._exited(worker, status, now)
            for index, when in list(pending.items()):
                if now >= when and not self._stopping.is_set():
                    del pending[index]
                    if (again := self._restart(self._workers[index])) is not None:
                        pending[index] = time.monotonic() + again

    def _exited(self, worker: _Worker, status: int, now: float) -> float:
        """Log an exit; return the delay before the worker starts again."""
        if now - worker.started >= STABLE_SECONDS:
            worker.delay = FIRST_DELAY_SECONDS
        delay = worker.delay
        worker.delay = min(delay * 2, MAX_DELAY_SECONDS)
        logger.error(
            "hub worker %d (pid %d) exited (%s); starting it again in %.1f s",
            worker.index,
            worker.pid,
            _describe(status),
            delay,
        )
        with self._lock:
            worker.pid = 0
        return delay

    def _restart(self, worker: _Worker) -> float | None:
        """Start ``worker`` again; if that fails, the delay before the next try."""
        try:
            pid = self._start(worker.index)
        except OSError as exc:
            delay = worker.delay
            worker.delay = min(delay * 2, MAX_DELAY_SECONDS)
            logger.error(
                "hub worker %d could not be started (%s); trying again in %.1f s",
                worker.index,
                exc,
                delay,
            )
            return delay
        with self._lock:
            worker.pid, worker.started = pid, time.monotonic()
        self.restarts += 1
        logger.warning("hub worker %d started again (pid %d)", worker.index, pid)
        return None

    def _spawn(self, index: int) -> int:
        argv = [
            sys.executable,
            str(SERVER_SCRIPT),
            *self._argv,
            "--port",
            str(self._port),
            "--worker-of",
            f"{os.getpid()}:{index}",
        ]
        return os.posix_spawn(sys.executable, argv, os.environ)


def _exited(pid: int) -> int | None:
    """The exit status of worker ``pid`` if it exited (reaped now), else None."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return -1  # reaped elsewhere: gone, status unknown
    return os.waitstatus_to_exitcode(status) if done else None


def _describe(code: int) -> str:
    if code < -1:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return "status unknown" if code == -1 else f"exit status {code}"
