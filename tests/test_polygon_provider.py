"""The Polygon provider against the fake Polygon (``tests/fakes/polygon.py``).

Two layers: the provider instantiated directly (its events recorded, ``tests/polygon_direct``),
and end to end: the real ``populate.py`` and ``server.py`` (``PROVIDERS=polygon``) with a real
WebSocket client. The live bars' race with REST is in ``test_polygon_races.py``, populate at
scale in ``test_polygon_populate.py``.
Every expectation comes from the fake's own REST aggregates (``FakePolygon.aggregates``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from polygon.rest.models import OptionsContract

from backend.data_providers.polygon import stream as polygon_stream
from backend.data_providers.polygon.pace import Pace
from backend.data_providers.polygon.rest import dataset_row
from backend.data_providers.polygon.stream import Backoff, combined_status
from backend.errors import AuthFailed, ProviderUnavailable, RateLimited
from backend.model import intervals
from backend.model.bars import Bar
from backend.runtime.messages import Notice
from tests.fakes.polygon import FakePolygon
from tests.fakes.polygon_data import contract_row, minute_bar
from tests.harness import ServerProcess, WsClient, base_env, populate, seconds
from tests.polygon_direct import ALL_MARKETS, Direct, rest_bars, wait_until

FIELDS = ("open", "high", "low", "close", "volume")
#: Tuesday 2026-03-10 15:58:30 UTC: New York is open (EDT); the next hour is 90 s away.
TUESDAY = datetime(2026, 3, 10, 15, 58, 30, tzinfo=UTC)


def matches_rest(fake: FakePolygon, live: dict[int, Bar], ticker: str, interval: str) -> bool:
    """Whether the live bars of a key are the REST aggregates over the same span."""
    return bool(live) and sorted(live.values()) == rest_bars(
        fake, ticker, interval, min(live), max(live)
    )


def settle(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll until ``predicate`` holds or ``timeout`` passed, without failing: the last
    events of a frozen fake land meanwhile, and the assertions that follow say what is
    wrong if they never do."""
    deadline = time.monotonic() + seconds(timeout)
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)


