"""The REST layer (:mod:`backend.api.rest`) on its own: its router over a fake hub.

Requests go through httpx's ASGI transport, so no server, provider or database runs; the
tests pin status codes and error bodies (``{"error": code, "message": text}``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from backend.api import rest
from backend.errors import ProviderUnavailable, UnknownSymbol
from backend.history.planner import Answer
from backend.model import intervals
from backend.model.bars import Bar, SeriesId, WireKeys

T0 = intervals.parse_date("2026-01-05 00:00:00")
BARS: list[Bar] = [(T0 + i * 3600, 1.0 + i, 2.0 + i, 0.5 + i, 1.5 + i, 10.0 * i) for i in range(5)]
ROWS = {
    ("csv", "BTCUSD"): {
        "source": "csv",
        "name": "BTCUSD",
        "type": "candlestick",
        "intervals": ["1m", "1h", "1d"],
    },
    ("csv", "LINE"): {"source": "csv", "name": "LINE", "type": "line", "intervals": []},
}


@dataclass
class FakeSettings:
    MAX_COUNT: int = 1000


class FakeSymbols:
    def __init__(self) -> None:
        self.searches: list[tuple[str, int, str | None]] = []

    async def details(self, source: str, name: str) -> dict[str, Any] | None:
        return ROWS.get((source, name))

    async def search(self, q: str, limit: int, source: str | None = None) -> list[Any]:
        self.searches.append((q, limit, source))
        return [{"id": "csv-BTCUSD", "name": "BTCUSD"}][:limit]


class FakeSupervisor:
    providers = {"csv": object()}

    def get(self, key: str) -> object | None:
        return self.providers.get(key)


@dataclass
class FakePlanner:
    answer: Answer = field(default_factory=lambda: Answer(list(BARS)))
    asked: list[tuple[SeriesId, int | None, int]] = field(default_factory=list)

    async def before(self, key: SeriesId, end: int | None, count: int) -> Answer:
        self.asked.append((key, end, count))
        bars = [b for b in self.answer.bars if end is None or b[0] <= end][-count:]
        return Answer(bars, self.answer.error)


class FakeMetrics:
    def render(self) -> str:
        return "candlewire_clients 0\n"


class FakeHub:
    def __init__(self) -> None:
        self.settings = FakeSettings()
        self.symbols = FakeSymbols()
        self.supervisor = FakeSupervisor()
        self.planner = FakePlanner()
        self.metrics = FakeMetrics()

    def wire_keys(self, key: SeriesId, details: dict[str, Any]) -> WireKeys:
        return WireKeys(key, str(details.get("type", "candlestick")))

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "providers": {}}

    async def search_symbols(
        self, query: str, limit: int, source: str | None = None
    ) -> list[dict[str, Any]]:
        """As ``Hub.search_symbols`` without access control: the index's answer."""
        found: list[dict[str, Any]] = await self.symbols.search(query, limit, source)
        return found


@pytest.fixture
def hub() -> FakeHub:
    return FakeHub()


@pytest.fixture
async def http(hub: FakeHub) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(rest.router)
    app.state.hub = hub
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def history(**params: str | int) -> dict[str, str | int]:
    return {"source": "csv", "name": "BTCUSD", "interval": "1h", **params}


async def test_history_answers_the_last_bars_up_to_end_as_wire_datapoints(
    http: httpx.AsyncClient, hub: FakeHub
) -> None:
    response = await http.get("/api/history", params=history(count=2, end="2026-01-05 03:00:00"))
    assert response.status_code == 200
    body = response.json()
    assert [p["date"] for p in body["data"]] == ["2026-01-05 02:00:00", "2026-01-05 03:00:00"]
    assert body["data"][0]["csv-BTCUSD-1h-close"] == 3.5
    assert body["metadata"] == ROWS[("csv", "BTCUSD")]
    assert hub.planner.asked == [(SeriesId("csv", "BTCUSD", "1h"), T0 + 3 * 3600, 2)]


