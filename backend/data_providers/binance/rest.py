"""The REST gate to Binance: one request budget for the whole provider process.

Every REST call of the Binance provider (history threads, gap fills, populate) goes through
one :class:`RestGate`. It owns:

* the **weight budget**: ``X-MBX-USED-WEIGHT-1M`` is read after every call; once the weight
  used plus the weight in flight would pass the budget (80 % of the exchange's limit per
  minute), callers wait for the minute to roll instead of sending. The limit is 6000 until
  the exchange states its own: ``rateLimits`` in every ``exchangeInfo`` answer, or the text
  of a ``-1003`` 429 ("current limit is 1200 request weight per 1 MINUTE"): Binance.US and
  other servers of this API allow less, and a budget above their limit would run into a 429
  every minute, which Binance turns into an IP ban (418);
* **Retry-After**: a 429 (``rate_limited``) or 418 (``banned``) stops every REST request
  until the time Binance named has passed, then the status goes back to ``ok``;
* **availability**: a call that still fails after its retries (5xx, an answer that is not
  JSON, no connection, Binance's firewall) makes the status ``unavailable`` until the next
  answer;
* **deadlines**: a caller that would have to wait past its deadline gets
  :class:`RateLimited` with ``retry_after`` at once, instead of hanging;
* **error translation**: python-binance exceptions become Candlewire errors, chained;
* **kline paging**: ``GET /api/v3/klines`` 1000 rows at a time (python-binance's
  ``get_historical_klines`` sleeps between pages and breaks on empty answers).

python-binance's sync ``Client`` keeps the last response on the instance, so each thread
gets its own client; the budget itself is shared under one lock. The ``Client`` also creates
an asyncio loop in a thread that has none, never runs and never closes it: on the provider's
own threads the gate creates that loop itself and closes it with the sessions. It does not
own sockets.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import requests
from binance.client import Client
from binance.exceptions import BinanceAPIException, BinanceRequestException

from backend.data_providers.binance.parse import rest_base
from backend.errors import (
    AuthFailed,
    ProviderError,
    ProviderFatal,
    ProviderUnavailable,
    RateLimited,
    UnknownSymbol,
)
from backend.model import intervals

logger = logging.getLogger(__name__)

T = TypeVar("T")
StatusSink = Callable[[str, str], None]

WEIGHT_LIMIT = 6000  # Binance REQUEST_WEIGHT per minute (until the exchange states its own)
BUDGET_SHARE = 0.8
BUDGET = int(WEIGHT_LIMIT * BUDGET_SHARE)
KLINES_WEIGHT = 2
EXCHANGE_INFO_WEIGHT = 20
PAGE_LIMIT = 1000
MAX_PAGES = 500
MAX_ATTEMPTS = 5
REQUEST_TIMEOUT = 10.0  # a request without a deadline (populate's exchangeInfo)
MAX_REQUEST_TIMEOUT = 30.0
TRANSIENT_RETRIES = 2  # after a 5xx, an answer that is not JSON, a failed connection
RETRY_PAUSE = 0.5  # seconds before the first such retry, then twice that
DEFAULT_RETRY_AFTER = {429: 10.0, 418: 120.0}
MAX_RETRY_AFTER = 3 * 86400.0  # Binance's longest IP ban: a longer (or infinite) one is not
_STATE_OF = {429: "rate_limited", 418: "banned"}
_POLL = 0.05


class RestGate:
    """Thread-safe access to Binance REST under one weight budget and Retry-After."""

    def __init__(
        self,
        api_url: str,
        api_key: str = "",
        api_secret: str = "",
        *,
        report: StatusSink | None = None,
        budget: int = BUDGET,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.api_url = rest_base(api_url)
        self._key, self._secret = api_key or None, api_secret or None
        self._report = report or (lambda state, detail: None)
        self.budget = budget
        self.limit = WEIGHT_LIMIT  # REQUEST_WEIGHT per minute, as the exchange last stated it
        self._clock, self._wall = clock, wall
        self._cond = threading.Condition()
        self._used = 0  # X-MBX-USED-WEIGHT-1M last seen
        self._known = False  # whether ``_used`` was read in the current minute
        self._window_end = 0.0  # (monotonic) when that weight is expected to reset
        self._in_flight = 0
        self._blocked_until = 0.0  # (monotonic) Retry-After of the last 429/418
        self._state = "ok"
        self._local = threading.local()
        self._clients: list[Any] = []
        self._loops: list[asyncio.AbstractEventLoop] = []  # made for python-binance (see above)
        self._closed = False

    # ------------------------------------------------------------------ public calls

    def exchange_info(
        self, deadline: float | None = None, symbol: str | None = None
    ) -> dict[str, Any]:
        """``GET /api/v3/exchangeInfo`` (weight 20), of every symbol or of ``symbol`` only
        (:class:`NotListed` if Binance does not know it)."""
        if symbol is None:
            info = self._call(
                "exchangeInfo", EXCHANGE_INFO_WEIGHT, deadline, lambda c: c.get_exchange_info()
            )
        else:
            info = self._call(
                f"exchangeInfo of {symbol!r}",
                EXCHANGE_INFO_WEIGHT,
                deadline,
                lambda c: c._get("exchangeInfo", data={"symbol": symbol}),
                symbol,
            )
        if not isinstance(info, dict):
            raise ProviderUnavailable(f"binance: exchangeInfo answered {type(info).__name__}")
        limit = stated_limit(info)
        if limit is not None:
            self.learn_limit(limit, "exchangeInfo")
        return info

    def learn_limit(self, limit: int, source: str) -> None:
        """The exchange allows ``limit`` REQUEST_WEIGHT per minute: keep the budget at
        :data:`BUDGET_SHARE` of it. Only ever lowers the budget (one given to the
        constructor, a test's, stays when it is lower already)."""
        budget = max(1, int(limit * BUDGET_SHARE))
        with self._cond:
            changed = limit != self.limit or budget < self.budget
            self.limit = limit
            self.budget = min(self.budget, budget)
            self._cond.notify_all()
        if changed:
            logger.warning(
                "binance: the exchange allows %d request weight per minute (%s); REST keeps to %d",
                limit,
                source,
                self.budget,
            )

    def klines(
        self, symbol: str, interval: str, start_ms: int, end_ms: int | None, deadline: float
    ) -> list[list[Any]]:
        """Every kline row with open time in ``[start_ms, end_ms]`` (``None``: up to now),
        oldest first, paged 1000 at a time."""
        rows: list[list[Any]] = []
        cursor = max(0, start_ms)
        for pages in range(MAX_PAGES):
            if pages and self._clock() > deadline:
                raise ProviderUnavailable(
                    f"binance: klines of {symbol!r} {interval}: gave up after {pages} pages"
                )
            page = self._page(symbol, interval, cursor, end_ms, deadline)
            rows.extend(page)
            if not page or (len(page) < PAGE_LIMIT and self._reached(page, interval, end_ms)):
                return rows
            newest = int(page[-1][0])
            if newest < cursor:  # Binance answers rows from startTime on; this one did not
                logger.warning(
                    "binance: %s %s: klines answered no row from startTime %d on; a server"
                    " that ignores startTime is not paged further",
                    symbol,
                    interval,
                    cursor,
                )
                return rows
            cursor = newest + 1
            if end_ms is not None and cursor > end_ms:
                return rows
        logger.warning("binance: %s %s: stopped after %d pages", symbol, interval, MAX_PAGES)
        return rows

    def _reached(self, page: list[list[Any]], interval: str, end_ms: int | None) -> bool:
        """Whether a page shorter than asked ends the klines: no bar can open after its last
        row by ``end_ms`` (or by now, for ``None``: the last row is the forming bar).
        Binance fills every page but the last; a server that pages by a smaller size of its
        own (a relay, an emulator) is asked again from after the last row rather than
        leaving the rest of the range empty, and remembered so. A clock a little ahead of
        the exchange's costs one more request, which comes back empty."""
        step = intervals.nominal_seconds(interval) * 1000 if intervals.is_interval(interval) else 0
        target = end_ms if end_ms is not None else int(self._wall() * 1000)
        return int(page[-1][0]) + step > target

    def close(self) -> None:
        """Close the HTTP sessions of every client, and the loops made for them. A call
        after this (a provider thread still running at shutdown) fails as unavailable."""
        with self._cond:
            self._closed = True
            clients, self._clients = self._clients, []
            loops, self._loops = self._loops, []
        for client in clients:
            client.close_connection()
        for loop in loops:
            loop.close()

    @property
    def state(self) -> str:
        """``ok``, ``unavailable``, ``rate_limited`` or ``banned``."""
        with self._cond:
            return self._state

    # ------------------------------------------------------------------ one request

    def _page(
        self, symbol: str, interval: str, start_ms: int, end_ms: int | None, deadline: float
    ) -> list[list[Any]]:
        params: dict[str, Any] = {
            "symbol": symbol,
            "interval": interval,
            "startTime": start_ms,
            "limit": PAGE_LIMIT,
        }
        if end_ms is not None:
            params["endTime"] = end_ms
        what = f"klines of {symbol!r} {interval}"
        page = self._call(what, KLINES_WEIGHT, deadline, lambda c: c.get_klines(**params), symbol)
        if not isinstance(page, list):
            raise ProviderUnavailable(f"binance: {what} answered {type(page).__name__}")
        return cast("list[list[Any]]", page)

    def _call(
        self,
        what: str,
        weight: int,
        deadline: float | None,
        request: Callable[[Any], T],
        symbol: str = "",
    ) -> T:
        """Run ``request(client)`` once the budget allows; retry after a 429/418, and up to
        :data:`TRANSIENT_RETRIES` times after a 5xx, an answer that is not JSON or a failed
        connection (Binance: a 5xx "does not necessarily mean failure"; these are reads),
        when ``deadline`` leaves the time."""
        transient = 0
        for _ in range(MAX_ATTEMPTS + TRANSIENT_RETRIES):
            client = self._client()
            self._admit(weight, deadline, what)
            client.response = None
            client._requests_params = {"timeout": self._timeout(deadline)}  # per call
            try:
                return request(client)
            except BinanceAPIException as exc:
                if exc.status_code in (429, 418):
                    limit = _limit_in_text(exc.message)
                    if limit is not None:
                        self.learn_limit(limit, f"HTTP {exc.status_code} on {what}")
                    self._limited(exc.status_code, exc.response, what)
                    continue
                error: ProviderError = translate(exc, what, symbol)
                if exc.status_code < 500 or not self._may_retry(transient, deadline):
                    raise self._failed(error) from exc
                last: BaseException = exc
            except BinanceRequestException as exc:
                if not self._may_retry(transient, deadline):
                    error = ProviderUnavailable(f"binance: {what}: invalid response")
                    raise self._failed(error) from exc
                last = exc
            except requests.RequestException as exc:
                if not self._may_retry(transient, deadline):
                    error = ProviderUnavailable(  # no URL: this text reaches clients
                        f"binance: {what}: upstream unreachable ({type(exc).__name__})"
                    )
                    raise self._failed(error) from exc
                last = exc
            finally:
                self._settle(client, weight)
            transient += 1
            logger.info("binance: %s: %s; retrying (%d)", what, _brief(last), transient)
            time.sleep(RETRY_PAUSE * transient)
        raise RateLimited(f"binance: {what}: still rate limited after {MAX_ATTEMPTS} tries")

    def _failed(self, error: ProviderError) -> ProviderError:
        """``error`` ends a call: one that says REST is unavailable makes the status
        ``unavailable`` (unless a rate limit's is shown) until the next answer."""
        if not isinstance(error, ProviderUnavailable) or isinstance(error, RateLimited):
            return error
        with self._cond:
            changed = self._state == "ok"
            if changed:
                self._state = "unavailable"
        if changed:
            logger.warning("binance: REST unavailable: %s", error)
            self._report("unavailable", str(error))
        return error

    def _may_retry(self, done: int, deadline: float | None) -> bool:
        """Whether a transient failure may be retried: retries left, and the pause and a
        request's worth of time before ``deadline``."""
        if done >= TRANSIENT_RETRIES:
            return False
        return deadline is None or self._clock() + RETRY_PAUSE * (done + 1) + 1.0 < deadline

    def _timeout(self, deadline: float | None) -> float:
        """A request's timeout: what ``deadline`` leaves (``HISTORY_TIMEOUT``), 1 to
        :data:`MAX_REQUEST_TIMEOUT` s; :data:`REQUEST_TIMEOUT` without one."""
        if deadline is None:
            return REQUEST_TIMEOUT
        return max(1.0, min(MAX_REQUEST_TIMEOUT, deadline - self._clock()))

    def _client(self) -> Any:
        if self._closed:
            raise ProviderUnavailable("binance: REST is closed (the provider is stopping)")
        client = getattr(self._local, "client", None)
        if client is None:
            if threading.current_thread() is not threading.main_thread():
                self._give_loop()
            client = Client(
                self._key, self._secret, requests_params={"timeout": REQUEST_TIMEOUT}, ping=False
            )
            client.API_URL = self.api_url  # per instance: the class attribute stays untouched
            self._local.client = client
            with self._cond:
                self._clients.append(client)
        return client

    def _give_loop(self) -> None:
        """Give this (non-main) thread the loop python-binance would make, unless it has
        one, so that :meth:`close` closes it."""
        try:
            asyncio.get_event_loop()
        except RuntimeError:  # none in this thread (the main thread's is not touched)
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            with self._cond:
                self._loops.append(loop)

    # ------------------------------------------------------------------ the budget

    def _admit(self, weight: int, deadline: float | None, what: str) -> None:
        """Block until ``weight`` fits; raise ``RateLimited`` if that is after ``deadline``."""
        with self._cond:
            while True:
                now = self._clock()
                wait = self._wait_needed(now, weight)
                if wait <= 0:
                    self._in_flight += weight
                    return
                if deadline is not None and now + wait > deadline and wait > _POLL:
                    raise RateLimited(self._limit_message(what, wait), retry_after=wait)
                self._cond.wait(wait)

    def _wait_needed(self, now: float, weight: int) -> float:
        if now < self._blocked_until:
            return self._blocked_until - now
        if now >= self._window_end and self._known:
            self._used, self._known = 0, False  # the minute rolled: the next answer tells
        if self._in_flight and (
            not self._known or self._used + self._in_flight + weight > self.budget
        ):
            return _POLL  # one request probes the new minute; the rest wait for its answer
        if self._used + weight > self.budget:
            return max(_POLL, self._window_end - now)
        return 0.0

    def _limit_message(self, what: str, wait: float) -> str:
        if self._clock() < self._blocked_until:
            reason = "banned by" if self._state == "banned" else "rate limited by"
            return f"binance: {what}: {reason} Binance for another {wait:.0f} s"
        return f"binance: {what}: request weight budget used up; retry in {wait:.0f} s"

    def _settle(self, client: Any, weight: int) -> None:
        """Return the in-flight weight and read ``X-MBX-USED-WEIGHT-1M``."""
        response = client.response
        used = _used_weight(response.headers) if response is not None else None
        recovered = False
        with self._cond:
            self._in_flight -= weight
            now = self._clock()
            if used is not None:
                self._used, self._known = used, True
                self._window_end = now + 60.0 - self._wall() % 60.0 + 0.5
                if used > self.budget:
                    logger.warning("binance: request weight %d of %d used", used, self.limit)
            if response is not None and _answered(response.status_code) and self._recover(now):
                recovered = True
            self._cond.notify_all()
        if recovered:
            self._report("ok", "")

    def _limited(self, status: int, response: Any, what: str) -> None:
        """A 429/418: no request until its Retry-After has passed. A shorter one (a request
        that was in flight) neither shortens a block nor turns a ban into a rate limit."""
        retry_after = _retry_after(response, DEFAULT_RETRY_AFTER[status])
        with self._cond:
            now = self._clock()
            if self._state != "banned" or now >= self._blocked_until or status == 418:
                self._state = _STATE_OF[status]
            self._blocked_until = max(self._blocked_until, now + retry_after)
            state, blocked = self._state, self._blocked_until - now
            self._cond.notify_all()
        detail = f"HTTP {status} on {what}; no REST request for {blocked:.0f} s"
        logger.warning("binance: %s", detail)
        self._report(state, detail)
        timer = threading.Timer(retry_after, self._recover_later)
        timer.daemon = True
        timer.start()

    def _recover(self, now: float) -> bool:
        """Back to ``ok`` once the Retry-After has passed (lock held); True if it changed."""
        if self._state == "ok" or now < self._blocked_until:
            return False
        was, self._state = self._state, "ok"
        if was == "unavailable":
            logger.info("binance: REST answers again")
        else:
            logger.info("binance: REST rate limit over; requests resumed")
        return True

    def _recover_later(self) -> None:
        with self._cond:
            recovered = self._recover(self._clock())
        if recovered:
            self._report("ok", "")


class NotListed(UnknownSymbol):
    """Binance does not know the symbol (``-1121 Invalid symbol.``): never listed, or
    delisted and gone from ``exchangeInfo``. (An unknown interval is a plain
    :class:`UnknownSymbol`.)"""


def translate(exc: Any, what: str, symbol: str = "") -> ProviderError:
    """The Candlewire error for a ``BinanceAPIException`` (not a 429/418)."""
    code, message, status = exc.code, exc.message, exc.status_code
    detail = f"({code} {message})"
    if code == -1121:
        return NotListed(f"binance: unknown symbol {symbol!r} {detail}")
    if code == -1120:
        return UnknownSymbol(f"binance: unknown interval in {what} {detail}")
    if status == 401 or code in (-2014, -2015):
        return AuthFailed(
            f"binance: API key rejected {detail}; check BINANCE_API_KEY and BINANCE_API_SECRET"
        )
    if status >= 500:  # python-binance's code 0 carries the body (a proxy's HTML): left out
        why = f" {detail}" if code else ""
        return ProviderUnavailable(f"binance: {what}: server error HTTP {status}{why}")
    if status == 403:
        return ProviderUnavailable(f"binance: {what}: blocked by Binance's firewall (HTTP 403)")
    if status == 451:  # Binance.com's answer to an address in a country it does not serve
        return ProviderFatal(
            f"binance: {what}: refused from this location (HTTP 451 {detail}); in the US, "
            f"Binance.US serves the same API: BINANCE_API_URL=https://api.binance.us and "
            f"BINANCE_STREAM_URL=wss://stream.binance.us:9443"
        )
    return ProviderFatal(f"binance: {what} rejected: HTTP {status} {detail}")


def _answered(status: int) -> bool:
    """Whether an HTTP status shows REST serving again: not a rate limit, a ban, Binance's
    firewall (403) or a server error."""
    return status < 500 and status not in (403, 418, 429)


def stated_limit(info: Any) -> int | None:
    """The REQUEST_WEIGHT limit per minute in an ``exchangeInfo`` answer's ``rateLimits``
    (``{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
    "limit": 6000}``), or ``None``."""
    limits = info.get("rateLimits") if isinstance(info, dict) else None
    for item in limits if isinstance(limits, list) else ():
        if (
            isinstance(item, dict)
            and item.get("rateLimitType") == "REQUEST_WEIGHT"
            and item.get("interval") == "MINUTE"
            and item.get("intervalNum") == 1
        ):
            limit = item.get("limit")
            if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
                return limit
    return None


#: Binance's -1003 texts: "Too much request weight used; current limit is 1200 request weight
#: per 1 MINUTE." and "Too many requests; current limit of IP(1.2.3.4) is 6000 requests per
#: minute."
_LIMIT_TEXT = re.compile(
    r"current limit (?:of IP\([^)]*\) )?is (\d+) requests?(?: weight)? per (?:1 )?minute",
    re.IGNORECASE,
)


def _limit_in_text(message: object) -> int | None:
    """The per-minute limit a 429's message names, or ``None``."""
    match = _LIMIT_TEXT.search(message) if isinstance(message, str) else None
    return int(match.group(1)) if match and int(match.group(1)) > 0 else None


def _used_weight(headers: Any) -> int | None:
    raw = headers.get("X-MBX-USED-WEIGHT-1M") if headers is not None else None
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _retry_after(response: Any, default: float) -> float:
    """The response's Retry-After in seconds: ``default`` when there is none or it is not
    a number (``inf`` and ``nan`` included), at most :data:`MAX_RETRY_AFTER`."""
    headers = getattr(response, "headers", None)
    raw = headers.get("Retry-After") if headers is not None else None
    try:
        seconds = float(raw) if raw is not None else default
    except ValueError:
        return default
    if not math.isfinite(seconds):
        return default
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def _brief(error: BaseException) -> str:
    """A failure in a few words, for the log: no URL (requests' texts carry one)."""
    status = getattr(error, "status_code", None)
    return f"HTTP {status}" if isinstance(status, int) else type(error).__name__
