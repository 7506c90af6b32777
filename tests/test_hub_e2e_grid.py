"""End to end: the OpenBB live-grid socket (a hub client that watches keys) going from
symbol set A to B and back to A within the linger keeps A streaming."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from tests.harness import ServerProcess, WsClient, populated_server, seconds
from tests.test_openbb import grid, rows_for

__all__ = ["grid"]  # the live-grid socket fixture, on this module's server

LINGER = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("hub_grid")
    with populated_server(
        tmp, PROVIDERS="counting", HISTORY_TIMEOUT="5", STREAM_LINGER_SECONDS=str(LINGER)
    ) as running:
        yield running


async def test_a_grid_going_from_a_to_b_and_back_within_the_linger_keeps_a_streaming(
    server: ServerProcess, grid: WsClient
) -> None:
    await grid.send_raw(json.dumps({"params": {"symbol": "AAA"}}))
    await rows_for(grid, {"AAA"})
    await grid.send_raw(json.dumps({"params": {"symbol": "BBB"}}))
    await rows_for(grid, {"BBB"}, len(grid.messages))
    await grid.send_raw(json.dumps({"params": {"symbol": "AAA"}}))
    await asyncio.sleep(seconds(LINGER * 1.5))
    mark = len(grid.messages)
    await rows_for(grid, {"AAA"}, mark)
    await asyncio.sleep(seconds(0.5))
    assert {m["symbol"] for m in grid.messages[mark:]} == {"AAA"}
    assert server.get("/health")["subscriptions"] == 1
