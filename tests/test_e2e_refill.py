"""End to end: a provider process that dies, or hangs and is killed, loses no bar of an open
chart (the hub refills what closed meanwhile before any newer live update), and history asked
while it restarts is answered by the restarted process.

The CSV replay at 60x closes a one-minute bar every wall second, so a provider down for a few
seconds misses a few bars, which every client used to miss until it reloaded.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from backend.model import intervals
from tests import harness
from tests.harness import ROOT, ServerProcess, WsClient, populated_server, same_key

KEY = {"type": "data", "source": "csv", "name": "BTCUSD", "interval": "1m"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with populated_server(
        tmp_path_factory.mktemp("refill"),
        PROVIDERS="csv",
        CSV_FOLDER_PATH=str(ROOT / "data"),
        CSV_REPLAY_SPEED="60",
        HEARTBEAT_TIMEOUT="3",
    ) as running:
        yield running


def times(messages: list[dict[str, Any]]) -> list[int]:
    """Every bar time the client got for the key, in the order it got them."""
    seen: list[int] = []
    for message in messages:
        if not same_key("BTCUSD", "1m")(message):
            continue
        if message["type"] == "data_init":
            seen += [intervals.parse_date(point["date"]) for point in message["data"]]
        elif message["type"] == "data_update":
            seen.append(intervals.parse_date(message["data"]["date"]))
    return seen


def provider_pid(server: ServerProcess) -> int:
    return int(server.get("/health")["providers"]["csv"]["pid"] or 0)


async def restart_provider(server: ServerProcess, hang_first: bool) -> None:
    pid = provider_pid(server)
    if hang_first:  # stopped, then killed by the heartbeat check
        os.kill(pid, signal.SIGSTOP)
    else:  # the restart's backoff (1 s) is a minute of the 60x replay: a bar closes meanwhile
        os.kill(pid, signal.SIGKILL)
    await harness.eventually(
        lambda: provider_pid(server) not in (0, pid), timeout=30, what="a new provider process"
    )


@pytest.mark.parametrize("hang_first", [False, True], ids=["killed", "hung"])
async def test_an_open_chart_gets_every_bar_that_closed_while_its_provider_was_down(
    server: ServerProcess, hang_first: bool
) -> None:
    client = await WsClient.open(server.ws_url)
    try:
        await client.send(KEY | {"count": 5})
        await client.wait_for("data_update", same_key("BTCUSD", "1m"))
        before = max(times(client.messages))
        await restart_provider(server, hang_first)
        await client.wait_for(  # five bars past the newest one before the restart
            "data_update",
            lambda m: (
                same_key("BTCUSD", "1m")(m)
                and intervals.parse_date(m["data"]["date"]) >= before + 5 * 60
            ),
            timeout=30,
        )
        got = times(client.messages)
        assert got == sorted(got), "an update went back in time"
        distinct = sorted(set(got))
        holes = [(a, b) for a, b in itertools.pairwise(distinct) if b - a != 60]
        assert holes == [], [(intervals.format_date(a), intervals.format_date(b)) for a, b in holes]
        last = {}
        for message in client.of_type("data_update"):
            last[message["data"]["date"]] = message["data"]
        end = intervals.format_date(distinct[-2])
        await client.send(
            {"type": "data_history", **{k: KEY[k] for k in ("source", "name", "interval")}}
            | {"end": end, "count": 8}
        )
        history = await client.wait_for("data_history", same_key("BTCUSD", "1m"))
        updates = [m["data"] for m in client.of_type("data_update")]
        for point in history["data"]:  # every closed bar the client got has the final values
            if point["date"] in last:
                sent = [u for u in updates if u["date"] == point["date"]]
                assert last[point["date"]] == point, f"the bar's updates: {sent}"
    finally:
        await client.close()


async def test_history_asked_while_the_provider_restarts_is_answered_by_the_new_process(
    server: ServerProcess,
) -> None:
    """It went into the dead process's queue and waited out HISTORY_TIMEOUT (30 s), then
    answered with the few bars the cache had."""
    client = await WsClient.open(server.ws_url)
    try:
        pid = provider_pid(server)
        os.kill(pid, signal.SIGKILL)
        await harness.eventually(
            lambda: server.get("/health")["providers"]["csv"]["state"] != "running",
            what="the provider's restart",
        )
        await client.send(KEY | {"interval": "30m", "count": 300, "stream": False})
        init = await client.wait_for("data_init", same_key("BTCUSD", "30m"), timeout=20)
        assert len(init["data"]) == 300
        assert client.of_type("error") == []
    finally:
        await client.close()


async def test_a_frozen_hub_does_not_kill_the_providers_it_did_not_read(
    server: ServerProcess,
) -> None:
    """The server itself stopped (SIGSTOP, a debugger, a swapped-out or suspended VM) for
    longer than HEARTBEAT_TIMEOUT: its providers kept writing, their heartbeats waited unread
    in the pipes. The watchdog's first tick after the resume measured that silence and killed
    every provider ("no heartbeat for 5 s", an ERROR and a restart each, upstreams
    reconnected), though none of them had stopped."""
    client = await WsClient.open(server.ws_url)
    try:
        await client.send(KEY | {"count": 5})
        await client.wait_for("data_update", same_key("BTCUSD", "1m"))
        before = server.get("/health")["providers"]["csv"]
        assert server.proc is not None
        for _ in range(3):  # the loop stops at any point of its turn: a few times
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(5)  # the freeze itself (HEARTBEAT_TIMEOUT is 3 s)
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            resumed = max(times(client.messages))
            await client.wait_for(  # two wall seconds of live bars: two watchdog ticks
                "data_update",
                lambda m, since=resumed: (
                    same_key("BTCUSD", "1m")(m)
                    and intervals.parse_date(m["data"]["date"]) >= since + 2 * 60
                ),
                timeout=30,
            )
        after = server.get("/health")["providers"]["csv"]
        assert (after["pid"], after["restarts"]) == (before["pid"], before["restarts"]), after
        got = times(client.messages)
        assert got == sorted(got), "an update went back in time"
    finally:
        await client.close()
