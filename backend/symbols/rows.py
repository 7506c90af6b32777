"""Dataset rows (DESIGN 5.4): the checks a row passes before it is stored, and search words.

Pure functions and constants shared by the writer (``populate.py``) and the reader (search):
no SQLite here.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections.abc import Mapping
from os import PathLike
from typing import Any, TypeVar

import orjson

from backend.model import intervals

logger = logging.getLogger(__name__)

T = TypeVar("T")

ROW_TYPES = ("candlestick", "line")
# The longest name a request may name (backend.wire.protocol.MAX_FIELD_CHARS, and the bus's
# and the page's limit): a longer one would be found by every search, and then refused.
MAX_NAME_LENGTH = 200


ASCII_WORD = re.compile(r"[a-z]+|[0-9]+")
_FIRST_ASCII_WORD = re.compile(r"[A-Za-z]+|[0-9]+")
#: The start of a row's lead token: the full-text token of the first search word of its label
#: ("0abitcoin" for "Bitcoin / TetherUS"), which finds the labels that start with a word. A
#: digit then a letter: no search word (letters only or digits only) nor tag ("t...") is one.
LEAD_MARK = "0a"
_WORD = re.compile(r"[^\W\d_]+|\d+")
# Letters to Python's Unicode tables that the full-text index's tokenizer (SQLite's
# unicode61, on older tables) takes for separators: New Tai Lue vowel signs (letters since
# Unicode 8) and two Vedic signs. A word is split at them as the index splits it: an
# unsplit one would be a phrase of two tokens, which an index with detail = none cannot
# match (tests/test_symbols.py finds them all again against the SQLite in use).
FTS_SEPARATORS = frozenset((*range(0x19B0, 0x19C1), 0x19C8, 0x19C9, 0x1CF2, 0x1CF3))
_SPLIT_AT_SEPARATORS = dict.fromkeys(FTS_SEPARATORS, " ")
_BAD_NAME_CHARACTER = re.compile(r"['\x00-\x1f]")
# Scripts written without spaces between words, as search words have them (decomposed:
# Hangul as its conjoining jamo): Thai, Lao, Myanmar, Khmer, Hangul, kana, bopomofo, Han.
_UNSPACED = re.compile(
    "[\u0e00-\u0eff\u1000-\u109f\u1100-\u11ff\u1780-\u17ff\u3040-\u318f"
    "\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff"
    "\U00020000-\U0003134f]"
)
# The longest such word whose suffixes are indexed (a label, not a paragraph).
MAX_UNSPACED_WORD = 64

# The fields of a dataset row that many rows repeat, stored once per shape (details order).
_SHARED_FIELDS = ("source", "type", "categories", "intervals", "outputs", "source_label")
ROW_FIELDS = frozenset((*_SHARED_FIELDS, "name", "name_label"))

# A prepared row: (key, id, source, name, name_lower, nlen, name_label, shape, words, extra).
# A prepared shape: (shape, source, details JSON, tag, words).
# A found row: (key, id, name, name_label, extra JSON, shape details JSON).


# --------------------------------------------------------------------------- search words


def search_words(text: str) -> list[str]:
    """The search words of ``text``: lower-cased runs of letters or of digits, no accents."""
    if text.isascii():
        return ASCII_WORD.findall(text.lower())
    decomposed = unicodedata.normalize("NFKD", text).translate(_SPLIT_AT_SEPARATORS)
    return _WORD.findall("".join(c for c in decomposed if not unicodedata.combining(c)).lower())


def indexed_words(text: str) -> list[str]:
    """The words ``text`` is indexed under: its search words and, for a word of a script
    written without spaces between words (Chinese, Japanese, Korean, Thai ...: the index's
    tokenizer takes a whole run for one word), each of its suffixes, so that a word inside
    it is found as a search finds words, by their start ("茅台" in "贵州茅台")."""
    words = search_words(text)
    if text.isascii():
        return words
    suffixes = [
        word[start:]
        for word in words
        if 1 < len(word) <= MAX_UNSPACED_WORD and _UNSPACED.search(word)
        for start in range(1, len(word))
    ]
    return words + suffixes if suffixes else words


def first_word(text: str) -> str:
    """The first search word of ``text``, or ""."""
    if text.isascii():
        found = _FIRST_ASCII_WORD.search(text)
        return found.group().lower() if found else ""
    words = search_words(text)
    return words[0] if words else ""


def lead_token(label: str) -> str:
    """The lead token of ``label`` (:data:`LEAD_MARK` and its first search word), or ""."""
    word = first_word(label)
    return LEAD_MARK + word if word else ""


def joined_word(name: str) -> str:
    """The search words of a symbol less its market prefix (``X:``) written together, when
    there are several of one kind: ``EUR/USD`` -> ``eurusd``, ``BRK.B`` -> ``brkb``; else ""
    (``BTCUSDT`` is one word already, ``O:SPY251219C00450000`` has letters and digits). A
    row's words include it, so the symbol is found as written without its separators."""
    core = name.rpartition(":")[2]
    if core.isalnum():
        return ""
    words = search_words(core)
    joined = "".join(words)
    return joined if len(words) > 1 and (joined.isalpha() or joined.isdigit()) else ""


