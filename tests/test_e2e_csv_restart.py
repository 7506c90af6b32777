"""End to end: the CSV replay time survives a server restart (it is a function of wall time)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.model import intervals
from tests.harness import ROOT, ServerProcess, WsClient, base_env, populate, same_key

REQUEST = {"type": "data", "source": "csv", "name": "BTCUSD", "interval": "1m", "count": 10}


def newest(messages: list[dict[str, Any]]) -> int:
    """The newest bar open time in ``data_init`` and ``data_update`` messages."""
    dates = []
    for message in messages:
        if message.get("type") == "data_init":
            dates += [point["date"] for point in message["data"]]
        elif message.get("type") == "data_update":
            dates.append(message["data"]["date"])
    return max(intervals.parse_date(date) for date in dates)


async def test_a_restarted_server_continues_the_replay_instead_of_going_back(
    tmp_path: Path,
) -> None:
    env = base_env(
        tmp_path, PROVIDERS="csv", CSV_FOLDER_PATH=str(ROOT / "data"), CSV_REPLAY_SPEED="60"
    )
    assert populate(env).returncode == 0
    server = ServerProcess(env, tmp_path / "server.log").start()
    try:
        client = await WsClient.open(server.ws_url)
        await client.send(REQUEST)
        init = await client.wait_for("data_init", same_key("BTCUSD", "1m"))
        opened = newest([init])
        await client.wait_for(  # two data minutes later: two wall seconds
            "data_update",
            lambda m: intervals.parse_date(m["data"]["date"]) >= opened + 120,
            timeout=20,
        )
        sent = newest(client.messages)
        await client.close()
        server.stop()
        server.start()
        client = await WsClient.open(server.ws_url)
        await client.send(REQUEST)
        init = await client.wait_for("data_init", same_key("BTCUSD", "1m"))
        await client.close()
    finally:
        server.stop()
    restarted = newest([init])
    assert restarted >= sent, (
        f"the replay went back from {intervals.format_date(sent)}"
        f" to {intervals.format_date(restarted)}"
    )
    assert restarted - sent < 3600  # and it did not jump far ahead either
