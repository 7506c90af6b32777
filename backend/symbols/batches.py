"""Provider rows prepared into batches for the symbol database writer (:mod:`.writer`).

:class:`Batcher` checks one provider's rows (the checks of :mod:`.rows`) and prepares them in
batches: rows are checked as they come (a chunk at a time) and the search words of a whole
batch are found at once (:func:`_batch_words`). A batch's values are one flat list
(``Prepared``: ``ROW_VALUES`` values per row), cheaper to send to the writer process as JSON
(``orjson``) and to bind than a tuple per row; a row's key holds its name's length above
``SEQ_BITS`` and its seq below.

Owns the prepared rows' format and the checks' bookkeeping (shapes, invalid rows skipped and
logged, word counts). No SQLite, no process and no thread here: :mod:`.session` inserts the
batches, :mod:`.writer` runs the thread that fills them and sends them to the writer process.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from itertools import chain
from string import ascii_lowercase, digits
from typing import Any

import orjson

from backend.symbols.rows import (
    ROW_FIELDS,
    InvalidRow,
    check_shared,
    extra_json,
    indexed_words,
    joined_word,
    lead_token,
    name_and_label,
    search_words,
    shape_tag,
    shared_fields,
)

logger = logging.getLogger(__name__)

BATCH_ROWS = 10_000
SEQ_BITS = 40
_MAPPINGS = (dict, Mapping)
_LOGGED_INVALID_ROWS = 20
# ASCII text with only its letters (or only its digits) and line ends; spaces elsewhere.
_LETTERS_ONLY = str.maketrans({n: " " for n in range(128) if chr(n) not in ascii_lowercase + "\n"})
_DIGITS_ONLY = str.maketrans({n: " " for n in range(128) if chr(n) not in digits + "\n"})
_REQUIRED_FIELDS = len(ROW_FIELDS) - 1  # all but source_label
_NOTHING = object()
# A prepared row: key, name, name_lower, name_label, shape, words, extra; the writer adds
# id, source and nlen (the key's high bits). A batch holds its rows' values one row after
# another, in one flat list (cheaper to send and to bind than a tuple per row).
ROW_VALUES = 7
Prepared = list[int | str | None]
Shape = tuple[int, str, str, str, str]
# A batch being gathered, one list per field: key, name, name_lower, name_label, shape,
# extra, the text of the search words ("name name_label") and the lead token.
_Columns = tuple[
    list[int], list[str], list[str], list[str], list[int], list[str | None], list[str], list[str]
]


class Batcher:
    """Turns provider rows into prepared rows and shapes, in batches; may count the words.

    Rows are checked as they come (a chunk at a time); their search words (those of name and
    name_label, and the symbol's joined word, :func:`.rows.joined_word`) are found for the
    whole batch at once (:func:`_batch_words`), and each row's lead token
    (:func:`.rows.lead_token`) follows its words. A shape is checked once: a row whose shared
    fields serialize like a known shape's only has its name and name_label checked. A new
    shape takes the next seq, so shape ids and row keys never collide. ``words`` counts the
    rows that contain each word (a lead token is no word), unless ``count_words`` is false
    (the writer then counts them from the full-text index).
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
        self._columns: _Columns = ([], [], [], [], [], [], [], [])

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
        row_shapes, extras, texts, leads = c[4].append, c[5].append, c[6].append, c[7].append
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
            keys((len(lower) << SEQ_BITS) | seq)
            names(name)
            lowers(lower)
            labels(label)
            row_shapes(shape)
            extras(extra)
            joined = joined_word(name)
            texts(f"{name} {label} {joined}" if joined else f"{name} {label}")
            leads(lead_token(label))

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
        keys, names, lowers, labels, row_shapes, extras, texts, leads = self._columns
        words = [
            f"{found} {lead}" if found and lead else found or lead
            for found, lead in zip(_batch_words(texts, self.words), leads, strict=True)
        ]  # the lead token is not a word: not counted
        rows = list(zip(keys, names, lowers, labels, row_shapes, words, extras, strict=True))
        rows.sort()  # the keys are unique: only they are compared
        self._columns = ([], [], [], [], [], [], [], [])
        return shapes, list(chain.from_iterable(rows))


def _batch_words(texts: list[str], counts: Counter[str] | None) -> list[str]:
    """The indexed words of each text (:func:`.rows.indexed_words`: its search words, and
    the suffixes of a word written without spaces), space-separated; ``counts`` counts the
    texts with each.

    An ASCII batch is read whole: one copy keeps only its letters, another only its digits
    (each word is a run in one of them), and each text's words are its letter words then
    its digit words (the order does not matter to the full-text index). Others are read one
    text at a time.
    """
    if not texts:
        return []
    joined = "\n".join(texts).lower()
    if not joined.isascii() or joined.count("\n") != len(texts) - 1:
        found = [" ".join(indexed_words(text)) for text in texts]
    else:
        letters, digits = joined.translate(_LETTERS_ONLY), joined.translate(_DIGITS_ONLY)
        found = [
            " ".join(f"{a} {d}".split())
            for a, d in zip(letters.split("\n"), digits.split("\n"), strict=True)
        ]
    if counts is not None:
        counts.update(chain.from_iterable(map(set, map(str.split, found))))
    return found
