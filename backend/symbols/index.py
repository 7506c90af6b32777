"""The symbol search: the reader of the symbol database, used by the hub.

:class:`SymbolIndex` (asyncio): ``search``, ``details`` and ``count`` run on a small pool of
threads, one SQLite connection each, so the event loop never waits on SQLite. The tables are
those of ``schema.sql``; :mod:`.writer` fills them (:mod:`.batches` prepares the rows,
:mod:`.session` runs the SQL) and :mod:`.rows` checks the rows.

Search finds the symbol itself, the symbols that start with the query, and full-text
matches: every term must match the symbol or the words of ``name_label``, ``categories``,
``source`` or ``source_label``, its last word as a prefix. Search words are lower-cased runs
of letters or of digits without accents, so ``O:SPY251219C00450000`` is also found by ``spy
251219`` and ``BRK.B`` by ``brk b``. User text reaches the FTS5 query syntax only as such
words, quoted. It ranks them as a trader means them, ignoring case (:func:`_rank`): the
exact symbol, the symbol less a market prefix (``X:BTCUSD`` for ``btcusd``), the query
followed by a quote currency by the quote's popularity (``btc``: ``BTCUSDT`` ... ``BTCEUR``),
other symbols that start with the query, also after a market prefix (shortest first; an index
range each, so ``spy2612`` finds ``O:SPY261218C00600000`` among millions of contracts), rows
whose label starts with the query (``bitcoin``: "Bitcoin / TetherUS" before "Bitcoin Cash /
TetherUS"), then the other full-text matches (shortest symbol first, so "Ethereum /
Bitcoin" comes last). A one-word query none of these find is looked for inside the symbols
(``usd`` finds ``BTCUSD``), in a table of at most 200,000 symbols.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import orjson

from backend.errors import StorageError
from backend.symbols.rows import LEAD_MARK, first_word, id_range, search_words

logger = logging.getLogger(__name__)

MAX_SEARCH_LIMIT = 1000
MAX_QUERY_LENGTH = 200
SEARCH_BUDGET_SECONDS = 0.25
_TABLES = (
    "symbols",
    "symbol_shapes",
    "symbol_tags",
    "symbols_fts",
    "symbol_words",
    "symbol_sources",
)
_MAX_QUERY_WORDS = 12
_PREFIX_MIN_LENGTH = 2
# The fewest candidates a stage gathers, whatever the limit: the first rows of a ranking do
# not depend on how many are asked for (a dropdown's 2 and a search box's 100 agree).
_WINDOW = 100
_PREFIX_WORDS = 24
_PREFIX_SCAN = 2000
_CONTAINED_MAX_ROWS = 200_000
_POPULATE_HINT = "run `python populate.py` to fill it"
#: Market prefixes (Polygon's: options, crypto, forex, indices): the symbols that start
#: with the query after one of them are looked up as those that start with it
#: (``spy2612`` finds ``O:SPY261218C00600000``), not only by the full-text words.
MARKET_PREFIXES = ("o:", "x:", "c:", "i:")
Found = tuple[int, str, str, str, str | None, str]
#: What a search is limited to: one source, several (the enabled ones), or every row.
Scope = str | tuple[str, ...] | None

T = TypeVar("T")


def _prefix_end(prefix: str) -> str:
    """An upper bound of the strings that start with ``prefix`` (for a range scan)."""
    return prefix + "\U0010ffff"


# --------------------------------------------------------------------------- reader: queries

_SELECT = (
    "SELECT s.key, s.id, s.name, s.name_label, s.extra, h.details"
    " FROM symbols AS s CROSS JOIN symbol_shapes AS h ON h.shape = s.shape"
)


def _with_source(sql: str, source: Scope, params: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
    """Fill the ``{source}`` slot of ``sql``: ``AND s.source = ?`` when a source is given,
    ``AND s.source IN (...)`` for several."""
    if source is None:
        return sql.replace(" {source}", ""), params
    if isinstance(source, tuple):
        marks = ", ".join("?" * len(source))
        return sql.replace(" {source}", f" AND s.source IN ({marks})"), (*params, *source)
    return sql.replace(" {source}", " AND s.source = ?"), (*params, source)


def _listing(conn: sqlite3.Connection, limit: int, source: Scope) -> list[Found]:
    if source is None:
        return conn.execute(f"{_SELECT} ORDER BY s.id LIMIT ?", (limit,)).fetchall()
    if isinstance(source, tuple):
        listing = f"{_SELECT} WHERE 1 {{source}} ORDER BY s.id LIMIT ?"
        sql, params = _with_source(listing, source, ())
        return conn.execute(sql, (*params, limit)).fetchall()
    sql = f"{_SELECT} WHERE s.id >= ? AND s.id < ? AND s.source = ? ORDER BY s.id LIMIT ?"
    return conn.execute(sql, (*id_range(source), source, limit)).fetchall()


def _named(conn: sqlite3.Connection, query: _Query, limit: int, source: Scope) -> list[Found]:
    """Rows whose symbol is the query ignoring case (or its words together), or the query
    followed by a quote currency (``btc``: ``BTCUSDT``, ``BTCEUR``; one index lookup per
    name)."""
    names = [query.lower]
    if " " not in query.lower:
        names += [query.lower + quote for quote in QUOTES]
    if query.joined and query.joined != query.lower:
        names.append(query.joined)
    sql, params = _with_source(
        "SELECT s.key, s.id, s.name, s.name_label, s.extra, h.details FROM json_each(?) AS j"
        " CROSS JOIN symbols AS s ON s.nlen = length(j.value) AND s.name_lower = j.value"
        " CROSS JOIN symbol_shapes AS h ON h.shape = s.shape WHERE 1 {source} LIMIT ?",
        source,
        (orjson.dumps(names).decode(),),
    )
    return conn.execute(sql, (*params, limit)).fetchall()


def _prefixed(conn: sqlite3.Connection, text: str, limit: int, source: Scope) -> list[Found]:
    """Rows whose symbol starts with ``text`` ignoring case: shortest, then alphabetical.

    One statement: for each length from the shortest longer than ``text`` (a recursive
    CTE, read in the order it counts), the index range of that length (in index order), so
    ``LIMIT`` stops at the first ``limit`` rows of that order without sorting any.
    """
    lower = text.lower()
    sql, params = _with_source(
        "WITH RECURSIVE n(nlen) AS (SELECT ? UNION ALL SELECT nlen + 1 FROM n"
        " WHERE nlen < (SELECT max(nlen) FROM symbols))"
        " SELECT s.key, s.id, s.name, s.name_label, s.extra, h.details FROM n"
        " CROSS JOIN symbols AS s ON s.nlen = n.nlen AND s.name_lower > ? AND s.name_lower < ?"
        " CROSS JOIN symbol_shapes AS h ON h.shape = s.shape WHERE 1 {source} LIMIT ?",
        source,
        (len(lower) + 1, lower, _prefix_end(lower)),
    )
    return conn.execute(sql, (*params, limit)).fetchall()


def _contained(conn: sqlite3.Connection, text: str, limit: int, source: Scope) -> list[Found]:
    """Rows whose symbol contains ``text`` ignoring case (``usd`` finds ``BTCUSD``), shortest
    first: for a one-word query the other stages found nothing for, in a symbol table small
    enough to scan (at most :data:`_CONTAINED_MAX_ROWS`, by the row counts populate keeps;
    a million option contracts are not scanned on every keystroke), within the search's
    time budget."""
    lower = text.lower()
    if " " in lower or len(lower) < _PREFIX_MIN_LENGTH:
        return []
    if _count(conn)[0][0] > _CONTAINED_MAX_ROWS:
        return []
    sql, params = _with_source(
        f"{_SELECT} WHERE instr(s.name_lower, ?) > 0 {{source}} ORDER BY s.nlen, s.name_lower"
        " LIMIT ?",
        source,
        (lower,),
    )
    try:
        with _deadline(conn, SEARCH_BUDGET_SECONDS):
            return conn.execute(sql, (*params, limit)).fetchall()
    except sqlite3.OperationalError as exc:  # past the search's time budget
        logger.warning("substring search for %r stopped: %s", text, exc)
        return []


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


def _any_of(tokens: Iterable[str]) -> str:
    return "(" + " OR ".join(f'"{token}"' for token in tokens) + ")"


def _word_choices(conn: sqlite3.Connection, word: str, prefix: bool) -> list[str]:
    """The indexed words one search word stands for: itself, and for a prefix the most
    frequent longer ones."""
    return [word, *_longer_words(conn, word)] if prefix else [word]


def _match_expressions(
    conn: sqlite3.Connection, query: _Query, source: Scope
) -> tuple[str, str] | None:
    """The FTS5 queries for ``query``, or ``None`` when nothing can match: every word in the
    row's words or in its shape's words (or, for several words, them written together as
    one: ``eur usd`` finds ``C:EURUSD``, whose word is ``eurusd``); and the same with the
    first word as the row's lead token (the labels that start with it).

    No column filter (the index keeps no columns): a word is letters only or digits only,
    a tag and a lead token have both, so none ever matches another.
    """
    clauses: list[str] = []
    lead = ""
    for word, prefix in query.words:
        choices = _word_choices(conn, word, prefix)
        if not clauses:
            lead = _any_of(LEAD_MARK + choice for choice in choices)
        clauses.append(_any_of([*choices, *_tags_with(conn, word, prefix)]))
    if not clauses:
        return None
    every, lead = " AND ".join(clauses), " AND ".join([lead, *clauses[1:]])
    joined = query.joined
    if len(query.words) > 1 and (joined.isalpha() or joined.isdigit()):  # may be a word
        every = f"({every}) OR {_any_of(_word_choices(conn, joined, True))}"
    if source is not None:
        sources = source if isinstance(source, tuple) else (source,)
        tags = [tag for one in sources for tag in _source_tags(conn, one)]
        if not tags:
            return None
        every, lead = f"({every}) AND {_any_of(tags)}", f"{lead} AND {_any_of(tags)}"
    return every, lead


def _matched(conn: sqlite3.Connection, expression: str, text: str, limit: int) -> list[Found]:
    """Full-text matches, shortest symbol first (the rowid order); [] past the time budget."""
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


# --------------------------------------------------------------------------- reader: ranking

#: Quote currencies, the most traded first. A symbol that is the query followed by one of
#: them ranks by it (``btc``: ``BTCUSDT`` ... ``BTCEUR``, then ``BTCDOMUSDT``); where other
#: ties remain, a symbol that ends with one ranks by it.
QUOTES = (
    "usd", "usdt", "usdc", "fdusd", "btc", "eth", "eur", "bnb", "gbp", "jpy", "tusd", "dai",
    "try", "brl", "aud", "cad", "chf",
)  # fmt: skip
_QUOTE_RANK = {quote: rank for rank, quote in enumerate(QUOTES)}
_NO_QUOTE = len(QUOTES)
_QUOTE_SIZES = sorted({len(quote) for quote in QUOTES}, reverse=True)  # longest first
_JOINERS = " -/_.:"  # may stand between a symbol's base and its quote (EUR/USD)
# Where the leading name of a label ends: "Bitcoin / TetherUS", "Euro - United States
# Dollar", "Apple Hospitality REIT, Inc." (a dash or slash between spaces, a comma, a "(").
_NAME_END = re.compile(r"\s[-/|\u2013\u2014]\s|[,(]")
#: How a row ranks, least first: its tier, then the tier's tie-breaks (see :func:`_rank`).
Rank = tuple[int, int, int, int, int, str, int]


@dataclass(frozen=True, slots=True)
class _Query:
    """A search text: as typed (spaces collapsed), lower-cased, and its search words, each
    with whether it matches as a prefix (the last word of each space-separated term).

    ``joined``: its words written together (``btcusdt`` for ``btc/usdt`` or ``btc usdt``,
    ``eurusd`` for ``eur usd``): a pair typed with a separator is looked for as the symbol
    that has none, and a symbol's words written together are compared with it (``eurusd``
    finds ``EUR/USD``).
    """

    text: str
    lower: str
    words: tuple[tuple[str, bool], ...]
    joined: str

    @classmethod
    def of(cls, text: str) -> _Query:
        words: list[tuple[str, bool]] = []
        for term in text.split():
            found = search_words(term)[: _MAX_QUERY_WORDS - len(words)]
            words += [(word, n == len(found) - 1) for n, word in enumerate(found)]
        joined = "".join(word for word, _ in words)
        return cls(text, text.lower(), tuple(words), joined)


def _rank(query: _Query, row: Found, led: bool = False) -> Rank | None:
    """How ``row`` ranks for ``query``: tiers, then tie-breaks, ignoring case throughout;
    ``None`` for the last tier. ``led``: the label is known to start with the query's words
    (a row of the label stage for a one-word query).

    0. the symbol is the query (the same case first);
    1. the symbol less a market prefix (``X:`` of ``X:BTCUSD``) is the query, or its words
       written together are the query's (``eur usd``: ``EURUSD``, ``EUR/USD``, ``C:EURUSD``):
       by quote currency, then shortest;
    2. the symbol (or it less its market prefix, or its words together) is the query (or
       its words together) then a quote currency (``btc``: ``BTCUSDT``), by the quote's rank
       in :data:`QUOTES`, then those that start with the query as typed, then shortest;
    3. the symbol starts so otherwise: as typed first (``EUR/U``: ``EUR/USD``, then
       ``EURUSD``), then shortest, then alphabetical;
    4. the label starts with the query's words (``bitcoin``: "Bitcoin / TetherUS", "Bitcoin
       Cash / TetherUS"): the shorter leading name of the label ("Bitcoin" before "Bitcoin
       Cash", "Apple Inc." before "Apple Hospitality REIT"), then the symbol's quote
       currency, the shorter label, the shorter symbol;
    5. every other match, shortest symbol first (the full-text order, which needs no rank).

    Last of all, the populate order (the key).
    """
    key, name, label = row[0], row[2], row[3]
    lower = name.lower()
    if lower == query.lower:
        return (0, int(name != query.text), 0, 0, 0, "", key)
    core = lower.rpartition(":")[2]
    joined = _joined(core)
    if core == query.lower or (joined and joined == query.joined):
        return (1, _quote_rank(core), len(lower), 0, 0, "", key)
    rest, typed = _rest_after(query.lower, lower, core), 0
    if rest is None and joined.startswith(query.joined) and joined:
        rest, typed = joined[len(query.joined) :], 1
    if rest is not None:
        quote = _QUOTE_RANK.get(rest.lstrip(_JOINERS), _NO_QUOTE)
        if quote < _NO_QUOTE:
            return (2, quote, typed, len(lower), 0, "", key)
        return (3, typed, len(lower), 0, 0, lower, key)
    if led or _label_starts(label, query.words):
        end = _NAME_END.search(label)
        lead = len(label) if end is None else end.start()
        return (4, lead, _quote_rank(core), len(label), len(lower), "", key)
    return None


def _joined(symbol: str) -> str:
    """The search words of ``symbol`` written together (``eurusd`` for ``eur/usd``)."""
    return symbol if symbol.isascii() and symbol.isalnum() else "".join(search_words(symbol))


def _rest_after(prefix: str, lower: str, core: str) -> str | None:
    """What follows ``prefix`` in the symbol or in it less its market prefix, or None."""
    if lower.startswith(prefix):
        return lower[len(prefix) :]
    if core.startswith(prefix):
        return core[len(prefix) :]
    return None


def _quote_rank(symbol: str) -> int:
    """The rank of the quote currency ``symbol`` ends with (the longest that fits)."""
    for size in _QUOTE_SIZES:
        if len(symbol) > size:
            rank = _QUOTE_RANK.get(symbol[-size:])
            if rank is not None:
                return rank
    return _NO_QUOTE


def _label_starts(label: str, wanted: tuple[tuple[str, bool], ...]) -> bool:
    """Whether the search words of ``label`` begin with the ``wanted`` words (the first word
    alone is compared first: most labels differ there)."""
    if not wanted:
        return False
    first, (want, prefix) = first_word(label), wanted[0]
    if first != want and not (prefix and first.startswith(want)):
        return False
    return len(wanted) == 1 or _starts_with(search_words(label), wanted)


def _starts_with(words: list[str], wanted: tuple[tuple[str, bool], ...]) -> bool:
    """Whether ``words`` begin with the ``wanted`` words (those marked prefix as prefixes)."""
    if len(words) < len(wanted) or not wanted:
        return False
    for have, (want, prefix) in zip(words, wanted, strict=False):
        if have != want and not (prefix and have.startswith(want)):
            return False
    return True


# --------------------------------------------------------------------------- reader: search


def _encodable(text: str) -> str:
    """``text`` with what UTF-8 cannot hold (a lone surrogate, which a JSON ``\\ud800`` escape
    gives) replaced by "?": SQLite and orjson refuse it."""
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")


def _search(conn: sqlite3.Connection, query: str, limit: int, source: Scope) -> list[Found]:
    """The ranked rows for ``query`` (see the module docstring and :func:`_rank`).

    The stages gather candidates, each only while the tiers it serves have fewer than
    :data:`_WINDOW` rows (or ``limit``, if more): the symbol and it followed by a quote
    currency (tiers 0-2), the symbols that start with the query, also after one of the
    :data:`MARKET_PREFIXES` (shortest first, tier 3),
    the full-text matches (shortest symbol first, any tier), and those whose label starts
    with the first word (by its lead token, shortest symbol first: tier 4 when the others
    follow). Each gathers that many rows more than those found before; the full-text
    matches past them are not ranked. The label stage comes first for a one-word query (it
    reads one token's rows), and for several words only when there are more full-text
    matches than gathered (with the other words' clauses, FTS5 reads theirs as well).
    """
    text = _encodable(" ".join(query.split())[:MAX_QUERY_LENGTH])
    if limit <= 0:
        return []
    if isinstance(source, tuple) and _sources_in(conn) <= set(source):
        source = None  # the usual case: every stored source is in scope, no filter needed
    if not text:
        return _listing(conn, limit, source)
    wanted, window = _Query.of(text), max(limit, _WINDOW)
    ranked: dict[int, tuple[Rank, Found]] = {}
    last: dict[int, Found] = {}  # the last tier, in the full-text order

    def gather(rows: list[Found], led: bool = False) -> None:
        for row in rows:
            if row[0] not in ranked and row[0] not in last:
                rank = _rank(wanted, row, led)
                if rank is None:
                    last[row[0]] = row
                else:
                    ranked[row[0]] = (rank, row)

    def enough(tier: int) -> bool:
        return sum(1 for rank, _ in ranked.values() if rank[0] <= tier) >= window

    gather(_named(conn, wanted, window, source))
    if not enough(2):
        gather(_prefixed(conn, text, window + len(ranked), source))
    if ":" not in text and len(text) >= _PREFIX_MIN_LENGTH:
        for market in MARKET_PREFIXES:  # the symbols less their market prefix, as typed
            if not enough(3):
                gather(_prefixed(conn, market + text, window + len(ranked), source))
    if wanted.joined and wanted.joined != wanted.lower and not enough(3):
        gather(_prefixed(conn, wanted.joined, window + len(ranked), source))
    expressions = None if enough(3) else _match_expressions(conn, wanted, source)
    if expressions is not None:
        every, lead = expressions
        alone = len(wanted.words) == 1  # the lead query is then that of one token
        if alone:  # its rows' labels start with the word: no need to look
            gather(_matched(conn, lead, text, window + len(ranked)), led=True)
        if not enough(4):
            size = window + len(ranked) + len(last)
            matched = _matched(conn, every, text, size)
            gather(matched)
            if not alone and len(matched) == size and not enough(4):  # more than ranked
                gather(_matched(conn, lead, text, window + len(ranked)))
    if not ranked and not last:
        return _contained(conn, text, limit, source)
    best = [row for _, row in sorted(ranked.values(), key=itemgetter(0))]
    return [*best, *last.values()][:limit]


def _sources_in(conn: sqlite3.Connection) -> set[str]:
    """The sources the database holds rows of."""
    return {source for (source,) in conn.execute("SELECT source FROM symbol_sources")}


def _search_results(
    conn: sqlite3.Connection, query: str, limit: int, source: Scope
) -> list[dict[str, Any]]:
    return [_result(row) for row in _search(conn, query, limit, source)]


def _details(conn: sqlite3.Connection, source: str, name: str) -> list[dict[str, Any]]:
    if _encodable(source) != source or _encodable(name) != name:
        return []  # no stored row has what UTF-8 cannot hold
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

    def __init__(
        self, db_path: Path, threads: int = 2, sources: Iterable[str] | None = None
    ) -> None:
        self.db_path = db_path
        # The enabled providers: rows of others (populated once, since disabled) are
        # neither found nor resolved, as the server cannot chart them. None: every row.
        self.sources = None if sources is None else tuple(sorted(set(sources)))
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="symbols")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._hinted = False

    @classmethod
    async def open(
        cls, db_path: str | Path, threads: int = 2, sources: Iterable[str] | None = None
    ) -> SymbolIndex:
        """Open the index of ``db_path``; the file need not exist yet. ``sources``: the
        enabled providers, the only ones searched (``None``: all)."""
        index = cls(Path(db_path), threads, sources)
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
        scope: Scope = source
        if self.sources is not None:
            if source is not None and source not in self.sources:
                return []
            scope = self.sources if source is None else source
        return await self._run(_search_results, [], query, limit, scope)

    async def details(self, source: str, name: str) -> dict[str, Any] | None:
        """The dataset row of ``(source, name)``, or ``None`` if there is none (or its
        source is not enabled)."""
        if self.sources is not None and source not in self.sources:
            return None
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
