"""The symbol database writer: one provider's rows swapped in atomically (``populate.py``).

:func:`replace_provider_rows` checks one provider's rows and swaps them in atomically. The
calling thread only reads the provider's rows; a thread of the calling process
(:class:`_Preparer`) checks them and prepares them in batches (:class:`_Batcher`: the search
words of a whole batch are found at once), while a child process runs the one SQLite
transaction (:class:`_Writer`), so both processes use a core and a provider waiting on its
upstream does not hold up the checks. Requests reach the writer as JSON (``orjson``: a
batch's values are one flat list, cheaper to encode and decode than pickled rows); a batch is
inserted a hundred rows per statement.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import queue
import signal
import sqlite3
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import chain
from multiprocessing.connection import Connection
from pathlib import Path
from string import ascii_lowercase, digits
from typing import Any, TypeVar, cast

import orjson

from backend.errors import StorageError
from backend.symbols.rows import (
    ROW_FIELDS,
    InvalidRow,
    check_shared,
    extra_json,
    id_range,
    name_and_label,
    search_words,
    shape_tag,
    shared_fields,
)

logger = logging.getLogger(__name__)

SCHEMA_PATH = Path(__file__).resolve().parent / "schema.sql"
BATCH_ROWS = 10_000
FTS_ROWS = 100_000  # rows added to the full-text index per statement
ROWS_BEFORE_BEGIN = 50_000
_SEQ_BITS = 40
_BATCHES_IN_FLIGHT = 3
_CHUNK_ROWS = 1_000
_MAPPINGS = (dict, Mapping)
_IN_TRANSACTION = frozenset(("insert", "commit"))  # requests that only run after "begin"
_CHUNKS_AHEAD = 8
_LOGGED_INVALID_ROWS = 20
_SPAWN = multiprocessing.get_context("spawn")
_GC_YOUNG_THRESHOLD = 50_000  # net allocations between young collections while populating
# ASCII text with only its letters (or only its digits) and line ends; spaces elsewhere.
_LETTERS_ONLY = str.maketrans({n: " " for n in range(128) if chr(n) not in ascii_lowercase + "\n"})
_DIGITS_ONLY = str.maketrans({n: " " for n in range(128) if chr(n) not in digits + "\n"})
_REQUIRED_FIELDS = len(ROW_FIELDS) - 1  # all but source_label
_NOTHING = object()
# A prepared row: key, name, name_lower, name_label, shape, words, extra; the writer adds
# id, source and nlen (the key's high bits). A batch holds its rows' values one row after
# another, in one flat list (cheaper to send and to bind than a tuple per row).
_ROW_VALUES = 7
_ROWS_PER_INSERT = 100
Prepared = list[int | str | None]
Shape = tuple[int, str, str, str, str]
# A batch being gathered, one list per field: key, name, name_lower, name_label, shape,
# extra, and the text of the search words ("name name_label").
_Columns = tuple[list[int], list[str], list[str], list[str], list[int], list[str | None], list[str]]

T = TypeVar("T")

# --------------------------------------------------------------------------- writer: batches


class _Batcher:
    """Turns provider rows into prepared rows and shapes, in batches; may count the words.

    Rows are checked as they come (a chunk at a time); their search words are found for the
    whole batch at once (:func:`_batch_words`). A shape is checked once: a row whose shared
    fields serialize like a known shape's only has its name and name_label checked. A new
    shape takes the next seq, so shape ids and row keys never collide. ``words`` counts the
    rows that contain each word, unless ``count_words`` is false (the writer then counts
    them from the full-text index).
    """

    def __init__(self, source: str, first_seq: int, count_words: bool = True) -> None:
        self.source = source
        self.first_seq = first_seq
        self.next_seq = first_seq
        self.seen = 0
        self.invalid = 0
        self.words: Counter[str] | None = Counter() if count_words else None
        self._shapes: dict[bytes, int] = {}
        self._bad_shapes: dict[bytes, str] = {}
        self._new_shapes: list[Shape] = []
        self._last_parts: tuple[object, ...] = (_NOTHING,) * 6
        self._last_shape = 0
        self._columns: _Columns = ([], [], [], [], [], [], [])

    def add(self, rows: list[object]) -> None:
        """Check provider rows and keep them for the batch; log and skip the invalid ones.

        One loop over many rows, with the lookups it repeats bound once. A row whose shared
        fields are the very objects of the previous row's (a provider's constant lists) has
        its shape without serializing them: rows do not change once yielded, and the last
        parts are held, so their ids cannot be reused meanwhile.
        """
        self.seen += len(rows)
        last, shape = self._last_parts, self._last_shape
        c = self._columns
        keys, names, lowers, labels = c[0].append, c[1].append, c[2].append, c[3].append
        row_shapes, extras, texts = c[4].append, c[5].append, c[6].append
        for raw in rows:
            try:
                if not isinstance(raw, _MAPPINGS):
                    raise InvalidRow(f"a row must be a mapping, not {type(raw).__name__}")
                get = raw.get
                parts = (get("source"), get("type"), get("categories"), get("intervals"),
                         get("outputs"), get("source_label"))  # fmt: skip
                if not (parts[2] is last[2] and parts[3] is last[3] and parts[4] is last[4]
                        and parts[0] is last[0] and parts[1] is last[1]
                        and parts[5] is last[5]):  # fmt: skip
                    shape = self._shape(parts, raw)
                    last = parts
                name, label = name_and_label(raw)
                # A valid shape means its required fields are there: more keys are extra.
                extra = (
                    None
                    if len(raw) <= _REQUIRED_FIELDS + (parts[5] is not None)
                    else extra_json(raw)
                )
            except (InvalidRow, TypeError) as exc:
                self._skip(raw, exc)
                continue
            seq = self.next_seq
            self.next_seq = seq + 1
            lower = name.lower()
            keys((len(lower) << _SEQ_BITS) | seq)
            names(name)
            lowers(lower)
            labels(label)
            row_shapes(shape)
            extras(extra)
            texts(f"{name} {label}")

    def _shape(self, parts: tuple[object, ...], raw: Mapping[str, Any]) -> int:
        """The shape of a row's shared fields (checked if new); they become the last parts."""
        key = orjson.dumps(parts)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._new_shape(shared_fields(raw), key)
        self._last_parts, self._last_shape = parts, shape
        return shape

    def _new_shape(self, shared: dict[str, Any], key: bytes) -> int:
        if key in self._bad_shapes:
            raise InvalidRow(self._bad_shapes[key])
        try:
            checked = check_shared(shared, self.source)
        except InvalidRow as exc:
            self._bad_shapes[key] = str(exc)
            raise
        shape = self._shapes[key] = self.next_seq  # a seq of its own: ids stay unique
        self.next_seq += 1
        parts = [self.source, checked.get("source_label", ""), *checked["categories"]]
        words = " ".join(search_words(" ".join(parts)))
        details = orjson.dumps(checked).decode()
        self._new_shapes.append((shape, self.source, details, shape_tag(self.source, words), words))
        return shape

    def _skip(self, raw: object, exc: Exception) -> None:
        self.invalid += 1
        if self.invalid <= _LOGGED_INVALID_ROWS:
            name = raw.get("name") if isinstance(raw, Mapping) else None
            logger.warning("%s: skipped invalid row %r: %s", self.source, name, exc)
        elif self.invalid == _LOGGED_INVALID_ROWS + 1:
            logger.warning("%s: more invalid rows; only their count is logged", self.source)

    def full(self) -> bool:
        """Whether the current batch should be written now."""
        return len(self._columns[0]) >= BATCH_ROWS

    def take(self) -> tuple[list[Shape], Prepared]:
        """The new shapes and the rows of the batch, in ascending keys (by length, then seq)."""
        shapes, self._new_shapes = self._new_shapes, []
        keys, names, lowers, labels, row_shapes, extras, texts = self._columns
        words = _batch_words(texts, self.words)
        rows = list(zip(keys, names, lowers, labels, row_shapes, words, extras, strict=True))
        rows.sort()  # the keys are unique: only they are compared
        self._columns = ([], [], [], [], [], [], [])
        return shapes, list(chain.from_iterable(rows))


