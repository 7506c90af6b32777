"""Symbol search ranks what a trader means first, on realistic symbols.

The rows are those the providers make: Binance's from ``exchangeInfo`` entries (labelled by
the Binance provider's own ``dataset_row``, "Bitcoin / TetherUS") in the exchange's listing
order (the old BTC-quoted altcoins first, as on the real exchange), Polygon's from ticker
objects (``Apple Inc.``, ``X:BTCUSD`` "Bitcoin - United States dollar"), and forex pairs
written three ways (``EUR/USD``, ``EURUSD``). The index is read directly, then through the
real server (``search_data``, ``/udf/search``, the OpenBB symbol dropdown).
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from backend.data_providers.binance.parse import dataset_row as binance_row
from backend.data_providers.polygon.rest import dataset_row as polygon_row
from backend.symbols import index as symbol_index
from backend.symbols.index import SymbolIndex
from backend.symbols.rows import search_words
from backend.symbols.writer import replace_provider_rows
from tests.fakes.binance import FakeBinance, SymbolSpec
from tests.harness import ServerProcess, WsClient, base_env, populate

# The BTC-quoted altcoins Binance listed first (ETHBTC is the first symbol of its
# exchangeInfo), then the USDT pairs and the later ones.
OLD_ALTS = "ETH LTC BNB NEO QTUM EOS SNT BNT GAS OMG ZRX KNC FUN LINK XVG MTL ETC ZEC ADA XRP"
LATER = [
    ("BTCUSDT", "BTC", "USDT"), ("ETHUSDT", "ETH", "USDT"), ("BNBUSDT", "BNB", "USDT"),
    ("BCHUSDT", "BCH", "USDT"), ("BCHBTC", "BCH", "BTC"), ("LTCUSDT", "LTC", "USDT"),
    ("BTCTUSD", "BTC", "TUSD"), ("BTCUSDC", "BTC", "USDC"), ("BTCEUR", "BTC", "EUR"),
    ("ETHEUR", "ETH", "EUR"), ("BTCTRY", "BTC", "TRY"), ("BTCBRL", "BTC", "BRL"),
    ("WBTCBTC", "WBTC", "BTC"), ("WBTCUSDT", "WBTC", "USDT"), ("BTCDOMUSDT", "BTCDOM", "USDT"),
    ("BTTCUSDT", "BTTC", "USDT"), ("BTCFDUSD", "BTC", "FDUSD"), ("ETHFDUSD", "ETH", "FDUSD"),
    ("SOLUSDT", "SOL", "USDT"), ("SOLBTC", "SOL", "BTC"), ("ETHFIUSDT", "ETHFI", "USDT"),
    ("ETHFIBTC", "ETHFI", "BTC"), ("EURUSDT", "EUR", "USDT"), ("USDCUSDT", "USDC", "USDT"),
]  # fmt: skip
BINANCE = [(f"{alt}BTC", alt, "BTC") for alt in OLD_ALTS.split()] + LATER

POLYGON = [
    ("stocks", "AAPL", "Apple Inc.", "XNAS"),
    ("stocks", "AAPB", "GraniteShares 2x Long AAPL Daily ETF", "XNAS"),
    ("stocks", "AAPD", "Direxion Daily AAPL Bear 1X Shares", "XNAS"),
    ("stocks", "APLE", "Apple Hospitality REIT, Inc.", "XNYS"),
    ("stocks", "APP", "AppLovin Corporation", "XNAS"),
    ("stocks", "BITO", "ProShares Bitcoin Strategy ETF", "ARCX"),
    ("stocks", "BTCS", "BTCS Inc.", "XNAS"),
    ("stocks", "BRK.B", "Berkshire Hathaway Inc. Class B", "XNYS"),
    ("crypto", "X:BTCUSD", "Bitcoin - United States dollar", None),
    ("crypto", "X:ETHUSD", "Ethereum - United States dollar", None),
    ("fx", "C:EURUSD", "Euro - United States Dollar", None),
    ("fx", "C:GBPUSD", "British Pound - United States Dollar", None),
]
CANDLE = [{"name": n, "y_axis": "price"} for n in ("open", "high", "low", "close")] + [
    {"name": "volume", "y_axis": "volume"}
]
FOREX = [
    ("EUR/USD", "Euro / US Dollar"),
    ("EURUSD", "Euro vs US Dollar"),
    ("GBP/USD", "British Pound / US Dollar"),
    ("USD/JPY", "US Dollar / Japanese Yen"),
]


def binance_rows(listing: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    infos = [
        {"symbol": s, "baseAsset": b, "quoteAsset": q, "status": "TRADING"} for s, b, q in listing
    ]
    return [row for row in map(binance_row, infos) if row is not None]


def polygon_rows() -> list[dict[str, Any]]:
    rows = []
    for market, ticker, name, exchange in POLYGON:
        found = SimpleNamespace(ticker=ticker, name=name, primary_exchange=exchange)
        rows.append(polygon_row("polygon", market, found))
    return [row for row in rows if row is not None]


def forex_rows() -> list[dict[str, Any]]:
    return [
        {"source": "fx", "name": name, "name_label": label, "type": "candlestick",
         "categories": ["Forex"], "intervals": ["1m", "1h", "1d"], "outputs": CANDLE}
        for name, label in FOREX
    ]  # fmt: skip


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ranking") / "symbols.sqlite3"
    replace_provider_rows(path, "binance", binance_rows(BINANCE))
    replace_provider_rows(path, "polygon", polygon_rows())
    replace_provider_rows(path, "fx", forex_rows())
    return path


@pytest.fixture
async def index(db: Path) -> AsyncIterator[SymbolIndex]:
    opened = await SymbolIndex.open(db)
    yield opened
    await opened.close()


async def names(index: SymbolIndex, query: str, source: str | None = None) -> list[str]:
    return [row["name"] for row in await index.search(query, 100, source)]


def before(found: list[str], first: str, then: str) -> bool:
    return first in found and then in found and found.index(first) < found.index(then)


# ----------------------------------------------------------------------------- ranking


async def test_bitcoin_finds_the_bitcoin_pairs_before_the_pairs_quoted_in_bitcoin(
    index: SymbolIndex,
) -> None:
    found = await names(index, "bitcoin", "binance")
    assert found[0] == "BTCUSDT"
    bitcoin = [
        row["name"] for row in binance_rows(BINANCE) if row["name_label"].startswith("Bitcoin /")
    ]
    assert sorted(found[: len(bitcoin)]) == sorted(bitcoin)  # "Bitcoin / ..." first
    assert found[: len(bitcoin)] == [
        "BTCUSDT",
        "BTCUSDC",
        "BTCFDUSD",
        "BTCEUR",
        "BTCTUSD",
        "BTCTRY",
        "BTCBRL",
    ]
    assert before(found, "BTCBRL", "BCHUSDT")  # "Bitcoin Cash" after "Bitcoin"
    assert before(found, "BCHBTC", "ETHBTC")  # "Ethereum / Bitcoin" last
    assert (await names(index, "bitc", "binance"))[:3] == ["BTCUSDT", "BTCUSDC", "BTCFDUSD"]
    everywhere = await names(index, "Bitcoin")
    assert everywhere[:2] == ["X:BTCUSD", "BTCUSDT"]  # the US dollar first, then tether
    assert before(everywhere, "BCHUSDT", "BITO") and before(everywhere, "BITO", "ETHBTC")


@pytest.mark.parametrize(
    ("query", "first"),
    [
        ("btc", ["BTCUSDT", "BTCUSDC", "BTCFDUSD", "BTCEUR", "BTCTUSD"]),
        ("BTC", ["BTCUSDT", "BTCUSDC", "BTCFDUSD", "BTCEUR", "BTCTUSD"]),
        ("BTCUSDT", ["BTCUSDT"]),
        ("btcusdt", ["BTCUSDT"]),
        ("eth", ["ETHUSDT", "ETHFDUSD", "ETHBTC", "ETHEUR", "ETHFIBTC"]),
        ("ethereum", ["ETHUSDT", "ETHFDUSD", "ETHBTC", "ETHEUR"]),
        ("sol", ["SOLUSDT", "SOLBTC"]),
        ("wbtc", ["WBTCUSDT", "WBTCBTC"]),
    ],
)
async def test_a_base_asset_lists_its_pairs_by_quote_popularity(
    index: SymbolIndex, query: str, first: list[str]
) -> None:
    assert (await names(index, query, "binance"))[: len(first)] == first


async def test_symbols_that_only_start_with_the_base_come_after_its_pairs(
    index: SymbolIndex,
) -> None:
    found = await names(index, "btc", "binance")
    assert before(found, "BTCBRL", "BTCDOMUSDT")
    assert before(found, "BTCDOMUSDT", "WBTCBTC")  # a symbol prefix before a word prefix
    found = await names(index, "btc")
    assert found[:2] == ["X:BTCUSD", "BTCUSDT"]  # Polygon's X: prefix is not the symbol
    assert before(found, "BTCBRL", "BTCS")


@pytest.mark.parametrize(
    ("query", "first"),
    [
        ("apple", ["AAPL", "APLE"]),
        ("Apple Inc", ["AAPL"]),
        ("aapl", ["AAPL", "AAPB", "AAPD"]),
        ("AAPL", ["AAPL", "AAPB", "AAPD"]),
        ("app", ["APP", "AAPL", "APLE"]),
    ],
)
async def test_stocks_rank_the_ticker_then_the_company_name(
    index: SymbolIndex, query: str, first: list[str]
) -> None:
    assert (await names(index, query, "polygon"))[: len(first)] == first


@pytest.mark.parametrize(
    ("query", "first"),
    [
        ("EUR/USD", ["EUR/USD"]),
        ("eur/usd", ["EUR/USD"]),
        ("euro", ["EUR/USD", "C:EURUSD", "EURUSDT"]),
    ],
)
async def test_forex_pairs_rank_the_pair_written_as_typed_first(
    index: SymbolIndex, query: str, first: list[str]
) -> None:
    assert (await names(index, query))[: len(first)] == first


@pytest.mark.parametrize(
    ("query", "source", "first"),
    [
        ("btc usdt", "binance", ["BTCUSDT"]),
        ("btc/usdt", "binance", ["BTCUSDT"]),
        ("BTC-USDT", "binance", ["BTCUSDT"]),
        ("btc_usdt", "binance", ["BTCUSDT"]),
        ("eth btc", "binance", ["ETHBTC"]),
        ("eth/bt", "binance", ["ETHBTC"]),
        ("eur usd", None, ["EURUSD", "EUR/USD", "C:EURUSD"]),
        ("EUR USD", None, ["EURUSD", "EUR/USD", "C:EURUSD"]),
        ("btc/usd", None, ["X:BTCUSD"]),
        ("gbp-usd", None, ["GBP/USD", "C:GBPUSD"]),
    ],
)
async def test_a_pair_written_with_a_separator_finds_the_pair_first(
    index: SymbolIndex, query: str, source: str | None, first: list[str]
) -> None:
    assert (await names(index, query, source))[: len(first)] == first


@pytest.mark.parametrize(
    ("query", "first"),
    [
        ("eurusd", ["EURUSD", "EUR/USD", "C:EURUSD"]),
        ("EURUSD", ["EURUSD", "EUR/USD", "C:EURUSD"]),
        ("gbpusd", ["GBP/USD", "C:GBPUSD"]),
        ("usdjpy", ["USD/JPY"]),
        ("brkb", ["BRK.B"]),
    ],
)
async def test_a_symbol_written_with_a_separator_is_found_without_it(
    index: SymbolIndex, query: str, first: list[str]
) -> None:
    assert (await names(index, query))[: len(first)] == first
    found = await names(index, "eurus")  # a prefix: as typed first, EUR/USD among them
    assert found[0] == "EURUSD" and "EUR/USD" in found[:5]


def option_chain_rows() -> list[dict[str, Any]]:
    """Polygon option contracts as populate stores them: a few underlyings, expiries and
    the strikes from 400 to 700 by 5, calls and puts."""
    rows = []
    for underlying in ("SPY", "QQQ", "SPXW", "IWM"):
        for expiry in ("260116", "260320", "261218"):
            for strike in range(400, 705, 5):
                for kind in "CP":
                    ticker = f"O:{underlying}{expiry}{kind}{strike * 1000:08d}"
                    rows.append(polygon_row("polygon", "options", SimpleNamespace(ticker=ticker)))
    return [row for row in rows if row is not None]


async def test_an_option_typed_without_its_market_prefix_is_found_at_every_keystroke(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``SPY261218C00600000`` as brokers and TradingView write it, typed a key at a time:
    with more symbols than the substring scan reads (options are millions), ``SPY261218C0``
    to ``SPY261218C0060000`` found nothing or none of the contracts typed (the last word, a
    strike's first digits, matched none of the most frequent words it starts), though
    ``O:SPY261218C0`` found them all in symbol order."""
    path = tmp_path / "options.sqlite3"
    chain = option_chain_rows()
    replace_provider_rows(path, "polygon", chain)
    monkeypatch.setattr(symbol_index, "_CONTAINED_MAX_ROWS", len(chain) - 1)  # not scanned
    wanted = "SPY261218C00600000"
    index = await SymbolIndex.open(path)
    try:
        for end in range(len("SPY261"), len(wanted) + 1):
            typed = wanted[:end]
            found = [row["name"] for row in await index.search(typed, 5)]
            assert found, typed
            assert all(name.startswith(f"O:{typed}") for name in found), (typed, found)
            assert found == [row["name"] for row in await index.search(f"O:{typed}", 5)]
    finally:
        await index.close()
    assert found[0] == f"O:{wanted}"


