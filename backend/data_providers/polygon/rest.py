"""Polygon REST through ``polygon-api-client``: tickers, option contracts, aggregates, and
error translation.

Owns one ``RESTClient`` per provider process (its urllib3 pool is thread-safe, so history
threads and seed workers share it) and the edge where vendor exceptions become Candlewire
errors, chained with ``from``: a rejected key is :class:`AuthFailed`, a 429 is
:class:`RateLimited` (with ``Retry-After``), anything else that fails is
:class:`ProviderUnavailable`. Also turns a ticker (or an option contract) into its dataset
row. Owns no sockets.

Polygon lists the tickers of stocks, crypto, fx and indices with ``/v3/reference/tickers``
(``market`` takes no ``options``); option contracts come from
``/v3/reference/options/contracts``, a million and more of them, 1,000 a page.

The client's own pool sends no timeouts and would sleep out any ``Retry-After`` inside a
request; it is replaced by one with timeouts whose retries give up (as :class:`RateLimited`)
when the server asks to wait longer than :data:`MAX_INLINE_WAIT` seconds, and at once on a
429. Pages are requested one at a time here (the client library's page iterators end for
good on an error): a page answered 429 is asked again once :class:`.pace.Pace` allows, so
populate finishes on a plan of 5 requests a minute and history waits its turn within its
deadline.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Self, cast
from urllib.parse import urlsplit

import certifi
import urllib3
from polygon import RESTClient
from polygon.exceptions import AuthError, BadResponse
from polygon.rest.models import Agg, OptionsContract, Ticker
from urllib3.connectionpool import ConnectionPool
from urllib3.exceptions import HTTPError, MaxRetryError
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

from backend.data_providers.polygon.bars import CATEGORIES, Market, agg_bar
from backend.data_providers.polygon.pace import Pace
from backend.errors import AuthFailed, ProviderUnavailable, RateLimited, UnknownSymbol
from backend.model.bars import Bar
from backend.model.intervals import INTERVALS

logger = logging.getLogger(__name__)

PAGE_LIMIT = 1000  # tickers or option contracts per page, Polygon's maximum
AGGS_LIMIT = 50_000  # base aggregates per page, Polygon's maximum
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0
RETRIES = 3
MAX_INLINE_WAIT = 2.0  # seconds of Retry-After still waited inside a request
POOL_SIZE = 8
PAGE_PATIENCE = 600.0  # seconds a page of tickers may wait out 429s before populate fails
OUTPUTS = [
    {"name": name, "y_axis": "volume" if name == "volume" else "price"}
    for name in ("open", "high", "low", "close", "volume")
]
_RATE_STATUSES = frozenset((413, 429, 503))
_FAILED = frozenset(("ERROR", "NOT_AUTHORIZED"))  # a body's status that is a failure
_AUTH_WORDS = ("api key", "not_authorized", "not authorized", "unauthorized", "entitle")


class RetryLater(MaxRetryError):
    """The server (HTTP ``status``) asked us to wait ``retry_after`` seconds (``None``: it
    did not say)."""

    def __init__(
        self,
        pool: ConnectionPool | None,
        url: str | None,
        retry_after: float | None,
        status: int = 0,
    ) -> None:
        super().__init__(cast("ConnectionPool", pool), url or "", None)
        self.retry_after = retry_after
        self.status = status


class _Retry(Retry):
    """urllib3 retries that hand long ``Retry-After`` waits back to the caller."""

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> Self:
        status = response.status if response is not None else 0
        rate_limited = response is not None and status in _RATE_STATUSES
        wait = self.get_retry_after(response) if response is not None and rate_limited else None
        if status == 429:  # a per-minute limit: the caller's Pace waits, not this thread
            raise RetryLater(_pool, url, wait, status)
        try:
            retry = super().increment(method, url, response, error, _pool, _stacktrace)
        except MaxRetryError as exc:
            if rate_limited:
                raise RetryLater(_pool, url, wait, status) from exc
            raise
        if wait is not None and wait > MAX_INLINE_WAIT:
            raise RetryLater(_pool, url, wait, status)
        return retry


class _CheckedClient(RESTClient):  # type: ignore[misc]
    """polygon-api-client's ``RESTClient``, but a 200 answer that says ``"status": "ERROR"``
    (or ``NOT_AUTHORIZED``) or is not JSON raises ``BadResponse`` like a non-200 one: the
    client library reads both as a page without results, which would make a failure look
    like a range without bars, and be remembered as one."""

    def _decode(self, resp: Any) -> Any:
        text = resp.data.decode("utf-8", errors="replace")
        try:
            decoded = self.json.loads(text)
        except ValueError:
            raise BadResponse(text[:200] or "an empty answer") from None
        if isinstance(decoded, dict) and str(decoded.get("status", "")).upper() in _FAILED:
            raise BadResponse(text)
        return decoded


class PolygonRest:
    """Tickers and aggregates from ``base_url`` with ``api_key``; thread-safe."""

    def __init__(self, api_key: str, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.pace = Pace()
        self._client: Any = _CheckedClient(api_key=api_key, base=self.base_url, retries=RETRIES)
        self._client.client = urllib3.PoolManager(
            num_pools=4,
            maxsize=POOL_SIZE,
            headers=self._client.headers,
            ca_certs=certifi.where(),
            cert_reqs="CERT_REQUIRED",
            retries=_Retry(
                total=RETRIES,
                status_forcelist=[413, 429, 499, 500, 502, 503, 504],
                backoff_factor=0.2,
            ),
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT),
        )

    def tickers(self, market: Market) -> Iterator[Any]:
        """Every active ticker of ``market``, page by page: ``polygon.rest.models.Ticker``, or
        for options every unexpired contract (``polygon.rest.models.OptionsContract``). A
        page refused with 429 is asked again when the pace allows (up to
        :data:`PAGE_PATIENCE` seconds a page)."""
        if market == "options":
            params: dict[str, Any] = {
                "expired": "false",
                "limit": PAGE_LIMIT,
                "sort": "ticker",
                "order": "asc",
            }
            path, what = "/v3/reference/options/contracts", "option contracts"
            parse = OptionsContract.from_dict
        else:
            params = {
                "market": market,
                "active": "true",
                "limit": PAGE_LIMIT,
                "sort": "ticker",
                "order": "asc",
            }
            path, what = "/v3/reference/tickers", f"tickers of {market}"
            parse = Ticker.from_dict
            yield from newest_of_each(self._rows(what, path, params, parse, None))
            return
        yield from self._rows(what, path, params, parse, None)

    def aggregates(
        self,
        ticker: str,
        multiplier: int,
        timespan: str,
        start: int,
        end: int,
        deadline: float | None = None,
    ) -> list[Bar]:
        """Bars of ``multiplier``/``timespan`` opening in ``[start, end]`` (UTC seconds),
        oldest first, every page. A ticker Polygon does not know has no bars. Pages refused
        with 429 are asked again when the pace allows, until ``deadline`` (``time.monotonic``
        seconds; ``None``: no limit)."""
        what = f"{multiplier} {timespan} aggregates of {ticker}"
        window = f"{start * 1000}/{end * 1000 + 999}"
        path = f"/v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{window}"
        params: dict[str, Any] = {"adjusted": "true", "sort": "asc", "limit": AGGS_LIMIT}
        rows = self._rows(what, path, params, Agg.from_dict, deadline)
        bars = [bar for agg in rows if (bar := agg_bar(agg)) is not None]
        logger.debug("polygon: %s from %d to %d: %d bars", what, start, end, len(bars))
        return [bar for bar in bars if start <= bar[0] <= end]

    def _rows(
        self,
        what: str,
        path: str,
        params: dict[str, Any],
        parse: Callable[[Any], Any],
        deadline: float | None,
    ) -> Iterator[Any]:
        """The ``results`` of every page, following ``next_url`` (its path and query; the key
        goes in the client's header); without a deadline each page may wait
        :data:`PAGE_PATIENCE` seconds. A ``next_url`` already followed ends the pages, with a
        warning: Polygon's cursors were seen to loop back (polygon-io/issues#289), which
        would have asked for the same pages forever (populate never ending)."""
        followed: set[str] = set()
        while True:
            patience = self.pace.clock() + PAGE_PATIENCE if deadline is None else deadline
            page = self._page(what, path, params, patience)
            results = page.get("results") or []
            if not isinstance(results, list):
                raise ProviderUnavailable(f"polygon: {what}: results that are not a list")
            for row in results:
                yield parse(row)
            next_url = page.get("next_url")
            if not next_url:
                return
            parts = urlsplit(str(next_url))
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            if path in followed:
                logger.warning(
                    "polygon: %s: next_url repeats a page already read (%d pages); stopping there",
                    what,
                    len(followed) + 1,
                )
                return
            followed.add(path)
            params = {}

    def _page(
        self, what: str, path: str, params: dict[str, Any], deadline: float
    ) -> dict[str, Any]:
        """One page's decoded body; a 429 waits (:class:`.pace.Pace`) and asks again."""
        while True:
            sent = self.pace.admit(what, deadline)
            try:
                with translated(what):
                    response = self._client._get(path=path, params=params, raw=True)
                    decoded = self._client._decode(response)
            except RateLimited as exc:
                cause = exc.__cause__
                if not isinstance(cause, RetryLater) or cause.status != 429:
                    raise
                wait = self.pace.refused(sent, exc.retry_after)
                logger.warning("polygon: %s: rate limited (HTTP 429); asking again in %.1f s",
                               what, wait)  # fmt: skip
                continue
            self.pace.answered()
            if not isinstance(decoded, dict):
                raise ProviderUnavailable(f"polygon: {what}: an answer that is not an object")
            return decoded

    def close(self) -> None:
        """Close the pooled HTTP connections."""
        self._client.client.clear()


def newest_of_each(tickers: Iterator[Any]) -> Iterator[Any]:
    """One ``Ticker`` per symbol from pages sorted by ticker: of records that repeat a
    ticker (Polygon has listed some twice, an outdated or wrong record next to the current
    one: polygon-io/issues#165, #310), the one updated last (``last_updated_utc``; on a tie
    the later one). The database keeps the first row of a symbol, so the outdated name
    would have been the one shown."""
    held: Any = None
    for ticker in tickers:
        if held is not None and getattr(ticker, "ticker", None) == getattr(held, "ticker", None):
            if str(getattr(ticker, "last_updated_utc", None) or "") >= str(
                getattr(held, "last_updated_utc", None) or ""
            ):
                held = ticker
            continue
        if held is not None:
            yield held
        held = ticker
    if held is not None:
        yield held


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn polygon-api-client and urllib3 exceptions raised inside into Candlewire errors."""
    try:
        yield
    except RetryLater as exc:
        wait = "" if exc.retry_after is None else f"; retry after {exc.retry_after:g} s"
        raise RateLimited(f"polygon: {what}: rate limited{wait}", exc.retry_after) from exc
    except BadResponse as exc:
        raise _bad_response(what, str(exc)) from exc
    except AuthError as exc:
        raise AuthFailed(f"polygon: {what}: {exc}") from exc
    except HTTPError as exc:
        # urllib3's text names the pool's host, port and the request URL (with its query):
        # the client hears the kind of failure, the log has the chained exception.
        raise ProviderUnavailable(
            f"polygon: {what}: upstream unreachable ({type(exc).__name__})"
        ) from exc


def _bad_response(what: str, body: str) -> Exception:
    """The Candlewire error for a non-200 answer (the client gives us only its body)."""
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = {}
    if not isinstance(decoded, dict):
        decoded = {}
    status = str(decoded.get("status", ""))
    text = str(decoded.get("error") or decoded.get("message") or body[:200])
    message = f"polygon: {what}: {text}"
    if any(word in f"{status} {text}".lower() for word in _AUTH_WORDS):
        return AuthFailed(message)
    if status == "NOT_FOUND":
        return UnknownSymbol(message)
    return ProviderUnavailable(message)


def dataset_row(source: str, market: Market, ticker: Any) -> dict[str, Any] | None:
    """The dataset row (DESIGN 5.4) of a ``Ticker`` or, for options, an ``OptionsContract``;
    ``None`` when it has no symbol.

    A ticker is labelled with its name, a contract as ``SPY 2026-12-18 600 Call``; the source
    label is the primary exchange, else the market (``OPRA`` for options, whose trades all
    reach Polygon through OPRA). Rows share their constant lists (the symbol database copies
    what it stores).
    """
    symbol = getattr(ticker, "ticker", None)
    if not symbol:
        return None
    if market == "options":
        label = contract_label(ticker, symbol)
        fallback = "OPRA"
    else:
        label = getattr(ticker, "name", None) or symbol
        fallback = market
    return {
        "source": source,
        "name": symbol,
        "name_label": label,
        "type": "candlestick",
        "categories": _CATEGORY_LISTS[market],
        "intervals": _INTERVAL_LIST,
        "outputs": OUTPUTS,
        "source_label": getattr(ticker, "primary_exchange", None) or fallback,
    }


def contract_label(contract: Any, symbol: str) -> str:
    """``SPY 2026-12-18 600 Call`` from an ``OptionsContract``'s underlying, expiration date,
    strike and type; a field it lacks is read from the OCC ticker ``symbol``
    (``O:SPY261218C00600000``), and ``symbol`` itself is the label when neither has them."""
    underlying = getattr(contract, "underlying_ticker", None)
    expiration = getattr(contract, "expiration_date", None)
    strike = getattr(contract, "strike_price", None)
    kind = getattr(contract, "contract_type", None)
    if not (underlying and expiration and strike is not None and kind):
        match = _OCC.fullmatch(symbol)
        if match is None:
            return symbol
        root, yy, mm, dd, cp, milli = match.groups()
        underlying = underlying or root
        expiration = expiration or f"20{yy}-{mm}-{dd}"
        strike = int(milli) / 1000 if strike is None else strike
        kind = kind or ("call" if cp == "C" else "put")
    return f"{underlying} {expiration} {_strike_text(strike)} {str(kind).capitalize()}"


def _strike_text(strike: Any) -> str:
    """A strike without trailing zeros: ``600``, ``182.5``, ``2.125``."""
    try:
        value = float(strike)
    except (TypeError, ValueError):
        return str(strike)
    if value.is_integer():
        return str(int(value))
    return f"{value:.3f}".rstrip("0")


_CATEGORY_LISTS: dict[Market, list[str]] = {m: [c] for m, c in CATEGORIES.items()}
_INTERVAL_LIST = list(INTERVALS)
_OCC = re.compile(r"O:([A-Z0-9.]+)(\d{2})(\d{2})(\d{2})([CP])(\d{8})")
