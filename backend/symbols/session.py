"""The SQLite side of the symbol database writer: the populate transaction, in its process.

:func:`serve` is the child process that :mod:`.writer` starts (``spawn``) for one provider's
replace: it reads the requests (JSON, ``orjson``) and runs each on a :class:`Session`, one
method per request, and replies to each. The one transaction deletes the source's rows,
inserts the batches prepared by :class:`.batches.Batcher` a hundred rows per statement
(:func:`_insert_sql`), adds them to the full-text index, records the source's words,
merges the full-text index into one segment and commits.

Owns the connection, the SQL and the transaction. Not the row checks nor the batches
(:mod:`.batches`), nor the process's start, the order of the requests and what holds them
back (:mod:`.writer`).
"""

from __future__ import annotations

import signal
import sqlite3
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import chain
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import orjson

from backend.symbols.batches import ROW_VALUES, SEQ_BITS, Prepared, Shape
from backend.symbols.rows import LEAD_MARK, id_range

SCHEMA_PATH = Path(__file__).resolve().parent / "schema.sql"
FTS_ROWS = 100_000  # rows added to the full-text index per statement
_IN_TRANSACTION = frozenset(("insert", "commit"))  # requests that only run after "begin"
_ROWS_PER_INSERT = 100


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
            f"?{row * ROW_VALUES + n}" for n in range(1, ROW_VALUES + 1)
        )
        values.append(
            f"({key}, {literal} || '-' || {name}, {literal}, {name}, {lower},"
            f" {key} >> {SEQ_BITS}, {label}, {shape}, {words}, {extra})"
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
    """How many of ``source``'s stored rows contain each word (lead tokens are no words)."""
    sql = "SELECT words FROM symbols WHERE id >= ? AND id < ? AND source = ?"
    rows = conn.execute(sql, (*id_range(source), source))
    counts = Counter(chain.from_iterable(set(words.split()) for (words,) in rows))
    return Counter({word: n for word, n in counts.items() if not word.startswith(LEAD_MARK)})


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


class Session:
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
        step = ROW_VALUES * _ROWS_PER_INSERT
        whole = len(rows) - len(rows) % step
        if whole:
            parts = [rows[start : start + step] for start in range(0, whole, step)]
            self.stored += max(conn.executemany(self._insert, parts).rowcount, 0)
        if whole < len(rows):
            rest = rows[whole:]
            sql = _insert_sql(self._source, len(rest) // ROW_VALUES)
            self.stored += max(conn.execute(sql, rest).rowcount, 0)
        self._unindexed += cast(list[int], rows[::ROW_VALUES])  # the keys
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
        """Index the last rows, record the source's words and row count, merge the full-text
        index into one segment, and commit.

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
        # One segment: a search reads each segment's part of its tokens' doclists (8
        # segments at 1.5M symbols made a query 2.5 times slower); about 0.5 s there.
        conn.execute("INSERT INTO symbols_fts (symbols_fts) VALUES ('optimize')")
        conn.execute("COMMIT")

    def _record_indexed_words(self, conn: sqlite3.Connection, source: str) -> None:
        """Record the rows that contain each word from the full-text index's vocabulary.

        Only right while the source's rows are the only rows: the index is then theirs, and
        FTS5 counts the rows that hold each of its terms. The tags and the lead tokens are
        terms too (a word never equals one): they are left out.
        """
        conn.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS temp.symbols_fts_terms"
            " USING fts5vocab(main, symbols_fts, row)"
        )
        conn.execute(
            "INSERT INTO symbol_words (word, source, rows)"
            " SELECT term, ?, doc FROM temp.symbols_fts_terms"
            " WHERE term NOT IN (SELECT tag FROM symbol_tags) AND term NOT GLOB ?",
            (source, LEAD_MARK + "*"),
        )

    def do_checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy the WAL into the database and truncate it (readers may hold it up)."""
        conn.execute("PRAGMA busy_timeout = 2000")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def do_rollback(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def serve(requests: Connection, replies: Connection, db_path: Path) -> None:
    """The writer process: run each request and reply, until "close" or the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    session = Session(db_path)
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