def binance_sized_listing() -> list[tuple[str, str, str]]:
    """As many BTC-quoted pairs as Binance lists (about 300), most of them 6 characters and
    listed before BTCUSDT: more than a search ranks in the full-text order."""
    alts = [f"{a}{b}{c}" for a in "KQVXZ" for b in "KQVXZ" for c in "KQVXZ" + "ABCDEFGHIJ"]
    return [(f"{alt}BTC", alt, "BTC") for alt in alts] + BINANCE


async def test_a_label_that_starts_with_the_query_is_ranked_beyond_the_shortest_matches(
    tmp_path: Path,
) -> None:
    path = tmp_path / "binance.sqlite3"
    listing = binance_sized_listing()
    assert sum(quote == "BTC" for _, _, quote in listing) > 300
    replace_provider_rows(path, "binance", binance_rows(listing))
    index = await SymbolIndex.open(path)
    try:
        assert (await names(index, "bitcoin"))[:3] == ["BTCUSDT", "BTCUSDC", "BTCFDUSD"]
        assert (await names(index, "Bitc"))[:3] == ["BTCUSDT", "BTCUSDC", "BTCFDUSD"]
        assert (await names(index, "bitcoin tether"))[:1] == ["BTCUSDT"]
    finally:
        await index.close()


# ----------------------------------------------------------------------------- properties