def shape_tag(source: str, words: str) -> str:
    """The full-text token standing for a source and the words of a shape."""
    digest = hashlib.blake2b(f"{source}\0{words}".encode(), digest_size=8).hexdigest()
    # Letters and digits: a search word has only one kind, so it never equals a tag.
    return "t" + digest if not digest.isalpha() else "t0" + digest


def id_range(source: str) -> tuple[str, str]:
    """Bounds of the ids ``source-...`` (other sources may fall inside: filter on source)."""
    return source + "-", source + "."


# --------------------------------------------------------------------------- row checks


class InvalidRow(ValueError):
    """A dataset row that cannot be stored; the message says why."""


def shared_fields(row: Mapping[str, Any]) -> dict[str, Any]:
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


def check_shared(shared: dict[str, Any], source: str) -> dict[str, Any]:
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
        if _BAD_NAME_CHARACTER.search(name) is not None:
            raise InvalidRow(f"name {name!r} contains a quote or a control character")
        if not _utf8(name):
            raise InvalidRow(
                f"name {name!r} holds text UTF-8 cannot (a lone surrogate: a file name that"
                " is not UTF-8?)"
            )
        return name
    if isinstance(name, str) and len(name) > MAX_NAME_LENGTH:
        raise InvalidRow(
            f"name is longer than {MAX_NAME_LENGTH} characters, the most a request may name"
        )
    raise InvalidRow(f"name must be a non-empty string, not {name!r}")


def name_and_label(row: Mapping[str, Any]) -> tuple[str, str]:
    """The row's checked name and name_label."""
    name, label = row.get("name"), row.get("name_label")
    if (
        type(name) is str
        and type(label) is str
        and 0 < len(name) <= MAX_NAME_LENGTH
        and name.strip()
        and _BAD_NAME_CHARACTER.search(name) is None
        and name.isascii()
        and label.isascii()
    ):
        return name, label
    return _check_name(name), _check_label(label)


def _check_label(label: object) -> str:
    """The label, with "?" for what UTF-8 cannot hold (a lone surrogate; SQLite refuses it)."""
    if not isinstance(label, str):
        raise InvalidRow(f"name_label must be a string, not {label!r}")
    return label if _utf8(label) else label.encode("utf-8", "replace").decode("utf-8")


def _utf8(text: str) -> bool:
    """Whether UTF-8 can hold ``text`` (no lone surrogate)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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


def extra_json(row: Mapping[str, Any]) -> str | None:
    """The row's keys beyond DESIGN 5.4 as a JSON object, or ``None`` if there are none."""
    extra = {key: value for key, value in row.items() if key not in ROW_FIELDS}
    return orjson.dumps(extra, default=_json_default).decode() if extra else None
