"""The machine's own latency floor: how late a process that only sleeps wakes up, per core.

:class:`JitterProbe` runs one tiny process per core (pinned with ``sched_setaffinity``) that
sleeps 1 ms at a time and keeps the largest oversleep since it was last read, like
``cyclictest`` does in C. Nothing a server does can deliver a message sooner than its core
lets it run: when the probe on the server core wakes 12 ms late, a 12 ms stall of any
server in that window says more about the machine (a vCPU descheduled by its host, another
process of the machine) than about the server. The probe costs about 1% of a core.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from multiprocessing.sharedctypes import Synchronized
from types import TracebackType

SLEEP_SECONDS = 0.001
_SPAWN = multiprocessing.get_context("spawn")


def _probe(core: int, worst: Synchronized[float], stop: Synchronized[int]) -> None:
    os.sched_setaffinity(0, {core})
    clock, sleep = time.perf_counter, time.sleep
    while not stop.value:
        before = clock()
        sleep(SLEEP_SECONDS)
        late = clock() - before - SLEEP_SECONDS
        worst.value = max(worst.value, late)  # one writer; the reader only resets it


class JitterProbe:
    """One sleeping process per core in ``cores``; :meth:`take` reads and resets the worst
    oversleep of each (ms)."""

    def __init__(self, cores: list[int]) -> None:
        self.cores = cores
        self._stop: Synchronized[int] = _SPAWN.Value("i", 0, lock=False)
        self._worst: list[Synchronized[float]] = [_SPAWN.Value("d", 0.0, lock=False) for _ in cores]
        self._procs = [
            _SPAWN.Process(target=_probe, args=(core, worst, self._stop), daemon=True)
            for core, worst in zip(cores, self._worst, strict=True)
        ]

    def pids(self) -> dict[int, int]:
        """Core -> the pid of its probe (once started)."""
        return {
            core: proc.pid
            for core, proc in zip(self.cores, self._procs, strict=True)
            if proc.pid is not None
        }

    def __enter__(self) -> JitterProbe:
        for proc in self._procs:
            proc.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.value = 1
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def reset(self) -> None:
        for worst in self._worst:
            worst.value = 0.0

    def take(self) -> list[float]:
        """The worst oversleep of each core since the last reset (ms), then reset."""
        out = [round(worst.value * 1000, 2) for worst in self._worst]
        self.reset()
        return out