ALL_NAMES = sorted({row["name"] for row in binance_rows(BINANCE) + polygon_rows() + forex_rows()})
PROPERTIES = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


def search_now(db: Path, query: str, limit: int = 100) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        index = await SymbolIndex.open(db)
        try:
            return await index.search(query, limit)
        finally:
            await index.close()

    return asyncio.run(run())


def details_now(db: Path, source: str, name: str) -> dict[str, Any] | None:
    async def run() -> dict[str, Any] | None:
        index = await SymbolIndex.open(db)
        try:
            return await index.details(source, name)
        finally:
            await index.close()

    return asyncio.run(run())


@PROPERTIES
@given(name=st.sampled_from(ALL_NAMES), flips=st.lists(st.booleans(), min_size=12, max_size=12))
def test_an_exact_symbol_in_any_case_is_always_the_first_result(
    db: Path, name: str, flips: list[bool]
) -> None:
    typed = "".join(c.swapcase() if flip else c for c, flip in zip(name, flips * 3, strict=False))
    found = search_now(db, typed)
    assert found and found[0]["name"].lower() == name.lower()
    same_case = [row["name"] for row in found if row["name"] == typed]
    if same_case:
        assert found[0]["name"] == typed


@PROPERTIES
@given(prefix_of=st.sampled_from(ALL_NAMES), cut=st.integers(1, 6))
@example(prefix_of="EUR/USD", cut=5)  # EUR/USD before EURUSD
def test_symbols_that_start_with_the_text_come_before_those_that_do_not(
    db: Path, prefix_of: str, cut: int
) -> None:
    text = prefix_of[:cut]
    found = [row["name"].lower() for row in search_now(db, text)]
    joined = "".join(search_words(text))  # the same symbol written without separators too
    starts = [
        name.startswith(text.lower())
        or name.rpartition(":")[2].startswith(text.lower())
        or "".join(search_words(name.rpartition(":")[2])) == joined != ""
        for name in found
    ]
    assert starts == sorted(starts, reverse=True), (text, found)


