"""An ``indicator``'s ``count`` is bounded by the server's ``MAX_COUNT``, as a ``data``
request's is (README, "Indicators and the scanner"), not by a fixed figure of its own.

The real server.py with the ``counting`` provider and ``MAX_COUNT`` raised past 50,000; a
real WebSocket client.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import ServerProcess, WsClient, populated_server

MAX_COUNT = 60_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("max_count")
    with populated_server(tmp, PROVIDERS="counting", MAX_COUNT=str(MAX_COUNT)) as running:
        yield running


def sma(chart_id: str, count: int) -> dict[str, Any]:
    return {
        "type": "indicator",
        "id": chart_id,
        "indicator": {"id": "talib.overlap.SMA", "type": "indicator"},
        "inputs": {"timeperiod": 3},
        "dataMap": {
            "close": {
                "source": "counting",
                "name": "AAA",
                "interval": "1h",
                "value": "counting-AAA-1h-close",
                "dataKey": "close",
            }
        },
        "count": count,
        "stream": False,
    }


async def test_a_count_up_to_max_count_is_served(client: WsClient) -> None:
    """50,001 is within this server's MAX_COUNT: answered with rows (the source's whole
    1h history), no error. The parser refused it with a ceiling of its own, 50,000."""
    await client.send(sma("big", 50_001), {"type": "ping", "id": "after"})
    reply = await client.wait_for("indicator_init", lambda m: m.get("id") == "big", timeout=15)
    assert reply["data"], reply
    await client.wait_for("pong", lambda m: m.get("id") == "after")
    assert not client.of_type("error")


@pytest.mark.parametrize("count", [0, MAX_COUNT + 1])
async def test_a_count_out_of_range_names_max_count(client: WsClient, count: int) -> None:
    """Refused as ``data`` refuses it, with the server's range in the message."""
    chart_id = f"out-{count}"
    await client.send(sma(chart_id, count))
    error = await client.wait_for("error", lambda m: m.get("request", {}).get("id") == chart_id)
    assert error["code"] == "count_out_of_range"
    assert f"1..{MAX_COUNT}" in error["message"], error
    empty = await client.wait_for("indicator_init", lambda m: m.get("id") == chart_id)
    assert empty["data"] == []


async def test_a_count_is_ignored_when_a_range_is_given(client: WsClient) -> None:
    """As in Tradiny, ``range`` decides the rows: a saved config's stale ``count`` (here one
    past MAX_COUNT) does not get the request refused."""
    request = sma("ranged", MAX_COUNT + 1) | {"range": ["2020-01-01 00:00:00", "x"]}
    await client.send(request, {"type": "ping", "id": "ranged"})
    reply = await client.wait_for("indicator_init", lambda m: m.get("id") == "ranged")
    assert reply["data"], reply
    await client.wait_for("pong", lambda m: m.get("id") == "ranged")
    assert not [m for m in client.of_type("error") if m["request"].get("id") == "ranged"]
