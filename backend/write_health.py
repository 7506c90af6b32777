"""Whether a writer to ``DB`` can write, said once: the bar store and the alerts' journal.

While its writes fail (a full disk, a file or folder made read-only, another process
holding the write lock) a writer keeps what it could not write and tries again; this logs
the first failure of a run with what to do, then at most one line per ``REPORT_SECONDS``,
and one when writing resumes (not one per attempt), and gives the writer's part of
``/health`` (``state`` ``ok`` or ``failing``, the error, since when, attempts).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

REPORT_SECONDS = 300.0
# A write lock held by another process (``populate.py`` writing its rows) is a wait, not a
# fault: such a failure is a warning, and ``/health`` says failing only once it has lasted this
LOCK_GRACE_SECONDS = 30.0
ADVICE = (
    "free disk space, make the file and its folder writable, or stop the process holding"
    " its write lock"
)


class WriteHealth:
    """The state of one writer's writes, and its log lines."""

    def __init__(self, what: str, kept: str, log: logging.Logger, path: object = "") -> None:
        self.what = what  # "bar store": the start of its log lines
        self.path = path  # the file (DB)
        self.kept = kept  # what happens meanwhile: "bars stay in memory (and are answered)"
        self.log = log
        self.failures = 0  # failed writes since the start
        self.error: str | None = None  # the last error while writes fail, else None
        self.since: float | None = None  # wall clock of the first failure of this run
        self._next_report = 0.0  # monotonic: when a "still failing" line may be logged

    def failed(self, error: BaseException, queued: Callable[[], str], advice: str = "") -> None:
        """Count a failed write and log it (the first of a run, or once per period);
        ``queued`` says what waits (called only for a line), ``advice`` replaces
        :data:`ADVICE` in the first line."""
        self.failures += 1
        now = time.monotonic()
        first = self.error is None
        self.error = str(error)
        level = logging.WARNING if _locked(self.error) else logging.ERROR
        if first:
            self.since = time.time()
            self._next_report = now + REPORT_SECONDS
            self.log.log(
                level,
                "%s: cannot write DB %s: %s; %s (%s)",
                self.what,
                self.path,
                error,
                self.kept,
                advice or ADVICE,
            )
        elif now >= self._next_report:
            self._next_report = now + REPORT_SECONDS
            self.log.log(
                level,
                "%s: still cannot write DB %s after %.0f s (%d attempts, %s): %s",
                self.what,
                self.path,
                time.time() - (self.since or time.time()),
                self.failures,
                queued(),
                error,
            )

    def succeeded(self) -> None:
        """A write went through: say so once if writes had failed."""
        if self.error is None:
            return
        self.log.warning(
            "%s: writing DB %s again after %.0f s; what waited is stored",
            self.what,
            self.path,
            time.time() - (self.since or time.time()),
        )
        self.error = None
        self.since = None

    def health(self) -> dict[str, object]:
        """The writer's part of ``/health``."""
        if self.error is None:
            return {"state": "ok"}
        lasted = time.time() - (self.since or time.time())
        if _locked(self.error) and lasted < LOCK_GRACE_SECONDS:
            return {"state": "ok", "waiting_for_lock": self.error}
        return {
            "state": "failing",
            "error": self.error,
            "failing_since": self.since,
            "failed_writes": self.failures,
        }


def _locked(error: str) -> bool:
    """Whether ``error`` is SQLite's wait for another connection's write lock."""
    return "database is locked" in error or "database table is locked" in error
