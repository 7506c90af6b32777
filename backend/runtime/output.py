"""A provider process's own output (``print``, writes to ``sys.stderr``) as log lines.

A provider's author may ``print``; so do vendor libraries. Written raw to the server's
stdout, those lines had no ``[provider:key]`` prefix, no masking of secrets, no bound (a
print in a loop flooded the terminal or filled the disk, and a pipe nobody read would block
the provider). :func:`capture` replaces ``sys.stdout`` and ``sys.stderr`` of the process
with :class:`LogStream`s: each complete line becomes an INFO record of the ``stdout`` or
``stderr`` logger, which the process's log handler prefixes, masks and escapes
(``backend.logs``). INFO, also for stderr: a traceback printed there is many lines from one
place, which the handler would hold back as repeats of a warning. Lines longer than
:data:`MAX_LINE` are cut (saying how much), and at most :data:`LINES_PER_SECOND` lines a
second pass per stream; the next line that passes says how many were dropped.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
import time
from typing import TextIO

MAX_LINE = 2000  # characters of one line of output that are logged
LINES_PER_SECOND = 50  # per stream; the rest of a second's lines are counted and dropped
MAX_PENDING = 64 * 1024  # characters of a line without its end kept per thread


class LogStream(io.TextIOBase):
    """A text stream whose lines go to ``logger`` at ``level``; thread-safe (each thread's
    unfinished line is its own, so two threads printing at once do not mix lines)."""

    def __init__(self, logger: logging.Logger, level: int, original: TextIO) -> None:
        super().__init__()
        self._logger = logger
        self._level = level
        self._original = original
        self._local = threading.local()
        self._lock = threading.Lock()
        self._second = 0
        self._passed = 0
        self._dropped = 0

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        """The original stream's descriptor (``faulthandler`` and subprocesses write there)."""
        return self._original.fileno()

    def write(self, text: str) -> int:
        pending: str = getattr(self._local, "pending", "") + str(text)
        *lines, rest = pending.split("\n")
        for line in lines:
            self._emit(line)
        if len(rest) > MAX_PENDING:  # a line with no end in sight: log what came so far
            self._emit(rest)
            rest = ""
        self._local.pending = rest
        return len(text)

    def flush(self) -> None:
        """A line stays pending until its end comes (``print(..., flush=True)`` flushes
        what it wrote, its line end included)."""

    def _emit(self, line: str) -> None:
        line = line.rstrip("\r")
        if not line:
            return
        if len(line) > MAX_LINE:
            line = f"{line[:MAX_LINE]}... ({len(line) - MAX_LINE} characters more)"
        with self._lock:
            second = int(time.monotonic())
            if second != self._second:
                dropped, self._dropped = self._dropped, 0
                self._second, self._passed = second, 0
                if dropped:
                    line = f"{line} ({dropped} lines of output dropped before this one)"
            if self._passed >= LINES_PER_SECOND:
                self._dropped += 1
                return
            self._passed += 1
        self._logger.log(self._level, "%s", line)


def capture() -> None:
    """Route this process's ``sys.stdout`` and ``sys.stderr`` through the ``stdout`` and
    ``stderr`` loggers (after ``backend.logs.configure``, whose handler keeps the real
    stderr)."""
    stdout, stderr = logging.getLogger("stdout"), logging.getLogger("stderr")
    sys.stdout = LogStream(stdout, logging.INFO, sys.__stdout__ or sys.stdout)
    sys.stderr = LogStream(stderr, logging.INFO, sys.__stderr__ or sys.stderr)
