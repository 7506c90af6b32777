"""The symbol database writer: one provider's rows swapped in atomically (``populate.py``).

:func:`replace_provider_rows` checks one provider's rows and swaps them in atomically. The
calling thread only reads the provider's rows; a thread of the calling process
(:class:`_Preparer`) checks them and prepares them in batches (:class:`.batches.Batcher`: the
search words of a whole batch are found at once), while a child process runs the one SQLite
transaction (:class:`_Writer`, the parent's end of :func:`.session.serve`), so both processes
use a core and a provider waiting on its upstream does not hold up the checks. Requests reach
the writer as JSON (``orjson``: a batch's values are one flat list, cheaper to encode and
decode than pickled rows); a batch is inserted a hundred rows per statement. A provider with
fewer than ``ROWS_BEFORE_BEGIN`` rows is written by the same session in this process: the
writer process would cost more to start than its write.

Owns the writer process's parent end (its start, the requests and their replies, its close),
the preparer thread and the course of one replace (garbage collections, progress, abort,
summary). Not the row checks and batches (:mod:`.batches`) nor the SQL (:mod:`.session`).
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import queue
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import orjson

from backend.errors import StorageError
from backend.symbols.batches import BATCH_ROWS, ROW_VALUES, Batcher, Prepared, Shape
from backend.symbols.session import Session, serve

logger = logging.getLogger(__name__)

ROWS_BEFORE_BEGIN = 50_000
_BATCHES_IN_FLIGHT = 3
_CHUNK_ROWS = 1_000
_CHUNKS_AHEAD = 8
_SPAWN = multiprocessing.get_context("spawn")
_GC_YOUNG_THRESHOLD = 50_000  # net allocations between young collections while populating


class _Writer:
    """The parent's end of the writer, for one source.

    The first batches are held back until there are ``ROWS_BEFORE_BEGIN`` rows: a provider
    that has fewer takes the database's write lock only for the time of its final write, and
    that write runs in this process (:class:`.session.Session` here: starting the writer
    process costs about half a second of CPU, more than such a write). From that many rows
    on, the writer process takes over: requests go out through a sender thread (so that
    preparing the next batch never waits on the pipe), one reply per request.
    """

    def __init__(self, db_path: Path, source: str) -> None:
        self._path = db_path
        self._source = source
        self._here = Session(db_path)  # runs the requests until the writer process starts
        self._process: BaseProcess | None = None
        self._requests: Connection | None = None
        self._replies: Connection | None = None
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self._waiting: deque[str] = deque()
        self._held: list[tuple[list[Shape], Prepared]] | None = []
        self.first_seq = 0
        self.alone = False  # no other source's ids were stored when it opened
        self.stored = 0

    def open(self) -> int:
        """Apply the schema; return the first free seq (and learn whether it may be alone)."""
        self.first_seq, self.alone = self.call("open", self._source)
        return self.first_seq

    def insert(self, shapes: list[Shape], rows: Prepared) -> None:
        """Send one batch (or hold it back); wait while a few batches are in flight."""
        if self._held is not None:
            self._held.append((shapes, rows))
            if sum(len(held) for _, held in self._held) < ROWS_BEFORE_BEGIN * ROW_VALUES:
                return
            self._start_process()
            self._begin()
        elif rows or shapes:
            self._send("insert", shapes, rows)
        self._wait(_BATCHES_IN_FLIGHT)

    def commit(self, words: Counter[str] | None, seqs: range) -> None:
        if self._held is not None:
            self._begin()
        self.call("commit", self._source, words, seqs.start, seqs.stop - 1)

    def abort(self) -> None:
        """Roll back, once the replies still due have come (their errors are moot)."""
        if self._held is not None:
            return  # nothing was written
        try:
            while self._waiting:
                self._wait_quietly()
            self.call("rollback")
        except StorageError as exc:
            logger.warning("symbol database %s: rollback failed: %s", self._path, exc)

    def checkpoint(self) -> None:
        """Shrink the WAL file after a commit; a failure only costs disk space."""
        try:
            self.call("checkpoint")
        except StorageError as exc:
            logger.warning("%s; the WAL file keeps its size until the next checkpoint", exc)

    def close(self) -> None:
        """Stop the writer process (a transaction still open is rolled back)."""
        self._here.close()  # (in the thread that opened it; a transaction open is rolled back)
        if self._process is None or self._sender is None:
            return
        self._outbox.put(orjson.dumps(("close", ())))
        self._outbox.put(None)
        self._sender.join()
        self._process.join(timeout=60)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        for end in (self._requests, self._replies):
            if end is not None:
                end.close()

    def call(self, command: str, *args: Any) -> Any:
        """Run a request and return its reply (after those of earlier requests)."""
        value = self._send(command, *args)
        return value if self._process is None else self._wait(0)

    def _start_process(self) -> None:
        """Hand over to a writer process: the rows are many."""
        requests_in, self._requests = _SPAWN.Pipe(duplex=False)
        self._replies, replies_out = _SPAWN.Pipe(duplex=False)
        self._process = _SPAWN.Process(
            target=serve, args=(requests_in, replies_out, self._path), daemon=True
        )
        self._process.start()
        requests_in.close()
        replies_out.close()
        self._sender = threading.Thread(target=self._send_all, name="symbols-sender")
        self._sender.start()

    def _begin(self) -> None:
        held, self._held = self._held or [], None
        self._send("begin", self._source, self.first_seq)
        for shapes, rows in held:
            self._send("insert", shapes, rows)

    def _send(self, command: str, *args: Any) -> Any:
        """Run the request here (its reply), or send it to the writer process (None)."""
        try:
            request = orjson.dumps((command, args))
        except orjson.JSONEncodeError as exc:  # text that is not valid UTF-8 (a surrogate)
            raise StorageError(f"symbol database {self._path}: {command}: {exc}") from exc
        if self._process is None:
            # Decoded as the writer process would: the same values, the same checks.
            status, value = self._here.run(*orjson.loads(request))
            return self._answer(command, status, value)
        self._outbox.put(request)
        self._waiting.append(command)
        return None

    def _wait(self, in_flight: int) -> Any:
        value = None
        while len(self._waiting) > in_flight:
            value = self._reply()
        return value

    def _wait_quietly(self) -> None:
        try:
            self._reply()
        except StorageError as exc:
            logger.debug("ignored while aborting: %s", exc)

    def _reply(self) -> Any:
        if self._replies is None:
            raise StorageError(f"symbol database {self._path}: no writer process")
        try:
            status, value = self._replies.recv()
        except (EOFError, OSError) as exc:
            self._waiting.clear()
            raise StorageError(f"symbol database {self._path}: the writer stopped") from exc
        return self._answer(self._waiting.popleft(), status, value)

    def _answer(self, command: str, status: str, value: Any) -> Any:
        if status == "error":
            raise StorageError(f"symbol database {self._path}: {value}")
        if command == "insert":
            self.stored = value
        return value

    def _send_all(self) -> None:
        while (data := self._outbox.get()) is not None:
            try:
                if self._requests is not None:
                    self._requests.send_bytes(data)
            except OSError as exc:
                logger.debug("symbol writer is gone: %s", exc)


def replace_provider_rows(
    db_path: str | Path,
    source: str,
    rows: Iterable[Mapping[str, Any]],
    progress: Callable[[int], None] | None = None,
) -> int:
    """Replace every row of ``source`` by ``rows``, atomically; return the rows stored.

    ``rows`` is streamed in batches into one transaction: if it raises, the old rows stay
    and the exception propagates. Rows are read a few thousand ahead of their checks, so a
    row (and what it holds) must not change after it was yielded. Invalid rows are logged
    and skipped; a name given twice keeps its first row. ``progress(n)`` is called with the
    number of rows read so far. Meanwhile young garbage collections come every 50,000 net
    allocations (the process's thresholds are set back at the end).
    Raises :class:`StorageError` when SQLite fails.

    From ``ROWS_BEFORE_BEGIN`` rows on, the transaction runs in a child process (``spawn``),
    so a script that calls this must do so under ``if __name__ == "__main__":``.
    """
    writer = _Writer(Path(db_path).absolute(), source)
    try:
        with _fewer_collections():
            return _replace(writer, source, rows, progress)
    finally:
        writer.close()


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """Young garbage collections every ``_GC_YOUNG_THRESHOLD`` net allocations, not 700.

    Every provider row is a container that lives until its chunk is checked, so collections
    came every few hundred rows, each visiting the batch being gathered and the chunks
    waiting: about 1 us of CPU per row. Reference cycles are still collected, less often.
    """
    young, *older = gc.get_threshold()
    if young:  # 0: collections are off
        gc.set_threshold(max(young, _GC_YOUNG_THRESHOLD), *older)
    try:
        yield
    finally:
        gc.set_threshold(young, *older)


def _replace(
    writer: _Writer,
    source: str,
    rows: Iterable[Mapping[str, Any]],
    progress: Callable[[int], None] | None,
) -> int:
    first_seq = writer.open()
    batcher = Batcher(source, first_seq, count_words=not writer.alone)
    try:
        _stream(writer, batcher, rows, progress)
        writer.commit(batcher.words, range(batcher.first_seq, batcher.next_seq))
    except BaseException:
        writer.abort()
        raise
    writer.checkpoint()
    _log_summary(batcher, writer.stored)
    return writer.stored


def _stream(
    writer: _Writer,
    batcher: Batcher,
    rows: Iterable[Mapping[str, Any]],
    progress: Callable[[int], None] | None,
) -> None:
    """Read ``rows`` here, in chunks; a :class:`_Preparer` thread checks and sends them."""
    preparer = _Preparer(writer, batcher)
    read = reported = 0
    try:
        chunk: list[object] = []
        for raw in rows:
            chunk.append(raw)
            if len(chunk) == _CHUNK_ROWS:
                preparer.put(chunk)
                chunk = []
                read += _CHUNK_ROWS
                if progress is not None and read - reported >= BATCH_ROWS:
                    progress(reported := read)
        preparer.put(chunk)
        preparer.finish()
    finally:
        preparer.stop()
    if progress is not None:
        progress(read + len(chunk))


class _Preparer:
    """The thread that checks and prepares rows and sends their batches to the writer.

    The calling thread only reads the provider's rows, so a provider that waits on its
    upstream (a REST page) lets this thread work meanwhile. At most ``_CHUNKS_AHEAD`` chunks
    wait. After a failure here, the chunks still coming are dropped and the error is raised
    in the calling thread at its next :meth:`put` or at :meth:`finish`.
    """

    def __init__(self, writer: _Writer, batcher: Batcher) -> None:
        self._writer = writer
        self._batcher = batcher
        self._chunks: queue.Queue[list[object] | None] = queue.Queue(_CHUNKS_AHEAD)
        self._error: BaseException | None = None
        self._stopping = False
        self._ended = False
        self._all_taken = False  # the end of the chunks was read
        self._thread = threading.Thread(target=self._run, name="symbols-preparer", daemon=True)
        self._thread.start()

    def put(self, chunk: list[object]) -> None:
        """Queue one chunk of rows (waits while the thread is ``_CHUNKS_AHEAD`` behind)."""
        if self._error is not None:
            raise self._error
        self._chunks.put(chunk)

    def finish(self) -> None:
        """Wait until every row is prepared and sent; raise the thread's error if it failed."""
        self._end()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Drop the chunks not prepared yet and wait for the thread (after a failure)."""
        self._stopping = True
        self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._chunks.put(None)
        self._thread.join()

    def _run(self) -> None:
        try:
            self._prepare_all()
        except BaseException as exc:  # noqa: BLE001 - raised again in the calling thread
            self._error = exc
            while not self._all_taken and self._chunks.get() is not None:
                pass

    def _prepare_all(self) -> None:
        batcher, writer = self._batcher, self._writer
        while (chunk := self._chunks.get()) is not None:
            if self._stopping:
                continue
            batcher.add(chunk)
            if batcher.full():
                writer.insert(*batcher.take())
        self._all_taken = True
        if not self._stopping:
            writer.insert(*batcher.take())


def _log_summary(batcher: Batcher, stored: int) -> None:
    taken = batcher.seen - batcher.invalid - stored
    if batcher.invalid:
        logger.warning("%s: %d invalid rows skipped", batcher.source, batcher.invalid)
    if taken:
        logger.warning("%s: %d rows skipped: their id was already taken", batcher.source, taken)
    logger.info("%s: %d symbols stored", batcher.source, stored)
