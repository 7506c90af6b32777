"""The indicator catalogue: the ``search_indicators_done`` rows (spec section 1.2) and their
search.

Owns the row shape the Tradiny front end needs (id, name, ``type: "indicator"``, categories,
columns, inputs with ``default`` lists and ``min``/``max``, outputs with ``y_axis``,
``mamode`` labels) and the ranking: the exact id or function name first, then names that
start with the query, then names that contain it as a phrase, then rows where every word of
the query occurs. Rows are built and lower-cased once, so a search is a scan of about 200
short strings. It does not own the indicators: :mod:`.registry` does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from backend.indicators.base import Indicator

MAX_RESULTS = 100
MAX_QUERY_LENGTH = 200
_MAX_TERMS = 12
# The blank query lists these first (what a user adds most), then the rest by name.
POPULAR = (
    "RSI", "MACD", "BBANDS", "EMA", "SMA", "ATR", "STOCH", "VWAP", "ADX", "OBV", "CCI",
    "STOCHRSI", "MFI", "WMA", "SAR", "SUPERTREND", "WILLR", "ROC", "MOM", "KC",
)  # fmt: skip
_ID_SAFE = re.compile(r"^[A-Za-z0-9_.]+$")


@dataclass(frozen=True)
class _Searchable:
    row: dict[str, Any]
    id: str
    short: str
    name: str
    text: str
    popularity: int


def catalogue_row(indicator_id: str, indicator: Indicator) -> dict[str, Any]:
    """The search row of one indicator (spec section 1.2)."""
    details: dict[str, Any] = {
        "categories": [category.lower() for category in indicator.categories] or ["custom"],
        "library": indicator_id.split(".", 1)[0],
        "columns": list(indicator.columns),
        "inputs": [_input_row(spec.name, spec) for spec in indicator.inputs],
        "outputs": [{"name": out.name, "y_axis": out.y_axis} for out in indicator.outputs],
    }
    for spec in indicator.inputs:
        if spec.name == "mamode" and spec.choices:
            details["mamode"] = list(spec.choices)
    return {"id": indicator_id, "name": indicator.name, "type": "indicator", "details": details}


def _input_row(name: str, spec: Any) -> dict[str, Any]:
    default = int(spec.default) if spec.integer else spec.default
    return {
        "name": name,
        "default": [default],
        "min": int(spec.min) if spec.integer else spec.min,
        "max": int(spec.max) if spec.integer else spec.max,
        "type": "int" if spec.integer else "float",
    }


def is_valid_id(indicator_id: str) -> bool:
    """Ids sit in a single-quoted ``onclick`` and become dash-joined chart ids."""
    return bool(_ID_SAFE.match(indicator_id)) and ".." not in indicator_id


class Catalogue:
    """The searchable list of every registered indicator."""

    def __init__(self, indicators: Mapping[str, Indicator]) -> None:
        popular = {name: rank for rank, name in enumerate(POPULAR)}
        self._rows: list[_Searchable] = []
        for indicator_id, indicator in indicators.items():
            row = catalogue_row(indicator_id, indicator)
            short = indicator_id.rsplit(".", 1)[-1].lower()
            text = " ".join(
                [indicator_id, indicator.name, *row["details"]["categories"]]
                + [out.name for out in indicator.outputs]
            ).lower()
            rank = popular.get(short.upper(), len(POPULAR))
            self._rows.append(
                _Searchable(row, indicator_id.lower(), short, indicator.name.lower(), text, rank)
            )
        self._default = sorted(self._rows, key=lambda s: (s.popularity, s.name, s.id))

    def __len__(self) -> int:
        return len(self._rows)

    def search(self, query: object, limit: int = MAX_RESULTS) -> list[dict[str, Any]]:
        """The best ``limit`` rows for ``query``; a non-string query counts as blank."""
        text = query.strip().lower()[:MAX_QUERY_LENGTH] if isinstance(query, str) else ""
        if not text:
            return [entry.row for entry in self._default[:limit]]
        terms = text.split()[:_MAX_TERMS]
        ranked = [
            (tier, entry.popularity, len(entry.name), entry.id, entry)
            for entry in self._rows
            if (tier := _tier(entry, text, terms)) is not None
        ]
        ranked.sort(key=lambda item: item[:4])
        return [item[4].row for item in ranked[:limit]]


def _tier(entry: _Searchable, text: str, terms: list[str]) -> int | None:
    if text in (entry.short, entry.id):
        return 0
    if entry.short.startswith(text):
        return 1
    if text in entry.name:
        return 2
    if all(term in entry.text for term in terms):
        return 3
    return None
