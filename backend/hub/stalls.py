"""The event-loop stall probe: how long the hub's event loop was unable to run anything.

Every client waits on one event loop, so a callback that holds it for 40 ms delays every
update to every client by up to 40 ms. :class:`StallProbe` is a task that sleeps
``period`` seconds at a time and measures how late it wakes: the lateness is how long the
loop was held by something else. Beside each lateness it reads what the loop's thread did
meanwhile: the CPU time it used, the time it waited on a run queue for a CPU (Linux,
``/proc/thread-self/schedstat``) and the CPU time of the other threads of the process. A
stall with the loop thread busy is our own code (a callback, a collection); waiting for a
CPU is the machine (other processes); another thread busy is the GIL; none of them is a
blocking system call.

Figures (``/metrics``): ``candlewire_loop_stall_max_seconds`` (the largest lateness in the
last minute), ``candlewire_loop_stall_own_max_seconds`` (the same less the time the loop
waited for a CPU: what the hub itself caused, the figure to watch on a shared machine),
their maxima since the start (``..._max_ever_seconds``) and the counters
``candlewire_loop_stalls_total{over_ms=..}``. With ``LOOP_STALL_LOG_MS`` > 0 each stall
longer than that is logged with its split (a diagnostic, off by default); with
``LOOP_DEBUG`` asyncio's debug mode also names each callback that ran longer than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque

from backend.hub.metrics import Metrics
from backend.tasks import Tasks, cancel_owned, start_owned

logger = logging.getLogger(__name__)

THRESHOLDS_MS = (5, 10, 20, 50, 100)
BUCKET_SECONDS = 10.0  # the recent maxima are kept per 10 s, for the last minute
BUCKETS = 6
NOISE = 0.001  # lateness below this is the timer's own resolution
SCHEDSTAT = "/proc/thread-self/schedstat"  # ns on a CPU, ns waiting for one, timeslices


class RunQueueClock:
    """Seconds the calling thread has waited on a run queue (runnable, no CPU), from
    ``/proc/thread-self/schedstat``; 0 where that file does not exist."""

    def __init__(self) -> None:
        self.fd: int | None = None
        with contextlib.suppress(OSError):
            self.fd = os.open(SCHEDSTAT, os.O_RDONLY)

    def __call__(self) -> float:
        if self.fd is None:
            return 0.0
        try:
            return int(os.pread(self.fd, 100, 0).split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return 0.0

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Recent:
    """The largest value of the last ``BUCKETS`` x ``BUCKET_SECONDS`` seconds."""

    def __init__(self) -> None:
        self.buckets: deque[tuple[float, float]] = deque(maxlen=BUCKETS)

    def add(self, value: float, now: float) -> None:
        bucket = now - now % BUCKET_SECONDS
        if self.buckets and self.buckets[-1][0] == bucket:
            if value > self.buckets[-1][1]:
                self.buckets[-1] = (bucket, value)
        else:
            self.buckets.append((bucket, value))

    def max(self) -> float:
        horizon = time.monotonic() - BUCKET_SECONDS * BUCKETS
        return max((value for bucket, value in self.buckets if bucket >= horizon), default=0.0)


class StallProbe:
    """A timer that measures its own lateness (see the module docstring)."""

    def __init__(self, period: float, log_over: float = 0.0) -> None:
        self.period = period
        self.log_over = log_over  # seconds; 0: do not log stalls
        self.max_ever = self.own_max_ever = 0.0
        self.counts = dict.fromkeys(THRESHOLDS_MS, 0)
        self.ticks = 0
        self.recent, self.own_recent = Recent(), Recent()
        self._metrics: Metrics | None = None
        self._tasks: Tasks = set()
        self._stopped = False

    def register(self, metrics: Metrics) -> None:
        """Expose the figures at ``/metrics``."""
        metrics.gauge(
            "candlewire_loop_stall_max_seconds",
            self.recent.max,
            "the event loop's longest stall (lateness of a timer) in the last minute",
        )
        metrics.gauge(
            "candlewire_loop_stall_own_max_seconds",
            self.own_recent.max,
            "the longest stall of the last minute less the time the loop waited for a CPU",
        )
        metrics.gauge(
            "candlewire_loop_stall_max_ever_seconds",
            lambda: self.max_ever,
            "the event loop's longest stall since the start",
        )
        metrics.gauge(
            "candlewire_loop_stall_own_max_ever_seconds",
            lambda: self.own_max_ever,
            "the longest stall since the start less the time the loop waited for a CPU",
        )
        metrics.describe(
            "candlewire_loop_stalls_total", "event-loop stalls longer than over_ms milliseconds"
        )
        for over in THRESHOLDS_MS:
            metrics.inc("candlewire_loop_stalls_total", 0, over_ms=str(over))
        self._metrics = metrics

    def start(self, error: BaseException | None = None) -> None:
        """Start measuring; a probe that died (logged by its owner) is started again."""
        if self.period > 0 and not self._stopped:
            start_owned(self._tasks, self._run(), "loop-stall-probe", self.start)

    async def stop(self) -> None:
        self._stopped = True
        await cancel_owned(self._tasks)

    async def _run(self) -> None:
        clock, thread_cpu, process_cpu = time.monotonic, time.thread_time, time.process_time
        waited = RunQueueClock()  # opened here: it reads the schedstat of the loop's thread
        try:
            while True:
                due = clock() + self.period
                cpu, all_cpu, wait = thread_cpu(), process_cpu(), waited()
                await asyncio.sleep(self.period)
                late = clock() - due
                if late > NOISE:
                    self.record(late, thread_cpu() - cpu, process_cpu() - all_cpu, waited() - wait)
                self.ticks += 1
        finally:
            waited.close()

    def record(
        self, late: float, loop_cpu: float, process_cpu: float, run_queue: float = 0.0
    ) -> None:
        """One lateness of ``late`` seconds; over the same period, the CPU seconds used by
        the loop's thread and by the whole process, and the seconds the loop's thread
        waited for a CPU."""
        now = time.monotonic()
        own = max(0.0, late - run_queue)
        self.recent.add(late, now)
        self.own_recent.add(own, now)
        self.max_ever = max(self.max_ever, late)
        self.own_max_ever = max(self.own_max_ever, own)
        late_ms = late * 1000
        for over in THRESHOLDS_MS:
            if late_ms < over:
                break
            self.counts[over] += 1
            if self._metrics is not None:
                self._metrics.inc("candlewire_loop_stalls_total", over_ms=str(over))
        if self.log_over and late >= self.log_over:
            logger.warning(
                "event loop stalled %.1f ms: meanwhile the loop thread ran %.1f ms and waited "
                "%.1f ms for a CPU, the other threads ran %.1f ms (%s)",
                late_ms,
                loop_cpu * 1000,
                run_queue * 1000,
                max(0.0, process_cpu - loop_cpu) * 1000,
                verdict(late, loop_cpu, process_cpu, run_queue),
            )


def verdict(late: float, loop_cpu: float, process_cpu: float, run_queue: float) -> str:
    """What most likely held the loop for ``late`` seconds (see :meth:`StallProbe.record`)."""
    if loop_cpu >= 0.5 * late:
        return "a callback of the loop"
    if run_queue >= 0.5 * late:
        return "the machine: other processes had the CPU"
    if process_cpu - loop_cpu >= 0.5 * late:
        return "another thread held the GIL"
    return "a blocking call, or the process was stopped"


def enable_debug(loop: asyncio.AbstractEventLoop, slow_callback: float) -> None:
    """asyncio's debug mode: every callback that runs ``slow_callback`` seconds or longer is
    logged by asyncio with its name (costly: a diagnostic, ``LOOP_DEBUG``)."""
    loop.set_debug(True)
    loop.slow_callback_duration = slow_callback
