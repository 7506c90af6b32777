"""The Charting Library's UDF adapter (``UDFCompatibleDatafeed``) against the real server,
reproduced request by request in Python: its URLs, its parameters, and what it makes of each
body (it never looks at the HTTP status). Its code is TradingView's and stays out of this
repository; :class:`Adapter` does what it does, no more.
"""

from __future__ import annotations

import itertools
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import ServerProcess, base_env, populate, seconds

KEY = "udf-adapter-test-key"


class Unusable(Exception):
    """What the adapter throws or rejects with."""


class Adapter:
    """``UDFCompatibleDatafeed(datafeedURL, updateFrequency)``, optionally with the headers
    of its ``Requester`` (the only way it sends a key)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.headers = headers or {}
        self.requests: list[tuple[str, int]] = []

    def send(self, path: str, params: dict[str, object] | None = None) -> Any:
        """``Requester.sendRequest``: ``fetch(url + "/" + path + "?" + params)``, then
        ``JSON.parse(await response.text())`` whatever the status."""
        if params:
            path += "?" + "&".join(
                f"{urllib.parse.quote(k, safe='')}={urllib.parse.quote(str(v), safe='')}"
                for k, v in params.items()
            )
        request = urllib.request.Request(f"{self.url}/{path}", headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=seconds(30)) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        self.requests.append((path, status))
        try:
            return json.loads(body)
        except ValueError as exc:
            raise Unusable(f"not JSON: {body[:80]!r}") from exc

    def on_ready(self) -> dict[str, Any]:
        """``onReady``: the body of ``config`` is the configuration (an unreachable server
        gives the defaults); ``_setupWithConfiguration`` throws, and ``onReady`` never calls
        back, unless it supports search or group requests."""
        config: dict[str, Any] = self.send("config")
        if not config.get("supports_search") and not config.get("supports_group_request"):
            raise Unusable("Unsupported datafeed configuration: onReady never calls back")
        self.config = config
        return config

    def resolve_symbol(self, name: str) -> dict[str, Any]:
        body: dict[str, Any] = self.send("symbols", {"symbol": name})
        if "s" in body:
            raise Unusable("unknown_symbol")
        return body

    def search_symbols(self, text: str, exchange: str = "", kind: str = "") -> list[Any]:
        body = self.send(
            "search", {"limit": 30, "query": text.upper(), "type": kind, "exchange": exchange}
        )
        return [] if isinstance(body, dict) and "s" in body else list(body)

    def get_bars(
        self, ticker: str, resolution: str, start: int, to: int, count: int | None
    ) -> tuple[list[dict[str, float]], dict[str, Any]]:
        """``HistoryProvider.getBars``: bars in ms, ``meta`` with ``noData``/``nextTime``."""
        params: dict[str, object] = {
            "symbol": ticker,
            "resolution": resolution,
            "from": start,
            "to": to,
        }
        if count is not None:
            params["countback"] = count
        body = self.send("history", params)
        if body.get("s") not in ("ok", "no_data"):
            raise Unusable(str(body.get("errmsg")))
        if body["s"] == "no_data":
            return [], {"noData": True, "nextTime": body.get("nextTime")}
        bars = []
        for i, t in enumerate(body["t"]):
            bar = {"time": t * 1000, "close": float(body["c"][i])}
            for key, name in (("o", "open"), ("h", "high"), ("l", "low"), ("v", "volume")):
                bar[name] = float(body[key][i]) if key in body else bar["close"]
            bars.append(bar)
        return bars, {"noData": False}

    def get_quotes(self, symbols: list[str]) -> list[dict[str, Any]]:
        """``QuotesProvider.getQuotes``: ``symbols`` joined by ``toString()`` (commas); the
        body's ``d`` when its ``s`` is "ok", else it rejects with ``errmsg``."""
        body = self.send("quotes", {"symbols": ",".join(symbols)})
        if body.get("s") != "ok":
            raise Unusable(str(body.get("errmsg")))
        return list(body["d"])

    def server_time(self) -> int | None:
        value = self.send("time")
        return int(value) if isinstance(value, (int, float, str)) else None


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``AUTH=token`` with one key, and a request rate that a few requests exhaust."""
    tmp = tmp_path_factory.mktemp("udf-adapter-keyed")
    env = base_env(
        tmp, PROVIDERS="counting", AUTH="token", API_KEYS=KEY,
        REQUESTS_PER_SECOND="0.2", REQUESTS_BURST="40",
    )  # fmt: skip
    assert populate(env).returncode == 0
    with KeyedServer(env, tmp / "server.log") as running:
        yield running


class KeyedServer(ServerProcess):
    def get(self, path: str) -> Any:
        request = urllib.request.Request(self.url + path, headers={"X-API-Key": KEY})
        with urllib.request.urlopen(request, timeout=seconds(10)) as response:
            return json.loads(response.read())


def test_a_refused_config_still_lets_the_adapter_get_ready_and_fail_visibly(
    keyed: ServerProcess,
) -> None:
    """Without a key, ``/udf/config`` was a bare refusal: the adapter took it for its
    configuration, threw "Unsupported datafeed configuration", and ``onReady`` never called
    back: the chart stayed blank with no error. Now it gets ready, and the refusals of
    ``symbols`` and ``history`` reach the library as errors."""
    adapter = Adapter(keyed.url + "/udf")
    config = adapter.on_ready()
    assert adapter.requests == [("config", 401)]
    assert config["s"] == "error" and config["errmsg"]
    assert config["supports_search"] is True and config["supports_group_request"] is False
    assert "exchanges" not in config and "symbols_types" not in config  # nothing leaks
    with pytest.raises(Unusable, match="unknown_symbol"):
        adapter.resolve_symbol("counting:AAA")
    assert adapter.search_symbols("AAA") == []
    with pytest.raises(Unusable, match="authentication required"):
        adapter.get_bars("counting:AAA", "60", 0, int(time.time()), 10)
    with pytest.raises(Unusable, match="authentication required"):
        adapter.get_quotes(["counting:AAA"])
    wrong = Adapter(keyed.url + "/udf", {"X-API-Key": "not-the-key"})
    assert wrong.on_ready()["supports_search"] is True
    assert wrong.requests == [("config", 401)]


def test_the_adapter_with_its_key_in_the_requesters_headers(keyed: ServerProcess) -> None:
    adapter = Adapter(keyed.url + "/udf", {"Authorization": f"Bearer {KEY}"})
    config = adapter.on_ready()
    assert (
        "s" not in config
        and {"value": "counting", "name": "counting", "desc": "counting"} in (config["exchanges"])
    )
    info = adapter.resolve_symbol("counting:AAA")
    now = int(time.time())
    bars, meta = adapter.get_bars(info["ticker"], "60", now - 300 * 3600, now, 300)
    assert len(bars) == 300 and meta == {"noData": False}
    assert abs((adapter.server_time() or 0) - now) < 5
    assert [quote["s"] for quote in adapter.get_quotes(["counting:AAA"])] == ["ok"]


def test_a_config_over_the_request_rate_still_lets_the_adapter_get_ready(
    keyed: ServerProcess,
) -> None:
    """A chart reloaded by a client over its request rate: the 429 of ``config`` must not
    leave ``onReady`` hanging either."""
    adapter = Adapter(keyed.url + "/udf", {"X-API-Key": KEY})
    statuses: list[int] = []
    while not statuses or statuses[-1] != 429:
        adapter.on_ready()
        statuses.append(adapter.requests[-1][1])
        assert len(statuses) < 200, "the request rate was never reached"
    assert adapter.config["s"] == "error" and "retry" in adapter.config["errmsg"]
    assert adapter.config["supports_search"] is True


# ---------------------------------------------------------------- without access control

STEP = {"5": 300, "60": 3600, "1D": 86_400, "D": 86_400}


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("udf-adapter")
    env = base_env(tmp, PROVIDERS="counting", HISTORY_TIMEOUT="5")
    assert populate(env).returncode == 0
    with ServerProcess(env, tmp / "server.log") as running:
        yield running


@pytest.mark.parametrize(("resolution", "count"), [("5", 2000), ("60", 300), ("1D", 300), ("D", 7)])
def test_the_library_pages_back_until_no_data(
    plain: ServerProcess, resolution: str, count: int
) -> None:
    """``getBars`` with ``firstDataRequest``, then ``to`` = the oldest bar so far, each
    time ``countBack`` bars, until ``noData``: ascending, no duplicate and no gap across
    pages, times in ms, and the end of the data (30 days ago for this provider) stops it."""
    adapter = Adapter(plain.url + "/udf")
    assert adapter.on_ready()["supports_search"] is True
    found = adapter.search_symbols("aaa", exchange="counting")
    info = adapter.resolve_symbol(found[0]["ticker"])
    step = STEP[resolution]
    to = int(time.time())
    received: list[float] = []
    for _ in range(20):
        bars, meta = adapter.get_bars(info["ticker"], resolution, to - count * step, to, count)
        if meta["noData"]:
            assert bars == [] and meta.get("nextTime") is None
            break
        times = [bar["time"] for bar in bars]
        assert times == sorted(set(times)) and times[-1] < to * 1000
        assert all(bar["low"] <= bar["close"] <= bar["high"] for bar in bars)
        received = times + received
        to = int(times[0] // 1000)
    else:
        pytest.fail("paging never reached noData")
    gaps = {b - a for a, b in itertools.pairwise(received)}
    assert gaps == {step * 1000}, "a duplicate or a gap between pages"
    listed = (int(time.time()) // 86_400 - 30) * 86_400  # the counting provider's first bar
    assert received[0] == listed * 1000


def test_the_pulse_request_sees_the_forming_bar(plain: ServerProcess) -> None:
    """``DataPulseProvider``: ``to`` = the browser's clock, ``from`` = 10 bars before,
    ``countBack`` 2; a new bar needs the one before it too."""
    adapter = Adapter(plain.url + "/udf")
    now = int(time.time())
    bars, _ = adapter.get_bars("counting:BBB", "5", now - 10 * 300, now, 2)
    assert [bar["time"] for bar in bars] == [
        (now - now % 300 - 300) * 1000,
        (now - now % 300) * 1000,
    ]


def history_fetches(server: ServerProcess) -> float:
    text = str(server.get("/metrics"))
    for line in text.splitlines():
        if line.startswith('candlewire_history_fetches_total{source="counting"}'):
            return float(line.split()[-1])
    return 0.0


def test_polls_until_now_are_answered_from_the_stream_not_a_history_call_each(
    plain: ServerProcess,
) -> None:
    """The pulse polls a key nobody subscribes to: each poll past the planner's one-second
    freshness was a provider history call (an upstream's budget spent on polls). A poll
    until now keeps the key streamed for a minute, so the next polls read the live cache."""
    adapter = Adapter(plain.url + "/udf")
    now = int(time.time())
    first, _ = adapter.get_bars("counting:CCC", "1", now - 600, now, 2)
    assert len(first) == 2
    before = history_fetches(plain)
    closes = []
    for _ in range(4):
        time.sleep(1.2)  # time must pass: past the planner's one-second tail freshness
        now = int(time.time())
        bars, _ = adapter.get_bars("counting:CCC", "1", now - 600, now, 2)
        assert len(bars) == 2
        closes.append((bars[-1]["time"], bars[-1]["volume"]))  # grows every second
    assert history_fetches(plain) - before <= 1  # a minute may turn: one tail call at most
    assert len(set(closes)) > 1, closes  # the forming bar moved with the stream


def test_an_endpoint_the_server_lacks_answers_in_the_datafeeds_error_shape(
    plain: ServerProcess,
) -> None:
    """``getMarks`` (and any path not served) reject with the body's ``errmsg``: a bare 404
    made the adapter reject with "undefined". (This asked for ``quotes`` until the server
    served them.)"""
    adapter = Adapter(plain.url + "/udf")
    body = adapter.send("marks", {"symbol": "counting:AAA", "from": 0, "to": 60})
    assert body["s"] == "error" and "marks" in body["errmsg"]
    assert body["error"] == "not_found"
    assert adapter.requests[-1][1] == 404


def test_the_watchlists_quotes_name_each_symbol_as_asked_with_the_days_change(
    plain: ServerProcess,
) -> None:
    """``getQuotes`` (the Trading Platform's watchlist and details, polled): one entry per
    symbol in the order asked, ``n`` exactly as asked (the library matches by it), the last
    price and the change from the previous daily close; an unknown symbol is an entry with
    ``s: error``, not a failed request."""
    adapter = Adapter(plain.url + "/udf")
    asked = ["counting:AAA", "BBB", "counting:NOPE", "counting:AAA", "counting:HANG"]
    started = time.monotonic()
    quotes = adapter.get_quotes(asked)
    assert time.monotonic() - started < seconds(10)  # HANG's provider never answers
    assert [q["n"] for q in quotes] == asked
    assert [q["s"] for q in quotes] == ["ok", "ok", "error", "ok", "error"]
    assert quotes[2]["v"] == {} and "NOPE" in quotes[2]["errmsg"]
    assert "ask again" in quotes[4]["errmsg"]
    now = int(time.time())
    days, _ = adapter.get_bars("counting:AAA", "1D", now - 10 * 86_400, now + 1, 2)
    values = quotes[0]["v"]
    assert values["short_name"] == "AAA" and values["exchange"] == "counting"
    assert values["original_name"] == "counting:AAA"
    assert values["prev_close_price"] == days[-2]["close"]
    assert values["open_price"] == days[-1]["open"]
    assert values["low_price"] <= values["lp"] <= values["high_price"]
    assert values["ch"] == pytest.approx(values["lp"] - values["prev_close_price"], abs=1e-9)
    assert values["chp"] == round(values["ch"] / values["prev_close_price"] * 100, 2)
    assert quotes[1]["v"]["short_name"] == "BBB"
    with pytest.raises(Unusable, match="symbols"):
        adapter.get_quotes([])
    with pytest.raises(Unusable, match="at most"):
        adapter.get_quotes([f"counting:S{i}" for i in range(101)])
