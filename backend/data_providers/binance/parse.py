"""Binance payloads as Candlewire values: pure functions, no I/O, no clock.

Owns the shapes of what Binance sends: REST kline rows and kline stream events become bars
(UTC open time in seconds, floats), combined-stream frames become typed messages, an
``exchangeInfo`` symbol becomes a dataset row (DESIGN 5.4) with readable asset names and the
price precision of its tick size. It does not own sockets, REST calls or rate limits
(:mod:`backend.data_providers.binance.stream`, :mod:`backend.data_providers.binance.rest`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from backend.model import intervals
from backend.model.bars import Bar, to_number
from backend.model.intervals import parse_query_time

__all__ = [
    "ASSET_NAMES",
    "ControlReply",
    "KlineUpdate",
    "ServerShutdown",
    "StreamData",
    "asset_name",
    "dataset_row",
    "kline_update",
    "not_trading",
    "parse_query_time",
    "parse_stream_name",
    "price_precision",
    "rest_base",
    "row_to_bar",
    "rows_to_bars",
    "stream_base",
    "stream_message",
    "stream_name",
]

SOURCE_LABEL = "Binance"
CANDLE_OUTPUTS: tuple[dict[str, str], ...] = (
    {"name": "open", "y_axis": "price"},
    {"name": "high", "y_axis": "price"},
    {"name": "low", "y_axis": "price"},
    {"name": "close", "y_axis": "price"},
    {"name": "volume", "y_axis": "volume"},
)

#: Readable names of common assets, for ``name_label`` (no extra web call). Others keep their
#: ticker.
ASSET_NAMES: dict[str, str] = {
    "BTC": "Bitcoin", "ETH": "Ethereum", "USDT": "TetherUS", "BNB": "BNB", "USDC": "USD Coin",
    "FDUSD": "First Digital USD", "TUSD": "TrueUSD", "BUSD": "BUSD", "DAI": "Dai",
    "USDP": "Pax Dollar", "XRP": "XRP", "SOL": "Solana", "ADA": "Cardano", "DOGE": "Dogecoin",
    "TRX": "TRON", "DOT": "Polkadot", "MATIC": "Polygon", "POL": "Polygon Ecosystem Token",
    "LTC": "Litecoin", "BCH": "Bitcoin Cash", "LINK": "Chainlink", "AVAX": "Avalanche",
    "XLM": "Stellar", "ATOM": "Cosmos", "ETC": "Ethereum Classic", "UNI": "Uniswap",
    "SHIB": "Shiba Inu", "TON": "Toncoin", "NEAR": "NEAR Protocol", "APT": "Aptos",
    "ARB": "Arbitrum", "OP": "Optimism", "FIL": "Filecoin", "ICP": "Internet Computer",
    "HBAR": "Hedera", "VET": "VeChain", "AAVE": "Aave", "SUI": "Sui", "PEPE": "Pepe",
    "WBTC": "Wrapped Bitcoin", "LUNA": "Terra", "ALGO": "Algorand", "EOS": "EOS",
    "XTZ": "Tezos", "SAND": "The Sandbox", "MANA": "Decentraland", "AXS": "Axie Infinity",
    "FTM": "Fantom", "INJ": "Injective", "RENDER": "Render", "GRT": "The Graph",
    "MKR": "Maker", "CRV": "Curve DAO Token", "LDO": "Lido DAO", "PAXG": "PAX Gold",
    "WLD": "Worldcoin", "SEI": "Sei", "TIA": "Celestia", "JUP": "Jupiter", "FET": "Fetch.ai",
    "STX": "Stacks", "IMX": "Immutable", "BONK": "Bonk", "FLOKI": "FLOKI", "ENA": "Ethena",
    "ZEC": "Zcash", "DASH": "Dash", "NEO": "NEO", "IOTA": "IOTA", "THETA": "Theta Network",
    "CAKE": "PancakeSwap", "COMP": "Compound", "SNX": "Synthetix", "CHZ": "Chiliz",
    "ENS": "Ethereum Name Service", "APE": "ApeCoin", "GALA": "Gala", "EGLD": "MultiversX",
    "RUNE": "THORChain", "DYDX": "dYdX", "EUR": "Euro", "GBP": "British Pound",
    "TRY": "Turkish Lira", "BRL": "Brazilian Real", "JPY": "Japanese Yen",
    "AUD": "Australian Dollar", "ZAR": "South African Rand", "PLN": "Polish Zloty",
    "ARS": "Argentine Peso", "MXN": "Mexican Peso", "UAH": "Ukrainian Hryvnia",
}  # fmt: skip


# ---------------------------------------------------------------------------- base URLs


def rest_base(url: str) -> str:
    """The REST base python-binance appends ``/v3/klines`` to, from ``BINANCE_API_URL``.

    Our default names the ``/api`` path (``https://api.binance.com/api``, python-binance's
    own form); Binance's documents name the host alone as the base endpoint
    (``https://api.binance.com``) and the endpoints as ``/api/v3/...``. Either is taken:
    a URL without a path gets ``/api``, one ending in ``/api/v3`` loses the ``/v3``.
    Any other path (a relay's prefix) is kept as it is."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    if not path:
        path = "/api"
    elif path.endswith("/api/v3"):
        path = path.removesuffix("/v3")
    return urlunsplit(parts._replace(path=path))


def stream_base(url: str) -> str:
    """The base of the stream URLs, from ``BINANCE_STREAM_URL``, without a trailing slash.

    Our default is the host (``wss://stream.binance.com:9443/``) and ``/stream`` is appended
    to it; Binance's documents show streams at ``/ws/...`` and ``/stream?streams=...``, so a
    URL that ends in ``/ws`` or ``/stream`` (a stream URL, not a base) loses that part:
    ``.../stream/stream`` is no Binance endpoint."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    for suffix in ("/ws", "/stream"):
        if path.endswith(suffix):
            path = path.removesuffix(suffix)
            break
    return urlunsplit(parts._replace(path=path, query="", fragment="")).rstrip("/")


# ---------------------------------------------------------------------------- symbols


def asset_name(asset: str) -> str:
    """The readable name of an asset, or the ticker itself when it is not in the table."""
    return ASSET_NAMES.get(asset, asset)


def price_precision(tick_size: object) -> int | None:
    """Decimals of a ``PRICE_FILTER`` tick size: ``"0.01000000"`` -> 2, ``"1.0"`` -> 0."""
    try:
        tick = Decimal(str(tick_size)).normalize()
    except InvalidOperation:
        return None
    if not tick.is_finite() or tick <= 0:
        return None
    exponent = tick.as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else None


def not_trading(info: Mapping[str, Any] | None) -> str | None:
    """Why an ``exchangeInfo`` symbol (``None``: absent) does not trade on spot now, or
    ``None`` if it does."""
    if info is None:
        return "no longer in exchangeInfo"
    if info.get("status") != "TRADING":
        return f"status {info.get('status')}"
    if info.get("isSpotTradingAllowed") is False:
        return "no spot trading"
    return None


def dataset_row(info: Mapping[str, Any], source: str = "binance") -> dict[str, Any] | None:
    """The dataset row of one ``exchangeInfo`` symbol; ``None`` unless it trades on spot."""
    if not_trading(info) is not None:
        return None
    symbol, base, quote = info.get("symbol"), info.get("baseAsset"), info.get("quoteAsset")
    if not (isinstance(symbol, str) and isinstance(base, str) and isinstance(quote, str)):
        return None
    row: dict[str, Any] = {
        "source": source,
        "name": symbol,
        "name_label": f"{asset_name(base)} / {asset_name(quote)}",
        "source_label": SOURCE_LABEL,
        "type": "candlestick",
        "categories": ["Crypto", quote],
        "intervals": list(intervals.INTERVALS),
        "outputs": [dict(output) for output in CANDLE_OUTPUTS],
        "base_asset": base,
        "quote_asset": quote,
    }
    precision = price_precision(_filter(info, "PRICE_FILTER").get("tickSize"))
    if precision is not None:
        row["price_precision"] = precision
    return row


def _filter(info: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    for item in info.get("filters") or ():
        if isinstance(item, Mapping) and item.get("filterType") == kind:
            return item
    return {}


# ---------------------------------------------------------------------------- klines


def row_to_bar(row: Sequence[Any]) -> Bar:
    """A REST kline row ``[openTime, "o", "h", "l", "c", "v", closeTime, ...]`` as a bar."""
    return (
        int(row[0]) // 1000,
        to_number(row[1]),
        to_number(row[2]),
        to_number(row[3]),
        to_number(row[4]),
        to_number(row[5]),
    )


def rows_to_bars(rows: Sequence[Sequence[Any]], start: int, end: int | None) -> list[Bar]:
    """The bars of ``rows`` whose open time (UTC seconds) is in ``[start, end]``, in order."""
    bars = (row_to_bar(row) for row in rows)
    return [bar for bar in bars if bar[0] >= start and (end is None or bar[0] <= end)]


@dataclass(frozen=True, slots=True)
class KlineUpdate:
    """One kline event: the bar of ``(symbol, interval)``, whether it has closed, and the
    event's time at Binance (``E``, in ms; 0 when it has none)."""

    symbol: str
    interval: str
    bar: Bar
    final: bool
    event_ms: int = 0


def kline_update(event: Mapping[str, Any]) -> KlineUpdate | None:
    """The update carried by a ``kline`` event payload; ``None`` for other events."""
    k = event.get("k")
    if event.get("e") != "kline" or not isinstance(k, Mapping):
        return None
    try:
        bar: Bar = (
            int(k["t"]) // 1000,
            to_number(k["o"]),
            to_number(k["h"]),
            to_number(k["l"]),
            to_number(k["c"]),
            to_number(k["v"]),
        )
        at = event.get("E")
        event_ms = at if isinstance(at, int) and not isinstance(at, bool) else 0
        return KlineUpdate(str(k["s"]), str(k["i"]), bar, k.get("x") is True, event_ms)
    except (KeyError, TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------- stream frames


@dataclass(frozen=True, slots=True)
class StreamData:
    """An event of a combined stream: ``{"stream": name, "data": payload}``."""

    stream: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ControlReply:
    """The answer to a SUBSCRIBE/UNSUBSCRIBE frame; ``error`` is set when it failed."""

    id: object
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ServerShutdown:
    """Binance's warning that the connection will close soon: reconnect."""

    at_ms: int | None


StreamMessage = StreamData | ControlReply | ServerShutdown


def stream_message(message: object) -> StreamMessage | None:
    """Classify one decoded JSON frame of a combined stream; ``None`` if unknown."""
    if not isinstance(message, Mapping):
        return None
    data = message.get("data")
    payload = data if isinstance(data, Mapping) else message
    if payload.get("e") == "serverShutdown":
        at = payload.get("E")
        return ServerShutdown(at if isinstance(at, int) else None)
    if isinstance(data, Mapping) and isinstance(message.get("stream"), str):
        return StreamData(message["stream"], data)
    if "result" in message and "id" in message:
        return ControlReply(message["id"])
    error = message.get("error")
    if isinstance(error, Mapping):  # {"error": {"code": 2, "msg": "Invalid request"}, "id": 1}
        return ControlReply(message.get("id"), f"{error.get('code')} {error.get('msg')}")
    if "code" in message:  # the flat form of the docs' error table
        return ControlReply(message.get("id"), f"{message.get('code')} {message.get('msg')}")
    kline = payload.get("k")
    if payload.get("e") == "kline" and isinstance(kline, Mapping):
        # a kline event without the combined stream's wrapper (a raw /ws stream, a relay)
        symbol, interval = kline.get("s"), kline.get("i")
        if isinstance(symbol, str) and isinstance(interval, str):
            return StreamData(stream_name(symbol, interval), payload)
    return None


def stream_name(symbol: str, interval: str) -> str:
    """The kline stream of a key: ``("BTCUSDT", "1m")`` -> ``"btcusdt@kline_1m"``."""
    return f"{symbol.lower()}@kline_{interval}"


def parse_stream_name(name: str) -> tuple[str, str] | None:
    """The key of a kline stream name (the inverse of :func:`stream_name`)."""
    symbol, sep, interval = name.partition("@kline_")
    if not sep or not symbol or not intervals.is_interval(interval):
        return None
    return symbol.upper(), interval