async def test_history_as_csv_is_a_file_with_a_header(http: httpx.AsyncClient) -> None:
    response = await http.get("/api/history", params=history(count=2, format="csv"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert 'filename="csv-BTCUSD-1h.csv"' in response.headers["content-disposition"]
    lines = response.text.splitlines()
    assert lines[0] == "date,open,high,low,close,volume"
    assert lines[1] == "2026-01-05 03:00:00,4.0,5.0,3.5,4.5,30.0"


async def test_a_symbol_with_no_interval_list_offers_every_interval(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get("/api/history", params=history(name="LINE", interval="1w"))
    assert response.status_code == 200
    assert response.json()["data"][0]["csv-LINE-1w"] == 1.5


@pytest.mark.parametrize(
    ("params", "status", "code", "says"),
    [
        (history(interval="1w"), 400, "unknown_interval", "'1w' for csv:BTCUSD; known: 1m, 1h"),
        (history(interval="7m"), 400, "unknown_interval", "'7m'"),
        (history(source="nope"), 404, "unknown_source", "'nope'; enabled: csv"),
        (history(name="ZZZ"), 404, "unknown_symbol", "csv:ZZZ"),
        (history(count=0), 400, "count_out_of_range", "1..1000"),
        (history(count=1001), 400, "count_out_of_range", "1..1000"),
        (history(count="many"), 400, "invalid_field", "'count' must be a number"),
        (history(count="nan"), 400, "invalid_field", "finite"),
        (history(count="5.5"), 400, "invalid_field", "'count' must be an integer"),
        (history(end="yesterday"), 400, "invalid_field", "'yesterday'"),
        (history(end="2026-03-01 00:00:00 01:00"), 400, "invalid_field", "write its '+' as %2B"),
        (history(format="xml"), 400, "invalid_field", "format"),
        ({"source": "csv", "name": "BTCUSD"}, 400, "missing_field", "'interval'"),
        ({}, 400, "missing_field", "'source'"),
    ],
)
async def test_a_history_request_that_cannot_be_served_gets_a_json_error(
    http: httpx.AsyncClient,
    hub: FakeHub,
    params: dict[str, str | int],
    status: int,
    code: str,
    says: str,
) -> None:
    response = await http.get("/api/history", params=params)
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"error", "message"}
    assert body["error"] == code
    assert says in body["message"]
    assert hub.planner.asked == []


async def test_a_hostile_parameter_is_quoted_briefly(http: httpx.AsyncClient) -> None:
    response = await http.get("/api/history", params=history(interval="x" * 5000))
    assert response.status_code == 400
    assert len(response.content) < 500


async def test_a_provider_failure_without_bars_is_503_with_its_code(
    http: httpx.AsyncClient, hub: FakeHub
) -> None:
    hub.planner.answer = Answer([], ProviderUnavailable("provider 'csv' is down"))
    response = await http.get("/api/history", params=history())
    assert response.status_code == 503
    assert response.json() == {"error": "provider_unavailable", "message": "provider 'csv' is down"}


async def test_a_symbol_the_provider_does_not_know_is_404_not_503(
    http: httpx.AsyncClient, hub: FakeHub
) -> None:
    hub.planner.answer = Answer([], UnknownSymbol("csv: unknown symbol 'BTCUSD'"))
    response = await http.get("/api/history", params=history())
    assert response.status_code == 404
    assert response.json() == {
        "error": "unknown_symbol",
        "message": "csv: unknown symbol 'BTCUSD'",
    }


async def test_a_provider_failure_with_cached_bars_answers_them_and_names_the_error(
    http: httpx.AsyncClient, hub: FakeHub
) -> None:
    hub.planner.answer = Answer(list(BARS), ProviderUnavailable("timed out"))
    response = await http.get("/api/history", params=history(count=3))
    assert response.status_code == 200
    body = response.json()
    assert len(body["data"]) == 3
    assert body["error"] == {"code": "provider_unavailable", "message": "timed out"}


async def test_symbols_searches_with_the_given_limit_and_source(
    http: httpx.AsyncClient, hub: FakeHub
) -> None:
    response = await http.get("/api/symbols", params={"q": "btc", "limit": 5, "source": "csv"})
    assert response.status_code == 200
    assert response.json()["query"] == "btc"
    assert hub.symbols.searches == [("btc", 5, "csv")]


@pytest.mark.parametrize("limit", ["0", "1001", "ten"])
async def test_symbols_with_a_bad_limit_is_a_400_json_error(
    http: httpx.AsyncClient, limit: str
) -> None:
    response = await http.get("/api/symbols", params={"limit": limit})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_field"


async def test_health_and_metrics_come_from_the_hub(http: httpx.AsyncClient) -> None:
    assert (await http.get("/health")).json()["status"] == "ok"
    metrics = await http.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert metrics.text == "candlewire_clients 0\n"