PREFIXES = st.sampled_from(ALL_NAMES).flatmap(lambda name: st.sampled_from(
    [name[:n] for n in range(1, len(name) + 1)]
))  # fmt: skip
WORDS = st.sampled_from(
    ["bitcoin", "bitc", "btc", "eth", "ethereum", "euro", "apple", "usd", "crypto", "us dollar"]
)


@PROPERTIES
@given(query=st.one_of(PREFIXES, WORDS), limit=st.integers(1, 100))
def test_the_first_results_do_not_depend_on_how_many_are_asked_for(
    db: Path, query: str, limit: int
) -> None:
    found = [row["id"] for row in search_now(db, query, limit)]
    assert found == [row["id"] for row in search_now(db, query, 100)][:limit]


@PROPERTIES
@given(text=st.text(max_size=300), limit=st.integers(-5, 150))
@example(text="btc\ud800", limit=10)  # a lone surrogate: no UTF-8 for SQLite
def test_search_answers_any_text_with_at_most_limit_distinct_rows(
    db: Path, text: str, limit: int
) -> None:
    found = search_now(db, text, limit)
    assert len(found) <= max(limit, 0)
    assert len({row["id"] for row in found}) == len(found)
    if text == "btc\ud800":
        assert found and found[0]["name"] == "X:BTCUSD"  # as "btc?" would
    details = details_now(db, "binance", text)  # nor do the details of a symbol
    assert details is None or details["name"] == text


