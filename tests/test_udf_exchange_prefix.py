"""UDF symbols in TradingView's ``EXCHANGE:NAME`` notation, where the exchange is the one
the symbol info names (``exchange``: our ``source_label``, "XNAS" for a Polygon stock), not
the provider key of our ``ticker``: users type what the chart shows (GitHub issues of UDF
servers: fluidex/dingir-exchange#122, bitnom/TradingView-UDF#5, "invalid symbol")."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.requests import Request

from backend.api import udf


def row(source: str, name: str, label: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"source": source, "name": name, "type": "candlestick"}
    if label is not None:
        found["source_label"] = label
    return found


ROWS = [
    row("polygon", "AAPL", "XNAS"),
    row("polygon", "AAPLW", "XNAS"),
    row("polygon", "IBM", "XNYS"),
    row("binance", "BTCUSDT", "Binance"),
    row("polygon", "X:BTCUSD", "crypto"),
    row("csv", "ACME"),  # no exchange named
]


class Symbols:
    """The symbol index as resolve_symbol uses it: exact details, and a search whose
    results hold the rows whose name contains the query (any case)."""

    async def details(self, source: str, name: str) -> dict[str, Any] | None:
        return next((r for r in ROWS if r["source"] == source and r["name"] == name), None)

    async def search(self, text: str, limit: int) -> list[dict[str, Any]]:
        found = [r for r in ROWS if text.casefold() in r["name"].casefold()]
        return [{"details": r} for r in found[:limit]]


async def search_symbols(text: str, limit: int, source: str | None = None) -> list[dict[str, Any]]:
    found = await Symbols().search(text, limit)
    return [r for r in found if source is None or r["details"]["source"] == source]


HUB: Any = SimpleNamespace(
    symbols=Symbols(),
    supervisor=SimpleNamespace(providers={"polygon": 1, "binance": 1}),
    search_symbols=search_symbols,
)


async def searched(query: str) -> list[str]:
    """The ``ticker`` of each ``/udf/search`` result for ``query``."""
    scope = {
        "type": "http",
        "query_string": urlencode({"query": query}).encode(),
        "headers": [],
        "app": SimpleNamespace(state=SimpleNamespace(hub=HUB)),
    }
    response = await udf.search(Request(scope), query=query)
    return [item["ticker"] for item in orjson.loads(response.body)]


async def resolved(text: str) -> tuple[str, str] | None:
    details = await udf.resolve_symbol(HUB, text)
    return None if details is None else (details["source"], details["name"])


async def test_the_exchange_the_symbol_info_names_resolves_like_the_ticker() -> None:
    assert udf.symbol_info(row("polygon", "AAPL", "XNAS"), [])["exchange"] == "XNAS"
    for text in ("XNAS:AAPL", "xnas:AAPL", "polygon:AAPL", "AAPL"):
        assert await resolved(text) == ("polygon", "AAPL"), text
    assert await resolved("XNYS:IBM") == ("polygon", "IBM")
    assert await resolved("BINANCE:BTCUSDT") == ("binance", "BTCUSDT")


async def test_an_exchange_prefix_names_no_row_of_another_exchange() -> None:
    assert await resolved("XNYS:AAPL") is None  # AAPL is listed on XNAS
    assert await resolved("XNAS:AAP") is None  # no loose match on the name
    assert await resolved("X:BTCUSD") == ("polygon", "X:BTCUSD")  # a name with a colon
    assert await resolved(":ACME") is None  # an empty prefix is no exchange
    assert await resolved("ACME") == ("csv", "ACME")


async def test_search_takes_the_exchange_the_symbol_info_names() -> None:
    """/udf/symbols resolved XNAS:AAPL, but /udf/search found nothing for it: users type what
    the chart shows."""
    assert await searched("XNAS:AAPL") == ["polygon:AAPL", "polygon:AAPLW"]
    assert await searched("xnys:AAPL") == []  # AAPL is listed on XNAS
    assert await searched("polygon:AAPL") == ["polygon:AAPL", "polygon:AAPLW"]
    assert await searched("X:BTC") == ["polygon:X:BTCUSD"]  # a name with a colon
