"""The symbol database: every provider's dataset rows in SQLite, and the symbol search.

Owns the symbol tables of ``db/schema.sql`` (``symbols``, ``symbol_shapes``, ``symbol_tags``,
``symbols_fts``, ``symbol_words``, ``symbol_sources``) and everything that reads or writes
them:

* the writer, :func:`replace_provider_rows` (synchronous, used by ``populate.py``): checks
  one provider's rows and swaps them in atomically. Rows are prepared in batches in the
  calling process while a child process runs the one SQLite transaction, so both use a core.
* the reader, :class:`SymbolIndex` (asyncio, used by the hub): ``search``, ``details`` and
  ``count`` run on a small pool of threads, one SQLite connection each, so the event loop
  never waits on SQLite.

Search ranks an exact symbol first (ignoring case), then symbols that start with the query
(shortest first), then full-text matches (shortest symbol first): every term must match the
symbol or the words of ``name_label``, ``categories``, ``source`` or ``source_label``, its
last word as a prefix. Search words are lower-cased runs of letters or of digits without
accents, so ``O:SPY251219C00450000`` is also found by ``spy 251219`` and ``BRK.B`` by
``brk b``. User text reaches the FTS5 query syntax only as such words, quoted.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import multiprocessing
import pickle
import queue
import re
import signal
import sqlite3
import threading
import time
import unicodedata
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import orjson

from backend.errors import StorageError
from backend.model import intervals

logger = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_PATH = Path(__file__).resolve().parent / "schema.sql"
ROW_TYPES = ("candlestick", "line")
MAX_NAME_LENGTH = 256
MAX_SEARCH_LIMIT = 1000
MAX_QUERY_LENGTH = 200
BATCH_ROWS = 10_000
ROWS_BEFORE_BEGIN = 50_000
SEARCH_BUDGET_SECONDS = 0.25

_TABLES = (
    "symbols",
    "symbol_shapes",
    "symbol_tags",
    "symbols_fts",
    "symbol_words",
    "symbol_sources",
)
_SEQ_BITS = 40
_BATCHES_IN_FLIGHT = 3
_MAX_QUERY_WORDS = 12
_PREFIX_MIN_LENGTH = 2
_PREFIX_WORDS = 24
_PREFIX_SCAN = 2000
_LOGGED_INVALID_ROWS = 20
_POPULATE_HINT = "run `python populate.py` to fill it"
_SPAWN = multiprocessing.get_context("spawn")

_ASCII_WORD = re.compile(r"[a-z]+|[0-9]+")
_WORD = re.compile(r"[^\W\d_]+|\d+")
_BAD_NAME_CHARACTER = re.compile(r"['\x00-\x1f]")

# The fields of a dataset row that many rows repeat, stored once per shape (details order).
_SHARED_FIELDS = ("source", "type", "categories", "intervals", "outputs", "source_label")
_ROW_FIELDS = frozenset((*_SHARED_FIELDS, "name", "name_label"))

# A prepared row: (key, id, source, name, name_lower, nlen, name_label, shape, words, extra).
Prepared = tuple[int, str, str, str, str, int, str, int, str, str | None]
# A prepared shape: (shape, source, details JSON, tag, words).
Shape = tuple[int, str, str, str, str]
# A found row: (key, id, name, name_label, extra JSON, shape details JSON).
Found = tuple[int, str, str, str, str | None, str]


# --------------------------------------------------------------------------- search words


def search_words(text: str) -> list[str]:
    """The search words of ``text``: lower-cased runs of letters or of digits, no accents."""
    if text.isascii():
        return _ASCII_WORD.findall(text.lower())
    decomposed = unicodedata.normalize("NFKD", text)
    return _WORD.findall("".join(c for c in decomposed if not unicodedata.combining(c)).lower())


def _tag(source: str, words: str) -> str:
    """The full-text token standing for a source and the words of a shape."""
    digest = hashlib.blake2b(f"{source}\0{words}".encode(), digest_size=8).hexdigest()
    return "t" + digest


def _prefix_end(prefix: str) -> str:
    """An upper bound of the strings that start with ``prefix`` (for a range scan)."""
    return prefix + "\U0010ffff"


def _id_range(source: str) -> tuple[str, str]:
    """Bounds of the ids ``source-...`` (other sources may fall inside: filter on source)."""
    return source + "-", source + "."


# --------------------------------------------------------------------------- row checks


class InvalidRow(ValueError):
    """A dataset row that cannot be stored; the message says why."""


def normalize_row(row: object, source: str) -> dict[str, Any]:
    """The checked copy of one dataset row (DESIGN 5.4); raises :class:`InvalidRow`.

    Extra keys (for example a CSV row's ``path``) are kept; a ``None`` ``source_label`` is
    dropped.
    """
    if not isinstance(row, Mapping):
        raise InvalidRow(f"a row must be a mapping, not {type(row).__name__}")
    shared = _check_shared(_shared_fields(row), source)
    _check_name(row.get("name"))
    _check_label(row.get("name_label"))
    extra = {key: value for key, value in row.items() if key not in _ROW_FIELDS}
    return {"name": row["name"], "name_label": row["name_label"], **shared, **extra}


def _shared_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """The fields that many rows repeat (one shape), in the order details list them."""
    get = row.get
    shared = {
        "source": get("source"),
        "type": get("type"),
        "categories": get("categories"),
        "intervals": get("intervals"),
        "outputs": get("outputs"),
    }
    label = get("source_label")
    if label is not None:
        shared["source_label"] = label
    return shared


def _check_shared(shared: dict[str, Any], source: str) -> dict[str, Any]:
    """Checked copies of the shared fields."""
    if shared["source"] != source:
        raise InvalidRow(f"source must be {source!r}, not {shared['source']!r}")
    if shared["type"] not in ROW_TYPES:
        raise InvalidRow(f"type must be one of {', '.join(ROW_TYPES)}, not {shared['type']!r}")
    if not isinstance(shared.get("source_label", ""), str):
        raise InvalidRow(f"source_label must be a string, not {shared['source_label']!r}")
    checked = dict(shared)
    checked["categories"] = _string_list(shared["categories"], "categories")
    checked["intervals"] = _interval_list(shared["intervals"])
    checked["outputs"] = _outputs(shared["outputs"], shared["type"])
    return checked


def _check_name(name: object) -> str:
    if type(name) is str and name.strip() and len(name) <= MAX_NAME_LENGTH:
        if _BAD_NAME_CHARACTER.search(name) is None:
            return name
        raise InvalidRow(f"name {name!r} contains a quote or a control character")
    if isinstance(name, str) and len(name) > MAX_NAME_LENGTH:
        raise InvalidRow(f"name is longer than {MAX_NAME_LENGTH} characters")
    raise InvalidRow(f"name must be a non-empty string, not {name!r}")


def _name_and_label(row: Mapping[str, Any]) -> tuple[str, str]:
    """The row's checked name and name_label."""
    name, label = row.get("name"), row.get("name_label")
    if (
        type(name) is str
        and type(label) is str
        and 0 < len(name) <= MAX_NAME_LENGTH
        and name.strip()
        and _BAD_NAME_CHARACTER.search(name) is None
    ):
        return name, label
    return _check_name(name), _check_label(label)


def _check_label(label: object) -> str:
    if not isinstance(label, str):
        raise InvalidRow(f"name_label must be a string, not {label!r}")
    return label


def _string_list(value: object, field: str) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise InvalidRow(f"{field} must be a list of strings, not {value!r}")
    return list(value)


def _interval_list(value: object) -> list[str]:
    values = _string_list(value, "intervals")
    if not values or not all(intervals.is_interval(v) for v in values):
        raise InvalidRow(f"intervals must be a non-empty list of interval names, not {values!r}")
    return values


def _outputs(value: object, row_type: str) -> list[dict[str, Any]]:
    if not isinstance(value, list | tuple) or not value:
        raise InvalidRow(f"outputs must be a non-empty list, not {value!r}")
    outputs = [_output(item) for item in value]
    axes = {output["y_axis"] for output in outputs}
    if row_type == "candlestick" and not {"price", "volume"} <= axes:
        raise InvalidRow("a candlestick row needs outputs on the y_axis 'price' and 'volume'")
    return outputs


def _output(item: object) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise InvalidRow(f"an output must be a mapping, not {item!r}")
    if not isinstance(item.get("name"), str) or not isinstance(item.get("y_axis"), str):
        raise InvalidRow(f"an output needs a string name and y_axis, not {dict(item)!r}")
    return dict(item)


def _json_default(value: object) -> object:
    if isinstance(value, PathLike):
        return str(value.__fspath__())
    raise TypeError(f"cannot store a {type(value).__name__} in a dataset row")


def _extra_json(row: Mapping[str, Any]) -> str | None:
    """The row's keys beyond DESIGN 5.4 as a JSON object, or ``None`` if there are none."""
    extra = {key: value for key, value in row.items() if key not in _ROW_FIELDS}
    return orjson.dumps(extra, default=_json_default).decode() if extra else None


# --------------------------------------------------------------------------- writer: batches


class _Batcher:
    """Turns provider rows into prepared rows and shapes, in batches; counts the words.

    A shape is checked once: a row whose shared fields serialize like a known shape's only
    has its name and name_label checked.
    """

    def __init__(self, source: str, first_seq: int) -> None:
        self.source = source
        self.first_seq = first_seq
        self.next_seq = first_seq
        self.seen = 0
        self.invalid = 0
        self.words: Counter[str] = Counter()
        self._shapes: dict[bytes, int] = {}
        self._bad_shapes: dict[bytes, str] = {}
        self._new_shapes: list[Shape] = []
        self._batch: defaultdict[int, list[Prepared]] = defaultdict(list)  # by nlen
        self._rows = 0

    def add(self, raw: object) -> None:
        """Check and prepare one provider row; log and skip it when invalid."""
        self.seen += 1
        try:
            if not isinstance(raw, dict | Mapping):
                raise InvalidRow(f"a row must be a mapping, not {type(raw).__name__}")
            shape = self._shape(raw)
            name, label = _name_and_label(raw)
            extra = None if raw.keys() <= _ROW_FIELDS else _extra_json(raw)
        except (InvalidRow, TypeError) as exc:
            self._skip(raw, exc)
            return
        prepared = self._prepare(name, label, shape, extra)
        self._batch[prepared[5]].append(prepared)
        self._rows += 1

    def _prepare(self, name: str, label: str, shape: int, extra: str | None) -> Prepared:
        seq = self.next_seq
        self.next_seq = seq + 1
        name_lower = name.lower()
        nlen = len(name_lower)
        text = f"{name} {label}"
        words = _ASCII_WORD.findall(text.lower()) if text.isascii() else search_words(text)
        self.words.update(words)
        source = self.source
        return ((nlen << _SEQ_BITS) | seq, f"{source}-{name}", source, name, name_lower, nlen,
                label, shape, " ".join(words), extra)  # fmt: skip

    def _shape(self, row: Mapping[str, Any]) -> int:
        """The id of the row's shape: checked when new; a new shape takes the next seq."""
        get = row.get
        fields = (get("source"), get("type"), get("categories"), get("intervals"))
        key = orjson.dumps((*fields, get("outputs"), get("source_label")))
        shape = self._shapes.get(key)
        return self._new_shape(_shared_fields(row), key) if shape is None else shape

    def _new_shape(self, shared: dict[str, Any], key: bytes) -> int:
        if key in self._bad_shapes:
            raise InvalidRow(self._bad_shapes[key])
        try:
            checked = _check_shared(shared, self.source)
        except InvalidRow as exc:
            self._bad_shapes[key] = str(exc)
            raise
        shape = self._shapes[key] = self.next_seq  # a seq of its own: ids stay unique
        self.next_seq += 1
        parts = [self.source, checked.get("source_label", ""), *checked["categories"]]
        words = " ".join(search_words(" ".join(parts)))
        details = orjson.dumps(checked).decode()
        self._new_shapes.append((shape, self.source, details, _tag(self.source, words), words))
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
        return self._rows >= BATCH_ROWS

    def take(self) -> tuple[list[Shape], list[Prepared]]:
        """The new shapes and the rows of the batch, in ascending keys (by length, then seq)."""
        shapes, self._new_shapes = self._new_shapes, []
        batch = [row for nlen in sorted(self._batch) for row in self._batch[nlen]]
        self._batch.clear()
        self._rows = 0
        return shapes, batch


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


class _Session:
    """The populate transaction, inside the writer process: one method per request."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.stored = 0
        self._conn: sqlite3.Connection | None = None

    def run(self, command: str, args: tuple[Any, ...]) -> tuple[str, Any]:
        """Run one request; reply ``("ok", value)`` or ``("error", message)``."""
        try:
            if self._conn is None:
                self._conn = _connect_writer(self.db_path)
            return "ok", getattr(self, f"do_{command}")(self._conn, *args)
        except (sqlite3.Error, OSError) as exc:
            return "error", str(exc)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def do_first_seq(self, conn: sqlite3.Connection) -> int:
        """The first seq no stored row has (read before the transaction starts)."""
        sql = "SELECT coalesce(max(seq_last), 0) + 1 FROM symbol_sources"
        return int(conn.execute(sql).fetchone()[0])

    def do_begin(self, conn: sqlite3.Connection, source: str, first_seq: int) -> None:
        """Start the transaction and delete the source's rows.

        Fails if another populate stored rows since ``first_seq`` was read: their keys
        could collide with the rows prepared meanwhile.
        """
        conn.execute("BEGIN IMMEDIATE")
        if self.do_first_seq(conn) > first_seq:
            conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("another populate wrote symbols meanwhile; run again")
        # Ascending keys: the full-text index flushes whenever its rowids go backwards.
        conn.execute(
            "DELETE FROM symbols WHERE key IN (SELECT key FROM symbols"
            " WHERE id >= ? AND id < ? AND source = ? ORDER BY key)",
            (*_id_range(source), source),
        )
        for table in ("symbol_shapes", "symbol_tags", "symbol_words"):
            conn.execute(f"DELETE FROM {table} WHERE source = ?", (source,))

    def do_insert(self, conn: sqlite3.Connection, shapes: list[Shape], rows: list[Prepared]) -> int:
        """Insert one batch (a taken id keeps its first row); return the rows stored so far."""
        conn.executemany("INSERT INTO symbol_shapes VALUES (?, ?, ?, ?)", [s[:4] for s in shapes])
        tags = [(tag, source, words) for _, source, _, tag, words in shapes]
        conn.executemany("INSERT OR IGNORE INTO symbol_tags VALUES (?, ?, ?)", tags)
        sql = "INSERT OR IGNORE INTO symbols VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        self.stored += max(conn.executemany(sql, rows).rowcount, 0)
        # One statement, in ascending keys, and only the rows that were stored.
        conn.execute(
            "INSERT INTO symbols_fts (rowid, words, tag)"
            " SELECT s.key, s.words, h.tag"
            " FROM symbols AS s CROSS JOIN symbol_shapes AS h ON h.shape = s.shape"
            " WHERE s.key IN (SELECT value FROM json_each(?)) ORDER BY s.key",
            (orjson.dumps([row[0] for row in rows]).decode(),),
        )
        return self.stored

    def do_commit(
        self, conn: sqlite3.Connection, source: str, words: Counter[str], seqs: range
    ) -> None:
        """Record the source's words and row count, and commit."""
        conn.executemany(
            "INSERT INTO symbol_words (word, source, rows) VALUES (?, ?, ?)",
            ((word, source, rows) for word, rows in words.items()),
        )
        conn.execute(
            "INSERT OR REPLACE INTO symbol_sources VALUES (?, ?, ?, ?, ?)",
            (source, self.stored, seqs.start, seqs.stop - 1, datetime.now(UTC).isoformat()),
        )
        conn.execute("COMMIT")

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
                command, args = pickle.loads(requests.recv_bytes())
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
        self._held: list[tuple[list[Shape], list[Prepared]]] | None = []
        self.first_seq = 0
        self.stored = 0

    def open(self) -> int:
        """Apply the schema; return the first free seq."""
        self.first_seq = self.call("first_seq")
        return self.first_seq

    def insert(self, shapes: list[Shape], rows: list[Prepared]) -> None:
        """Send one batch (or hold it back); wait while a few batches are in flight."""
        if self._held is not None:
            self._held.append((shapes, rows))
            if sum(len(held) for _, held in self._held) < ROWS_BEFORE_BEGIN:
                return
            self._begin()
        elif rows or shapes:
            self._request("insert", shapes, rows)
        self._wait(_BATCHES_IN_FLIGHT)

    def commit(self, words: Counter[str], seqs: range) -> None:
        if self._held is not None:
            self._begin()
        self.call("commit", self._source, words, seqs)

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
        self._outbox.put(pickle.dumps(("close", ())))
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
        self._outbox.put(pickle.dumps((command, args), protocol=pickle.HIGHEST_PROTOCOL))
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
    and the exception propagates. Invalid rows are logged and skipped; a name given twice
    keeps its first row. ``progress(n)`` is called with the number of rows read so far.
    Raises :class:`StorageError` when SQLite fails.

    The transaction runs in a child process (``spawn``), so a script that calls this must
    do so under ``if __name__ == "__main__":``.
    """
    writer = _Writer(Path(db_path).absolute(), source)
    try:
        return _replace(writer, source, rows, progress)
    finally:
        writer.close()


def _replace(
    writer: _Writer,
    source: str,
    rows: Iterable[Mapping[str, Any]],
    progress: Callable[[int], None] | None,
) -> int:
    batcher = _Batcher(source, writer.open())
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
    for raw in rows:
        batcher.add(raw)
        if batcher.full():
            writer.insert(*batcher.take())
            if progress is not None:
                progress(batcher.seen)
    writer.insert(*batcher.take())
    if progress is not None:
        progress(batcher.seen)


def _log_summary(batcher: _Batcher, stored: int) -> None:
    taken = batcher.seen - batcher.invalid - stored
    if batcher.invalid:
        logger.warning("%s: %d invalid rows skipped", batcher.source, batcher.invalid)
    if taken:
        logger.warning("%s: %d rows skipped: their id was already taken", batcher.source, taken)
    logger.info("%s: %d symbols stored", batcher.source, stored)


# --------------------------------------------------------------------------- reader: queries

_SELECT = (
    "SELECT s.key, s.id, s.name, s.name_label, s.extra, h.details"
    " FROM symbols AS s CROSS JOIN symbol_shapes AS h ON h.shape = s.shape"
)


def _with_source(
    sql: str, source: str | None, params: tuple[Any, ...]
) -> tuple[str, tuple[Any, ...]]:
    """Fill the ``{source}`` slot of ``sql``: ``AND s.source = ?`` when a source is given."""
    if source is None:
        return sql.replace(" {source}", ""), params
    return sql.replace(" {source}", " AND s.source = ?"), (*params, source)


def _listing(conn: sqlite3.Connection, limit: int, source: str | None) -> list[Found]:
    if source is None:
        return conn.execute(f"{_SELECT} ORDER BY s.id LIMIT ?", (limit,)).fetchall()
    sql = f"{_SELECT} WHERE s.id >= ? AND s.id < ? AND s.source = ? ORDER BY s.id LIMIT ?"
    return conn.execute(sql, (*_id_range(source), source, limit)).fetchall()


def _exact(conn: sqlite3.Connection, text: str, limit: int, source: str | None) -> list[Found]:
    """Rows whose symbol is ``text`` ignoring case; the same case first."""
    lower = text.lower()
    sql, params = _with_source(
        f"{_SELECT} WHERE s.nlen = ? AND s.name_lower = ? {{source}}"
        " ORDER BY s.name = ? DESC, s.id LIMIT ?",
        source,
        (len(lower), lower),
    )
    return conn.execute(sql, (*params, text, limit)).fetchall()


def _prefixed(conn: sqlite3.Connection, text: str, limit: int, source: str | None) -> list[Found]:
    """Rows whose symbol starts with ``text`` ignoring case: shortest, then alphabetical."""
    lower = text.lower()
    longest = conn.execute("SELECT max(nlen) FROM symbols").fetchone()[0] or 0
    sql, params = _with_source(
        f"{_SELECT} WHERE s.nlen = ? AND s.name_lower > ? AND s.name_lower < ? {{source}}"
        " ORDER BY s.name_lower LIMIT ?",
        source,
        (lower, _prefix_end(lower)),
    )
    found: list[Found] = []
    for nlen in range(len(lower) + 1, longest + 1):
        found += conn.execute(sql, (nlen, *params, limit - len(found))).fetchall()
        if len(found) >= limit:
            break
    return found


def _longer_words(conn: sqlite3.Connection, word: str) -> list[str]:
    """The most frequent indexed words that start with ``word`` (and are longer)."""
    if len(word) < _PREFIX_MIN_LENGTH:
        return []
    sql = "SELECT word, rows FROM symbol_words WHERE word > ? AND word < ? LIMIT ?"
    counts: Counter[str] = Counter()
    for longer, rows in conn.execute(sql, (word, _prefix_end(word), _PREFIX_SCAN)):
        counts[longer] += rows
    return [longer for longer, _ in counts.most_common(_PREFIX_WORDS)]


def _tags_with(conn: sqlite3.Connection, word: str, prefix: bool) -> list[str]:
    """The tags of the shapes whose words contain ``word`` (or a word starting with it)."""
    pattern = f"% {word}%" if prefix else f"% {word} %"
    sql = "SELECT tag FROM symbol_tags WHERE ' ' || words || ' ' LIKE ?"
    return [tag for (tag,) in conn.execute(sql, (pattern,))]


def _source_tags(conn: sqlite3.Connection, source: str) -> list[str]:
    sql = "SELECT tag FROM symbol_tags WHERE source = ?"
    return [tag for (tag,) in conn.execute(sql, (source,))]


def _any_of(column: str, tokens: Iterable[str]) -> str:
    return f"{{{column}}} : (" + " OR ".join(f'"{token}"' for token in tokens) + ")"


def _word_clause(conn: sqlite3.Connection, word: str, prefix: bool) -> str:
    """The FTS5 clause for one search word: in the row's words, or in its shape's words."""
    choices = [word, *_longer_words(conn, word)] if prefix else [word]
    clause = _any_of("words", choices)
    tags = _tags_with(conn, word, prefix)
    return f"({clause} OR {_any_of('tag', tags)})" if tags else clause


def _match_expression(conn: sqlite3.Connection, text: str, source: str | None) -> str | None:
    """The FTS5 query for ``text``, or ``None`` when nothing can match."""
    clauses: list[str] = []
    for term in text.split():
        words = search_words(term)[: _MAX_QUERY_WORDS - len(clauses)]
        clauses += [_word_clause(conn, w, i == len(words) - 1) for i, w in enumerate(words)]
    if not clauses:
        return None
    if source is not None:
        tags = _source_tags(conn, source)
        if not tags:
            return None
        clauses.append(_any_of("tag", tags))
    return " AND ".join(clauses)


def _matched(conn: sqlite3.Connection, text: str, limit: int, source: str | None) -> list[Found]:
    """Full-text matches, shortest symbol first (the rowid order); [] past the time budget."""
    expression = _match_expression(conn, text, source)
    if expression is None:
        return []
    sql = (
        "SELECT s.key, s.id, s.name, s.name_label, s.extra, h.details FROM symbols_fts AS f"
        " CROSS JOIN symbols AS s ON s.key = f.rowid"
        " CROSS JOIN symbol_shapes AS h ON h.shape = s.shape"
        " WHERE symbols_fts MATCH ? ORDER BY f.rowid LIMIT ?"
    )
    try:
        with _deadline(conn, SEARCH_BUDGET_SECONDS):
            return conn.execute(sql, (expression, limit)).fetchall()
    except sqlite3.OperationalError as exc:
        logger.warning("full-text search for %r stopped: %s", text, exc)
        return []


@contextmanager
def _deadline(conn: sqlite3.Connection, seconds: float) -> Iterator[None]:
    """Interrupt the statements run inside after ``seconds``."""
    stop = time.monotonic() + seconds
    conn.set_progress_handler(lambda: time.monotonic() > stop, 10_000)
    try:
        yield
    finally:
        conn.set_progress_handler(None, 0)


def _search(conn: sqlite3.Connection, query: str, limit: int, source: str | None) -> list[Found]:
    """The ranked rows for ``query`` (see the module docstring)."""
    text = " ".join(query.split())[:MAX_QUERY_LENGTH]
    if limit <= 0:
        return []
    if not text:
        return _listing(conn, limit, source)
    found: dict[int, Found] = {}
    for stage in (_exact, _prefixed, _matched):
        for row in stage(conn, text, limit + len(found), source):
            found.setdefault(row[0], row)
        if len(found) >= limit:
            break
    return list(found.values())[:limit]


def _search_results(
    conn: sqlite3.Connection, query: str, limit: int, source: str | None
) -> list[dict[str, Any]]:
    return [_result(row) for row in _search(conn, query, limit, source)]


def _details(conn: sqlite3.Connection, source: str, name: str) -> list[dict[str, Any]]:
    sql = f"{_SELECT} WHERE s.id = ? AND s.source = ? AND s.name = ?"
    rows = conn.execute(sql, (f"{source}-{name}", source, name)).fetchall()
    return [_details_of(row) for row in rows]


def _count(conn: sqlite3.Connection) -> list[tuple[int]]:
    return conn.execute("SELECT coalesce(sum(rows), 0) FROM symbol_sources").fetchall()


def _has_tables(conn: sqlite3.Connection) -> bool:
    names = ", ".join("?" * len(_TABLES))
    sql = f"SELECT count(*) FROM sqlite_master WHERE name IN ({names})"
    return int(conn.execute(sql, _TABLES).fetchone()[0]) == len(_TABLES)


def _result(row: Found) -> dict[str, Any]:
    """A Tradiny search row."""
    return {"id": row[1], "name": row[2], "type": "data", "details": _details_of(row)}


def _details_of(row: Found) -> dict[str, Any]:
    """The dataset row: source, name, name_label, the shape's other fields, the extra keys."""
    _, _, name, name_label, extra, shape = row
    shared: dict[str, Any] = orjson.loads(shape)
    details = {"source": shared.pop("source"), "name": name, "name_label": name_label}
    details.update(shared)
    if extra is not None:
        details.update(orjson.loads(extra))
    return details


# --------------------------------------------------------------------------- reader: index


class SymbolIndex:
    """Read access to the symbol database for the hub; every call runs on a thread.

    A missing database file or missing tables read as an empty index (with a logged hint
    to run populate); the index sees the rows as soon as populate has committed them.
    """

    def __init__(self, db_path: Path, threads: int = 2) -> None:
        self.db_path = db_path
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="symbols")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._hinted = False

    @classmethod
    async def open(cls, db_path: str | Path, threads: int = 2) -> SymbolIndex:
        """Open the index of ``db_path``; the file need not exist yet."""
        index = cls(Path(db_path), threads)
        count = await index.count()
        logger.info("symbol database %s: %d symbols", index.db_path, count)
        return index

    async def search(
        self, query: str, limit: int = 100, source: str | None = None
    ) -> list[dict[str, Any]]:
        """Tradiny search rows ``{id, name, type: "data", details}``, best first.

        An empty query lists the first rows by id. ``limit`` is capped at
        ``MAX_SEARCH_LIMIT``; ``source`` keeps only that source's rows.
        """
        limit = min(max(limit, 0), MAX_SEARCH_LIMIT)
        return await self._run(_search_results, [], query, limit, source)

    async def details(self, source: str, name: str) -> dict[str, Any] | None:
        """The dataset row of ``(source, name)``, or ``None`` if there is none."""
        found = await self._run(_details, [], source, name)
        return found[0] if found else None

    async def count(self) -> int:
        """How many symbols the database holds."""
        rows = await self._run(_count, [(0,)])
        return int(rows[0][0])

    async def close(self) -> None:
        """Stop the threads and close their connections."""
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    async def _run(self, query: Callable[..., list[T]], empty: list[T], *args: Any) -> list[T]:
        """``query(conn, *args)`` on a thread, in one read transaction; ``empty`` if no table."""
        loop = asyncio.get_running_loop()
        read = functools.partial(self._read, query, empty, *args)
        return await loop.run_in_executor(self._pool, read)

    def _read(self, query: Callable[..., list[T]], empty: list[T], *args: Any) -> list[T]:
        try:
            conn = self._connection()
            if conn is None:
                return empty
            conn.execute("BEGIN")
            try:
                return query(conn, *args)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StorageError(f"symbol database {self.db_path}: {exc}") from exc

    def _connection(self) -> sqlite3.Connection | None:
        """This thread's connection, once the database and its tables exist."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            if conn is None:
                return None
            self._local.conn = conn
        if not getattr(self._local, "ready", False):
            self._local.ready = _has_tables(conn)
            if not self._local.ready:
                self._hint("has no symbol tables")
                return None
        return conn

    def _connect(self) -> sqlite3.Connection | None:
        uri = f"file:{quote(str(self.db_path.absolute()))}?mode=rw"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        except sqlite3.OperationalError:
            self._hint("does not exist")
            return None
        for pragma in ("query_only = ON", "busy_timeout = 5000", "cache_size = -16384"):
            conn.execute(f"PRAGMA {pragma}")
        with self._lock:
            self._connections.append(conn)
        return conn

    def _hint(self, problem: str) -> None:
        if not self._hinted:
            self._hinted = True
            logger.warning("symbol database %s %s; %s", self.db_path, problem, _POPULATE_HINT)