# ----------------------------------------------------------------------------- end to end


def spec(symbol: str, base: str, quote: str) -> SymbolSpec:
    return SymbolSpec(symbol, base, quote, "1", tick_size="0.00000001")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("ranking-server")
    with FakeBinance([spec(*listed) for listed in BINANCE], push_interval=0.5) as fake:
        env = base_env(
            tmp,
            **fake.settings,
        )
        result = populate(env)
        assert result.returncode == 0, result.stderr
        with ServerProcess(env, tmp / "server.log") as running:
            yield running


async def test_the_server_answers_every_search_surface_in_this_order(
    server: ServerProcess, client: WsClient
) -> None:
    for text in ("bitcoin", "btc", "BTC"):
        mark = len(client.messages)
        await client.send({"type": "search_data", "search": text})
        reply = await client.wait_for("search_data_done", after=mark)
        assert [row["name"] for row in reply["results"][:2]] == ["BTCUSDT", "BTCUSDC"], text
    query = urllib.parse.urlencode({"query": "BITCOIN", "limit": "3"})
    udf = await asyncio.to_thread(server.get, f"/udf/search?{query}")
    assert [item["symbol"] for item in udf] == ["BTCUSDT", "BTCUSDC", "BTCFDUSD"]
    options = await asyncio.to_thread(server.get, "/openbb/symbol_options?query=bitcoin&limit=2")
    assert [option["value"] for option in options] == ["binance:BTCUSDT", "binance:BTCUSDC"]
    rest = await asyncio.to_thread(server.get, "/api/symbols?q=eth&limit=3")
    assert [row["name"] for row in rest["results"]] == ["ETHUSDT", "ETHFDUSD", "ETHBTC"]