def _batch_words(texts: list[str], counts: Counter[str] | None) -> list[str]:
    """The search words of each text, space-separated; ``counts`` counts the texts with each.

    An ASCII batch is read whole: one copy keeps only its letters, another only its digits
    (each word is a run in one of them), and each text's words are its letter words then
    its digit words (the order does not matter to the full-text index). Others are read one
    text at a time.
    """
    if not texts:
        return []
    joined = "\n".join(texts).lower()
    if not joined.isascii() or joined.count("\n") != len(texts) - 1:
        found = [" ".join(search_words(text)) for text in texts]
    else:
        letters, digits = joined.translate(_LETTERS_ONLY), joined.translate(_DIGITS_ONLY)
        found = [
            " ".join(f"{a} {d}".split())
            for a, d in zip(letters.split("\n"), digits.split("\n"), strict=True)
        ]
    if counts is not None:
        counts.update(chain.from_iterable(map(set, map(str.split, found))))
    return found


# --------------------------------------------------------------------------- writer: SQLite


def _connect_writer(db_path: Path) -> sqlite3.Connection:
    """The populate connection: WAL mode, the schema applied, a large page cache."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db_path, isolation_level=None, timeout=60.0)
    for pragma in (
        "page_size = 8192",  # only takes effect on a new, empty database file
        "journal_mode = WAL",
        "synchronous = NORMAL",
        "cache_size = -131072",
        "secure_delete = OFF",
        "journal_size_limit = 67108864",
    ):
        conn.execute(f"PRAGMA {pragma}")
    conn.executescript(SCHEMA_PATH.read_text(encoding="utf-8"))
    return conn


def _insert_sql(source: str, rows: int) -> str:
    """The INSERT of ``rows`` prepared rows at once: id, source and nlen are derived.

    One statement for many rows: each row binds its values to numbered parameters (id and
    name share one, nlen is the key's high bits), so a batch costs one call per
    ``_ROWS_PER_INSERT`` rows instead of one per row.
    """
    literal = "'" + source.replace("'", "''") + "'"
    values = []
    for row in range(rows):
        key, name, lower, label, shape, words, extra = (
            f"?{row * _ROW_VALUES + n}" for n in range(1, _ROW_VALUES + 1)
        )
        values.append(
            f"({key}, {literal} || '-' || {name}, {literal}, {name}, {lower},"
            f" {key} >> {_SEQ_BITS}, {label}, {shape}, {words}, {extra})"
        )
    return (
        "INSERT OR IGNORE INTO symbols"
        " (key, id, source, name, name_lower, nlen, name_label, shape, words, extra)"
        " VALUES " + ", ".join(values)
    )


def _first_seq(conn: sqlite3.Connection) -> int:
    """The first seq that no stored row has."""
    sql = "SELECT coalesce(max(seq_last), 0) + 1 FROM symbol_sources"
    return int(conn.execute(sql).fetchone()[0])


def _ids_outside(conn: sqlite3.Connection, source: str) -> bool:
    """Whether a stored symbol has an id outside ``source``'s range (cheap: two seeks)."""
    outside = "SELECT 1 FROM symbols WHERE id < ? OR id >= ? LIMIT 1"
    return conn.execute(outside, id_range(source)).fetchone() is not None


def _only_source(conn: sqlite3.Connection, source: str) -> bool:
    """Whether every stored symbol is ``source``'s (reads all of its ids if so)."""
    if _ids_outside(conn, source):
        return False
    inside = "SELECT 1 FROM symbols WHERE id >= ? AND id < ? AND source != ? LIMIT 1"
    return conn.execute(inside, (*id_range(source), source)).fetchone() is None


def _stored_words(conn: sqlite3.Connection, source: str) -> Counter[str]:
    """How many of ``source``'s stored rows contain each word."""
    sql = "SELECT words FROM symbols WHERE id >= ? AND id < ? AND source = ?"
    rows = conn.execute(sql, (*id_range(source), source))
    return Counter(chain.from_iterable(set(words.split()) for (words,) in rows))


def _delete_all_symbols(conn: sqlite3.Connection) -> None:
    """Empty ``symbols`` and its full-text index at once, inside the open transaction.

    The delete trigger would remove each row from the full-text index one at a time: it is
    dropped, the index emptied by FTS5's ``delete-all``, the table truncated, and the trigger
    created again. A rollback restores all of it.
    """
    sql = "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'symbols_fts_delete'"
    (trigger,) = conn.execute(sql).fetchone()
    conn.execute("DROP TRIGGER symbols_fts_delete")
    conn.execute("INSERT INTO symbols_fts (symbols_fts) VALUES ('delete-all')")
    conn.execute("DELETE FROM symbols")
    conn.execute(trigger)


class _Session:
    """The populate transaction, inside the writer process: one method per request."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.stored = 0
        self._conn: sqlite3.Connection | None = None
        self._source = ""
        self._insert = ""
        self._unindexed: list[int] = []
        self._alone = False  # the source's rows are the only rows (since "begin")

    def run(self, command: str, args: Sequence[Any]) -> tuple[str, Any]:
        """Run one request; reply ``("ok", value)`` or ``("error", message)``."""
        try:
            if self._conn is None:
                self._conn = _connect_writer(self.db_path)
            if command in _IN_TRANSACTION and not self._conn.in_transaction:
                # The BEGIN failed, or SQLite rolled back after an error: the requests sent
                # meanwhile must not run on their own (each would commit at once).
                return "error", f"{command}: the populate transaction is not open"
            return "ok", getattr(self, f"do_{command}")(self._conn, *args)
        except (sqlite3.Error, OSError) as exc:
            return "error", str(exc)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def do_open(self, conn: sqlite3.Connection, source: str) -> tuple[int, bool]:
        """The first free seq, and whether the source may be alone (no stored row has an id
        outside its range; read before the transaction starts)."""
        return _first_seq(conn), not _ids_outside(conn, source)

    def do_begin(self, conn: sqlite3.Connection, source: str, first_seq: int) -> None:
        """Start the transaction and delete the source's rows.

        Fails if another populate stored rows since ``first_seq`` was read: their keys
        could collide with the rows prepared meanwhile.
        """
        self._source = source
        self._insert = _insert_sql(source, _ROWS_PER_INSERT)
        self._unindexed = []
        conn.execute("BEGIN IMMEDIATE")
        if _first_seq(conn) > first_seq:
            conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("another populate wrote symbols meanwhile; run again")
        self._alone = _only_source(conn, source)
        if self._alone:
            _delete_all_symbols(conn)
        else:
            # Ascending keys: the full-text index flushes whenever its rowids go backwards.
            conn.execute(
                "DELETE FROM symbols WHERE key IN (SELECT key FROM symbols"
                " WHERE id >= ? AND id < ? AND source = ? ORDER BY key)",
                (*id_range(source), source),
            )
        for table in ("symbol_shapes", "symbol_tags", "symbol_words"):
            conn.execute(f"DELETE FROM {table} WHERE source = ?", (source,))

    def do_insert(self, conn: sqlite3.Connection, shapes: list[Shape], rows: Prepared) -> int:
        """Insert one batch (a taken id keeps its first row); return the rows stored so far."""
        conn.executemany("INSERT INTO symbol_shapes VALUES (?, ?, ?, ?)", [s[:4] for s in shapes])
        tags = [(tag, source, words) for _, source, _, tag, words in shapes]
        conn.executemany("INSERT OR IGNORE INTO symbol_tags VALUES (?, ?, ?)", tags)
        step = _ROW_VALUES * _ROWS_PER_INSERT
        whole = len(rows) - len(rows) % step
        if whole:
            parts = [rows[start : start + step] for start in range(0, whole, step)]
            self.stored += max(conn.executemany(self._insert, parts).rowcount, 0)
        if whole < len(rows):
            rest = rows[whole:]
            sql = _insert_sql(self._source, len(rest) // _ROW_VALUES)
            self.stored += max(conn.execute(sql, rest).rowcount, 0)
        self._unindexed += cast(list[int], rows[::_ROW_VALUES])  # the keys
        if len(self._unindexed) >= FTS_ROWS:
            self._index_words(conn)
        return self.stored

    def _index_words(self, conn: sqlite3.Connection) -> None:
        """Add the rows inserted since the last call to the full-text index.

        One statement, in ascending keys, and only the rows that were stored. Many batches
        at a time: their keys interleave, and the index writes a segment whenever its
        rowids go backwards, so fewer statements leave fewer segments to merge.
        """
        keys, self._unindexed = self._unindexed, []
        conn.execute(
            "INSERT INTO symbols_fts (rowid, words, tag)"
            " SELECT s.key, s.words, h.tag"
            " FROM symbols AS s CROSS JOIN symbol_shapes AS h ON h.shape = s.shape"
            " WHERE s.key IN (SELECT value FROM json_each(?)) ORDER BY s.key",
            (orjson.dumps(keys).decode(),),
        )

    def do_commit(
        self,
        conn: sqlite3.Connection,
        source: str,
        words: dict[str, int] | None,
        seq_first: int,
        seq_last: int,
    ) -> None:
        """Index the last rows, record the source's words and row count, and commit.

        ``words`` counts the rows that contain each word, or is ``None`` when the source
        seemed alone: the full-text index then gives the counts if it is, and the stored
        rows if another source's ids share its range.
        """
        self._index_words(conn)
        if words is None and self._alone:
            self._record_indexed_words(conn, source)
        else:
            if words is None:
                words = _stored_words(conn, source)
            conn.executemany(
                "INSERT INTO symbol_words (word, source, rows) VALUES (?, ?, ?)",
                ((word, source, rows) for word, rows in words.items()),
            )
        conn.execute(
            "INSERT OR REPLACE INTO symbol_sources VALUES (?, ?, ?, ?, ?)",
            (source, self.stored, seq_first, seq_last, datetime.now(UTC).isoformat()),
        )
        conn.execute("COMMIT")

    def _record_indexed_words(self, conn: sqlite3.Connection, source: str) -> None:
        """Record the rows that contain each word from the full-text index's vocabulary.

        Only right while the source's rows are the only rows: the index is then theirs, and
        FTS5 counts the rows that hold each of its terms. The tags are terms too (a word
        never equals one): they are left out.
        """
        conn.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS temp.symbols_fts_terms"
            " USING fts5vocab(main, symbols_fts, row)"
        )
        conn.execute(
            "INSERT INTO symbol_words (word, source, rows)"
            " SELECT term, ?, doc FROM temp.symbols_fts_terms"
            " WHERE term NOT IN (SELECT tag FROM symbol_tags)",
            (source,),
        )

    def do_checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy the WAL into the database and truncate it (readers may hold it up)."""
        conn.execute("PRAGMA busy_timeout = 2000")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def do_rollback(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _serve(requests: Connection, replies: Connection, db_path: Path) -> None:
    """The writer process: run each request and reply, until "close" or the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    session = _Session(db_path)
    try:
        while True:
            try:
                command, args = orjson.loads(requests.recv_bytes())
            except EOFError:
                return
            if command == "close":
                return
            replies.send(session.run(command, args))
    finally:
        session.close()


class _Writer:
    """The parent's end of the writer process, for one source.

    Requests go out through a sender thread (so that preparing the next batch never waits
    on the pipe), one reply per request. The first batches are held back until there are
    ``ROWS_BEFORE_BEGIN`` rows: a provider that has fewer takes the database's write lock
    only for the time of its final write.
    """

    def __init__(self, db_path: Path, source: str) -> None:
        self._path = db_path
        self._source = source
        requests_in, self._requests = _SPAWN.Pipe(duplex=False)
        self._replies, replies_out = _SPAWN.Pipe(duplex=False)
        self._process = _SPAWN.Process(
            target=_serve, args=(requests_in, replies_out, db_path), daemon=True
        )
        self._process.start()
        requests_in.close()
        replies_out.close()
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_all, name="symbols-sender")
        self._sender.start()
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
            if sum(len(held) for _, held in self._held) < ROWS_BEFORE_BEGIN * _ROW_VALUES:
                return
            self._begin()
        elif rows or shapes:
            self._request("insert", shapes, rows)
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
        self._outbox.put(orjson.dumps(("close", ())))
        self._outbox.put(None)
        self._sender.join()
        self._process.join(timeout=60)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._requests.close()
        self._replies.close()

    def call(self, command: str, *args: Any) -> Any:
        """Send a request and wait for its reply (and for those of earlier requests)."""
        self._request(command, *args)
        return self._wait(0)

    def _begin(self) -> None:
        held, self._held = self._held or [], None
        self._request("begin", self._source, self.first_seq)
        for shapes, rows in held:
            self._request("insert", shapes, rows)

    def _request(self, command: str, *args: Any) -> None:
        try:
            request = orjson.dumps((command, args))
        except orjson.JSONEncodeError as exc:  # text that is not valid UTF-8 (a surrogate)
            raise StorageError(f"symbol database {self._path}: {command}: {exc}") from exc
        self._outbox.put(request)
        self._waiting.append(command)

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
        try:
            status, value = self._replies.recv()
        except (EOFError, OSError) as exc:
            self._waiting.clear()
            raise StorageError(f"symbol database {self._path}: the writer stopped") from exc
        command = self._waiting.popleft()
        if status == "error":
            raise StorageError(f"symbol database {self._path}: {value}")
        if command == "insert":
            self.stored = value
        return value

    def _send_all(self) -> None:
        while (data := self._outbox.get()) is not None:
            try:
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

    The transaction runs in a child process (``spawn``), so a script that calls this must
    do so under ``if __name__ == "__main__":``.
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
    batcher = _Batcher(source, first_seq, count_words=not writer.alone)
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
    batcher: _Batcher,
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

    def __init__(self, writer: _Writer, batcher: _Batcher) -> None:
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


def _log_summary(batcher: _Batcher, stored: int) -> None:
    taken = batcher.seen - batcher.invalid - stored
    if batcher.invalid:
        logger.warning("%s: %d invalid rows skipped", batcher.source, batcher.invalid)
    if taken:
        logger.warning("%s: %d rows skipped: their id was already taken", batcher.source, taken)
    logger.info("%s: %d symbols stored", batcher.source, stored)