async def settled(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """:func:`settle` in the event loop (the client reads meanwhile)."""
    deadline = time.monotonic() + seconds(timeout)
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------------------------------
# The provider on its own


@pytest.fixture
def tuesday() -> Iterator[FakePolygon]:
    with FakePolygon(now=TUESDAY, frozen=True, stock_count=2500, option_count=2500) as fake:
        yield fake


@pytest.fixture
def direct(tuesday: FakePolygon) -> Iterator[Direct]:
    provider = Direct(tuesday)
    yield provider
    provider.close()


def test_dataset_rows_stream_every_page_of_every_market_with_labels_and_categories(
    tuesday: FakePolygon, direct: Direct
) -> None:
    rows = direct.provider.get_dataset()
    assert isinstance(rows, Iterator)  # a generator: populate streams it
    by_name = {row["name"]: row for row in rows}
    pages = [r for r in tuesday.rest_requests if r.path == "/v3/reference/tickers"]
    assert len(pages) == 3 + 1 + 1 + 1  # stocks take three pages
    assert pages[0].query == {
        "market": "stocks",
        "active": "true",
        "limit": "1000",
        "sort": "ticker",
        "order": "asc",
    }
    markets = [p.query["market"] for p in pages if "market" in p.query]
    assert markets == ["stocks", "crypto", "fx", "indices"]  # options are not tickers
    contracts = [r for r in tuesday.rest_requests if r.path == "/v3/reference/options/contracts"]
    assert len(contracts) == 3  # 2,500 contracts, 1,000 a page
    assert contracts[0].query == {
        "expired": "false",
        "limit": "1000",
        "sort": "ticker",
        "order": "asc",
    }
    assert all(set(p.query) == {"cursor"} for p in contracts[1:])
    assert [r.status for r in tuesday.rest_requests] == [200] * (len(pages) + len(contracts))
    assert len(by_name) == 14 + 2500 + 6 + 6 + 5 + 2500 and "TWTR" not in by_name
    assert by_name["AAPL"] == {
        "source": "polygon",
        "name": "AAPL",
        "name_label": "Apple Inc.",
        "type": "candlestick",
        "categories": ["Stocks"],
        "intervals": list(intervals.INTERVALS),
        "outputs": [{"name": f, "y_axis": "volume" if f == "volume" else "price"} for f in FIELDS],
        "source_label": "XNAS",
    }
    btc, eur, spx = by_name["X:BTCUSD"], by_name["C:EURUSD"], by_name["I:SPX"]
    assert (btc["name_label"], btc["source_label"], btc["categories"]) == (
        "BTC - USD",
        "crypto",
        ["Crypto"],
    )
    assert (eur["source_label"], eur["categories"]) == ("fx", ["FX"])
    assert (spx["name_label"], spx["categories"]) == ("Standard & Poor's 500", ["Indices"])
    assert by_name["O:SPY260320C00280000"] == {
        "source": "polygon",
        "name": "O:SPY260320C00280000",
        "name_label": "SPY 2026-03-20 280 Call",
        "type": "candlestick",
        "categories": ["Options"],
        "intervals": list(intervals.INTERVALS),
        "outputs": [{"name": f, "y_axis": "volume" if f == "volume" else "price"} for f in FIELDS],
        "source_label": "BATO",
    }
    options = {name: row for name, row in by_name.items() if name.startswith("O:")}
    assert len(options) == 2500
    for name, row in options.items():  # the fake's contract rows are a function of the ticker
        contract = contract_row(name)
        kind = str(contract["contract_type"]).capitalize()
        assert row["name_label"] == (
            f"{contract['underlying_ticker']} {contract['expiration_date']} "
            f"{contract['strike_price']} {kind}"
        )
        assert row["source_label"] == contract.get("primary_exchange", "OPRA")
        assert row["categories"] == ["Options"]
    assert "OPRA" in {row["source_label"] for row in options.values()}


def test_option_rows_are_the_unexpired_contracts_labelled_from_the_contract_fields() -> None:
    contracts: list[str | dict[str, Any]] = [
        "O:SPY260220C00600000",  # expired on 2026-02-20, before TUESDAY (2026-03-10)
        "O:SPY260310P00550000",  # expires today: still listed
        {"ticker": "O:SPY261218C00600000", "primary_exchange": "XCBO"},
        {"ticker": "O:SPY261218P00182500", "primary_exchange": None},
        {
            "ticker": "O:AAPL1260417C00150000",  # adjusted after a corporate action
            "underlying_ticker": "AAPL",
            "primary_exchange": "BATO",
            "additional_underlyings": [{"type": "equity", "underlying": "AAPL", "amount": 100}],
        },
    ]
    with FakePolygon(now=TUESDAY, frozen=True, tickers={"options": contracts}) as fake:
        direct = Direct(fake, markets="options")
        try:
            rows = list(direct.provider.get_dataset())
        finally:
            direct.close()
        assert {r.path for r in fake.rest_requests} == {"/v3/reference/options/contracts"}
    labels = {row["name"]: (row["name_label"], row["source_label"]) for row in rows}
    assert labels == {
        "O:AAPL1260417C00150000": ("AAPL 2026-04-17 150 Call", "BATO"),
        "O:SPY260310P00550000": ("SPY 2026-03-10 550 Put", "BATO"),
        "O:SPY261218C00600000": ("SPY 2026-12-18 600 Call", "XCBO"),
        "O:SPY261218P00182500": ("SPY 2026-12-18 182.5 Put", "OPRA"),
    }
    assert [row["name"] for row in rows] == sorted(labels)


def test_a_contract_missing_fields_is_labelled_from_its_occ_ticker() -> None:
    def label(**fields: Any) -> tuple[str, str]:
        row = dataset_row("polygon", "options", OptionsContract(**fields))
        assert row is not None and row["categories"] == ["Options"]
        return row["name_label"], row["source_label"]

    assert label(ticker="O:SPY261218C00600000") == ("SPY 2026-12-18 600 Call", "OPRA")
    assert label(ticker="O:QQQ270115P00412125", underlying_ticker="QQQ") == (
        "QQQ 2027-01-15 412.125 Put",
        "OPRA",
    )
    assert label(ticker="O:NOT-OCC", primary_exchange="XCBO") == ("O:NOT-OCC", "XCBO")
    assert dataset_row("polygon", "options", OptionsContract()) is None


def test_history_of_every_interval_is_the_rest_aggregates_with_polygon_dates(
    tuesday: FakePolygon, direct: Direct
) -> None:
    now = int(TUESDAY.timestamp())
    for interval in intervals.INTERVALS:
        step = intervals.nominal_seconds(interval)
        start = now - 12 * step
        got = direct.provider.get_history(
            "AAPL", interval, intervals.format_date(start), "now UTC", 12
        )
        expected = [b for b in rest_bars(tuesday, "AAPL", interval, start, now) if b[0] >= start]
        assert got == expected, interval
        assert got and got[-1][0] <= now, interval
    days = direct.provider.get_history(
        "AAPL", "1d", "2026-03-05 00:00:00", "2026-03-10 00:00:00", 10
    )
    assert [intervals.format_date(b[0]) for b in days] == [
        "2026-03-05 05:00:00",
        "2026-03-06 05:00:00",
        "2026-03-09 04:00:00",  # New York switched to daylight saving time on Sunday
    ]


def test_live_bars_of_every_interval_and_market_equal_the_rest_aggregates(
    tuesday: FakePolygon, direct: Direct
) -> None:
    now = int(TUESDAY.timestamp())
    option = next(  # an option contract that trades in the next three minutes
        str(row["name"])
        for row in direct.provider.get_dataset()
        if row["name"].startswith("O:AAPL")
        and sum(minute_bar(row["name"], now // 60 + i) is not None for i in range(3)) >= 2
    )
    keys = [("AAPL", interval) for interval in intervals.INTERVALS]
    keys += [("X:BTCUSD", "1h"), ("C:EURUSD", "5m"), ("I:SPX", "1m"), ("MSFT", "1m")]
    keys += [(option, "1m")]
    for symbol, interval in keys:
        direct.subscribe(symbol, interval)
    wait_until(lambda: len(tuesday.connections()) == 5, "five clusters connected")
    tuesday.set_speed(60)
    tuesday.freeze(False)
    wait_until(lambda: tuesday.now_ms() >= TUESDAY.timestamp() * 1000 + 200_000, "3+ minutes")
    tuesday.freeze(True)
    settle(  # the last events and seeds land
        lambda: all(
            matches_rest(tuesday, direct.published(symbol, interval), symbol, interval)
            for symbol, interval in keys
        )
    )
    for symbol, interval in keys:
        published = direct.published(symbol, interval)
        assert published, (symbol, interval)
        expected = rest_bars(tuesday, symbol, interval, min(published), max(published))
        assert sorted(published.values()) == expected, (symbol, interval)
    hours = sorted(direct.published("AAPL", "1h"))
    assert [intervals.format_date(t) for t in hours[-2:]] == [
        "2026-03-10 15:00:00",
        "2026-03-10 16:00:00",
    ]
    assert [e for e in direct.events if isinstance(e, Notice)] == []


def test_the_last_interval_of_a_ticker_leaving_unsubscribes_its_topic(
    tuesday: FakePolygon, direct: Direct
) -> None:
    direct.subscribe("AAPL", "1m", "5m")
    direct.subscribe("X:BTCUSD", "1m")

    def topics(market: str) -> set[str]:
        return {t for c in tuesday.connections(market) for t in c.topics}

    wait_until(lambda: topics("stocks") == {"A.AAPL"}, "A.AAPL subscribed")
    wait_until(lambda: topics("crypto") == {"XAS.BTC-USD"}, "XAS.BTC-USD subscribed")
    direct.provider._unsubscribe(1, "AAPL", "1m")
    time.sleep(seconds(0.2))
    assert topics("stocks") == {"A.AAPL"}
    direct.provider._unsubscribe(1, "AAPL", "5m")
    wait_until(lambda: topics("stocks") == set(), "A.AAPL unsubscribed")
    assert len(tuesday.connections("stocks")) == 1  # the connection stays for the next ticker


def test_a_connection_evicted_with_max_connections_backs_off_and_is_reported(
    tuesday: FakePolygon, direct: Direct
) -> None:
    tuesday.set_always_open(True)
    direct.subscribe("X:ETHUSD", "1m")
    wait_until(lambda: len(tuesday.connections("crypto")) == 1, "the crypto connection")
    wait_until(lambda: tuesday.auth_attempts == {"crypto": 1}, "the auth")  # then evicted
    tuesday.force_max_connections("crypto")
    wait_until(lambda: any(s.state == "max_connections" for s in direct.statuses()), "the status")
    evicted_at = time.monotonic()
    notices = [e for e in direct.events if isinstance(e, Notice)]
    assert [(n.symbol, n.interval, n.code) for n in notices] == [
        ("X:ETHUSD", "1m", "max_connections")
    ]
    assert "Maximum number of websocket connections" in notices[0].message
    time.sleep(seconds(3))
    assert tuesday.auth_attempts == {"crypto": 1}  # no reconnect before the 4-6 s backoff
    wait_until(lambda: tuesday.auth_attempts == {"crypto": 2}, "the retry", timeout=10)
    assert time.monotonic() - evicted_at >= 3.5
    wait_until(lambda: direct.statuses()[-1].state == "ok", "ok again")


def test_a_handshake_that_never_completes_is_given_up_on_and_tried_again(
    tuesday: FakePolygon, direct: Direct, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server answering auth with status after status but no verdict: the handshake has
    one deadline in all (each status used to restart its wait, so it never ended)."""
    monkeypatch.setattr(polygon_stream, "HANDSHAKE_TIMEOUT", 1.0)
    tuesday.set_always_open(True)
    tuesday.stall_auth(every=0.3)
    direct.subscribe("X:ETHUSD", "1m")
    wait_until(lambda: tuesday.auth_attempts.get("crypto", 0) >= 2, "a second try", timeout=10)
    tuesday.stall_auth(None)
    wait_until(lambda: direct.statuses()[-1].state == "ok", "connected once auth is answered", 20)


def test_a_server_that_sends_no_connected_status_is_sent_the_auth_anyway(
    tuesday: FakePolygon, direct: Direct, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some relays and emulators wait for the auth before saying anything: the handshake
    waited for a greeting until its deadline, then again, and never connected."""
    monkeypatch.setattr(polygon_stream, "GREETING_WAIT", 0.3)
    monkeypatch.setattr(tuesday, "greets", False)
    tuesday.set_always_open(True)
    direct.subscribe("X:ETHUSD", "1m")
    wait_until(lambda: tuesday.auth_attempts == {"crypto": 1}, "the auth", 10)
    wait_until(lambda: any(c.topics for c in tuesday.connections("crypto")), "a subscription", 10)
    assert tuesday.auth_attempts == {"crypto": 1}  # at the first try


def test_rest_errors_become_candlewire_errors_without_sleeping_out_retry_after(
    tuesday: FakePolygon, direct: Direct
) -> None:
    tuesday.clear_logs()
    tuesday.fail_rest(429, times=1, retry_after=30)
    started = time.monotonic()
    with pytest.raises(RateLimited) as limited:
        direct.provider.get_history("AAPL", "1d", "2026-03-01 00:00:00", "now UTC", 5)
    assert limited.value.retry_after == 30
    assert time.monotonic() - started < 5
    assert [r.status for r in tuesday.rest_requests] == [429]  # handed back, not slept out
    with pytest.raises(RateLimited):  # the wait holds for the process: nothing is sent
        direct.provider.get_history("AAPL", "1d", "2026-03-01 00:00:00", "now UTC", 5)
    assert [r.status for r in tuesday.rest_requests] == [429]
    direct.provider._rest_client().pace = Pace()  # as if the 30 s had passed
    tuesday.clear_logs()
    tuesday.fail_rest(503, times=2, retry_after=0)
    assert direct.provider.get_history("AAPL", "1d", "2026-03-09 00:00:00", "now UTC", 5)
    assert [r.status for r in tuesday.rest_requests] == [503, 503, 200]
    with FakePolygon(now=TUESDAY, frozen=True, api_keys=("other",)) as fake:
        stranger = Direct(fake)
        try:
            with pytest.raises(AuthFailed, match="Unknown API Key"):
                stranger.provider.get_history("AAPL", "1d", "2026-03-01 00:00:00", "now UTC", 5)
        finally:
            stranger.close()


def test_populate_waits_out_polygon_s_per_minute_limit_in_the_middle_of_the_pages(
    tuesday: FakePolygon, direct: Direct
) -> None:
    """Polygon's free plan allows 5 requests a minute and answers 429 (no Retry-After) past
    it: the page refused is asked again when the pace allows, and populate finishes with
    every row once (it failed with RateLimited, the page iterator dead)."""
    expected = [row["name"] for row in direct.provider.get_dataset()]
    rows = direct.provider.get_dataset()
    first = next(rows)  # the first page of stocks is read
    tuesday.clear_logs()
    tuesday.fail_rest(429, times=4)
    names = [first["name"]] + [row["name"] for row in rows]
    assert names == expected
    requests = tuesday.rest_requests
    assert [r.status for r in requests[:5]] == [429, 429, 429, 429, 200]
    assert len({(r.path, tuple(sorted(r.query.items()))) for r in requests[:5]}) == 1
    assert "cursor" in requests[0].query  # the second page of stocks, asked again


def test_the_pace_after_429_doubles_holds_every_request_and_tells_a_deadline_at_once() -> None:
    now = [100.0]
    pace = Pace(clock=lambda: now[0])
    assert pace.admit("x", None) == 100.0  # nothing refused yet: at once
    assert [pace.refused(now[0], None) for _ in range(3)] == [0.5, 1.0, 2.0]
    assert pace.refused(now[0] - 1, None) == 2.0  # sent before this wait: a burst, not longer
    with pytest.raises(RateLimited) as limited:
        pace.admit("1 hour aggregates of X:BTCUSD", now[0] + 1.0)
    assert limited.value.retry_after == 2.0
    assert "rate limited by Polygon (HTTP 429)" in str(limited.value)
    now[0] += 2.0
    assert pace.admit("x", now[0]) == 102.0
    pace.answered()
    assert pace.refused(now[0], None) == 0.5  # a new run
    assert pace.refused(now[0], 30.0) == 30.0  # Retry-After when the server names one
    longest = Pace(clock=lambda: 0.0)
    assert max(longest.refused(0.0, None) for _ in range(12)) == 60.0


@pytest.mark.parametrize("status", ["ERROR", "NOT_AUTHORIZED"])
def test_a_200_answer_whose_status_is_an_error_is_an_error_not_a_range_without_bars(
    tuesday: FakePolygon, direct: Direct, status: str
) -> None:
    """The client library reads such a page as one without results: an empty chart, and
    a year of "no bars" remembered."""
    tuesday.fail_rest(200, times=1, body_status=status)
    with pytest.raises((ProviderUnavailable, AuthFailed), match="injected 200"):
        direct.provider.get_history("AAPL", "1d", "2026-03-01 00:00:00", "now UTC", 5)
    assert direct.provider.get_history("AAPL", "1d", "2026-03-01 00:00:00", "now UTC", 5)


def test_shutdown_leaves_no_polygon_thread_behind(tuesday: FakePolygon) -> None:
    direct = Direct(tuesday)
    direct.subscribe("AAPL", "1m")
    wait_until(lambda: len(tuesday.connections("stocks")) == 1, "the stocks connection")
    direct.close()

    def polygon_threads() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("polygon")]

    wait_until(lambda: polygon_threads() == [], "the threads to end")
    wait_until(lambda: tuesday.connections() == [], "the connection to close")


def test_reconnect_delays_double_with_jitter_up_to_their_ceiling() -> None:
    backoff = Backoff(5.0, 300.0, rng=lambda: 0.5)
    assert [backoff.next() for _ in range(8)] == [5, 10, 20, 40, 80, 160, 300, 300]
    backoff.reset()
    low, high = Backoff(1.0, 60.0, rng=lambda: 0.0), Backoff(1.0, 60.0, rng=lambda: 1.0)
    assert (low.next(), high.next()) == (0.8, pytest.approx(1.2))


@pytest.mark.parametrize(
    ("status", "message", "refused"),
    [
        ("auth_failed", "authentication failed", "auth_failed"),
        ("error", "authentication failed", "auth_failed"),  # as some servers spell it
        ("error", "Not authorized", "auth_failed"),
        ("max_connections", "Maximum number of connections exceeded.", "max_connections"),
        ("error", "internal server error", None),  # not about the auth: not a refusal
        ("auth_pending", "waiting", None),
    ],
)
def test_a_refused_auth_in_either_spelling_is_a_rejection(
    status: str, message: str, refused: str | None
) -> None:
    """An ``error`` status about the auth during the handshake was an ordinary drop: no
    ``error`` to clients, ``reconnecting`` in ``/health`` and the 1-60 s reconnect delays."""
    connection = polygon_stream.ClusterConnection("stocks", "ws://127.0.0.1:9", "key", None)  # type: ignore[arg-type]
    frame = orjson.dumps([{"ev": "status", "status": status, "message": message}])
    if refused is None:
        assert [s.status for s in connection._check(frame)] == [status]
        return
    with pytest.raises(polygon_stream.Rejected) as caught:
        connection._check(frame)
    assert caught.value.status == refused and message in str(caught.value)


def test_the_provider_status_is_the_worst_cluster_state() -> None:
    assert combined_status({}) == ("ok", "no stream open")
    assert combined_status({"stocks": ("connected", "ws://x/stocks")}) == (
        "ok",
        "stocks: connected",
    )
    state, detail = combined_status(
        {
            "stocks": ("connected", "ws://x/stocks"),
            "forex": ("auth_failed", "auth_failed: authentication failed; retrying in 5 s"),
            "crypto": ("reconnecting", "ConnectionClosedError; retrying in 1 s"),
        }
    )
    assert state == "auth_failed"
    assert detail.startswith("crypto: reconnecting (ConnectionClosedError")
    assert "forex: auth_failed (auth_failed: authentication failed; retrying in 5 s)" in detail


# ------------------------------------------------------------------------------------------
# End to end: populate.py and server.py


@pytest.fixture(scope="module")
def fake() -> Iterator[FakePolygon]:
    now = datetime.now(UTC).replace(microsecond=0)
    with FakePolygon(now=now, frozen=True, stock_count=2500, option_count=1500) as running:
        yield running


@pytest.fixture(scope="module")
def server(fake: FakePolygon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("polygon")
    env = base_env(
        tmp,
        PROVIDERS="polygon",
        POLYGON_API_KEY="k",
        POLYGON_API_URL=fake.base_url,
        POLYGON_WS_URL=f"ws://{fake.ws_feed}",
        POLYGON_MARKETS=ALL_MARKETS,
        STREAM_LINGER_SECONDS="0.5",
    )
    result = populate(env)
    assert result.returncode == 0, result.stderr
    assert "polygon: 4,031 rows" in result.stdout, result.stdout
    with ServerProcess(env, tmp / "server.log") as running:
        yield running


@pytest.fixture
def running(fake: FakePolygon) -> Iterator[FakePolygon]:
    """The shared fake with its clock running fast and every market open, for one test."""
    fake.set_always_open(True)
    fake.set_speed(60)
    fake.freeze(False)
    try:
        yield fake
    finally:
        fake.freeze(True)
        fake.set_always_open(False)
        fake.fail_auth(False)


def request(name: str, interval: str, **extra: Any) -> dict[str, Any]:
    return {"type": "data", "source": "polygon", "name": name, "interval": interval, **extra}


def key_of(name: str, interval: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m.get("name") == name and m.get("interval") == interval


def wire_bar(point: dict[str, Any], name: str, interval: str) -> Bar:
    base = f"polygon-{name}-{interval}"
    o, h, lo, c, v = (point[f"{base}-{field}"] for field in FIELDS)
    return (intervals.parse_date(point["date"]), o, h, lo, c, v)


def updates(client: WsClient, name: str, interval: str, after: int = 0) -> dict[int, Bar]:
    """The last ``data_update`` bar per date of one key."""
    found: dict[int, Bar] = {}
    for message in client.of_type("data_update", after):
        if key_of(name, interval)(message):
            bar = wire_bar(message["data"], name, interval)
            found[bar[0]] = bar
    return found


async def test_search_finds_polygon_tickers_by_symbol_and_by_name(client: WsClient) -> None:
    await client.send({"type": "search_data", "search": "AAPL"})
    first = (await client.wait_for("search_data_done"))["results"][0]
    assert (first["id"], first["details"]["name_label"]) == ("polygon-AAPL", "Apple Inc.")
    for search, expected in (("apple", "AAPL"), ("nasdaq", "I:NDX"), ("X:BTCUSD", "X:BTCUSD")):
        after = len(client.messages)
        await client.send({"type": "search_data", "search": search})
        found = await client.wait_for("search_data_done", after=after)
        assert expected in [r["name"] for r in found["results"]], search


async def test_data_init_is_the_rest_aggregates_for_intraday_daily_weekly_and_monthly(
    client: WsClient, fake: FakePolygon
) -> None:
    cases = [("AAPL", "1m", 300), ("AAPL", "1d", 300), ("KO", "1w", 60), ("MSFT", "1M", 14)]
    cases += [("X:BTCUSD", "4h", 200)]
    for name, interval, count in cases:
        await client.send(request(name, interval, count=count, stream=False))
    for name, interval, count in cases:
        init = await client.wait_for("data_init", key_of(name, interval), timeout=30)
        bars = [wire_bar(point, name, interval) for point in init["data"]]
        assert len(bars) == count, (name, interval)
        assert bars == rest_bars(fake, name, interval, bars[0][0], bars[-1][0]), (name, interval)
    days = await client.wait_for("data_init", key_of("AAPL", "1d"))
    hours = {point["date"][11:] for point in days["data"]}
    assert hours == {"04:00:00", "05:00:00"}  # New York midnight, with and without DST
    weeks = await client.wait_for("data_init", key_of("KO", "1w"))
    assert {datetime.fromisoformat(p["date"]).weekday() for p in weeks["data"]} == {6}


async def test_live_bars_built_from_streamed_aggregates_equal_the_rest_aggregates(
    client: WsClient, running: FakePolygon
) -> None:
    keys = [("NVDA", "1m"), ("NVDA", "5m"), ("NVDA", "1h"), ("X:SOLUSD", "1m")]
    for name, interval in keys:
        await client.send(request(name, interval, count=5))
    for name, interval in keys:
        await client.wait_for("data_init", key_of(name, interval))
    start = running.now_ms()
    await asyncio.to_thread(wait_until, lambda: running.now_ms() > start + 200_000, "3 minutes")
    running.freeze(True)
    await settled(
        lambda: all(
            matches_rest(running, updates(client, name, interval), name, interval)
            for name, interval in keys
        )
    )
    for name, interval in keys:
        live = updates(client, name, interval)
        assert live, (name, interval)
        expected = rest_bars(running, name, interval, min(live), max(live))
        assert sorted(live.values()) == expected, (name, interval)
    assert len(updates(client, "NVDA", "1m")) >= 3


async def test_after_a_dropped_connection_the_missed_bars_are_published(
    client: WsClient, running: FakePolygon, server: ServerProcess
) -> None:
    running.set_speed(120)
    await client.send(request("X:LTCUSD", "1m", count=5))
    await client.wait_for("data_init", key_of("X:LTCUSD", "1m"))
    await client.wait_for("data_update", key_of("X:LTCUSD", "1m"))
    opened = running.connections_opened.get("crypto", 0)
    running.drop_connections("crypto")
    dropped_at = running.now_ms() // 1000
    await asyncio.to_thread(
        wait_until, lambda: running.connections_opened.get("crypto", 0) > opened, "a reconnect"
    )
    resumed_at = running.now_ms() // 1000
    await asyncio.sleep(seconds(2))
    running.freeze(True)
    await settled(
        lambda: matches_rest(running, updates(client, "X:LTCUSD", "1m"), "X:LTCUSD", "1m")
    )
    live = updates(client, "X:LTCUSD", "1m")
    expected = rest_bars(running, "X:LTCUSD", "1m", min(live), max(live))
    assert resumed_at - dropped_at >= 60  # at least one whole bar formed while disconnected
    assert sorted(live.values()) == expected
    assert server.get("/health")["providers"]["polygon"]["status"] == "ok"


async def test_history_past_polygon_s_per_minute_limit_waits_its_turn(
    client: WsClient, fake: FakePolygon
) -> None:
    """Four 429s in a row without Retry-After (Polygon's free plan past 5 requests a
    minute): the history request waits them out within the hub's wait and is answered (the
    client got error rate_limited after urllib3's three quick retries)."""
    fake.clear_logs()
    fake.fail_rest(429, times=4)
    await client.send(request("KO", "1h", count=20, stream=False))
    init = await client.wait_for("data_init", key_of("KO", "1h"), timeout=30)
    bars = [wire_bar(point, "KO", "1h") for point in init["data"]]
    assert len(bars) == 20
    assert bars == rest_bars(fake, "KO", "1h", bars[0][0], bars[-1][0])
    assert client.of_type("error") == []
    assert [r.status for r in fake.rest_requests[:5]] == [429, 429, 429, 429, 200]


async def test_auth_failed_is_reported_to_clients_and_health_and_retried_with_backoff(
    client: WsClient, running: FakePolygon, server: ServerProcess
) -> None:
    await client.send(request("C:GBPUSD", "1m", count=5))
    await client.wait_for("data_update", key_of("C:GBPUSD", "1m"))
    attempts = running.auth_attempts.get("forex", 0)
    running.fail_auth(True)
    running.drop_connections("forex")
    error = await client.wait_for("error", lambda m: m.get("code") == "auth_failed")
    assert error["request"]["name"] == "C:GBPUSD"
    assert "forex" in error["message"] and "authentication failed" in error["message"]
    health = server.get("/health")["providers"]["polygon"]
    assert health["state"] == "running" and health["status"] == "auth_failed"
    assert "forex: auth_failed" in health["status_detail"]
    assert running.auth_attempts["forex"] == attempts + 1
    await asyncio.sleep(seconds(3))
    assert running.auth_attempts["forex"] == attempts + 1  # no retry before the 4-6 s backoff
    running.fail_auth(False)
    after = len(client.messages)
    await client.wait_for("data_update", key_of("C:GBPUSD", "1m"), timeout=10, after=after)
    assert server.get("/health")["providers"]["polygon"]["status"] == "ok"
