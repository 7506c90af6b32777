"""Memory of departed clients returns.

- Real server: after clients that asked for large replies (some never reading) leave, the
  hub's RSS comes back near what it was before they came (the bars they loaded stay cached:
  the baseline is taken with the cache already warm).
- In process, with the garbage collector off: a departed client's own objects (its hub
  client, outbox, connection, writer, uvicorn protocol) are freed by reference counting,
  with no collection (they used to form reference cycles that held every pending frame).
- The collection policy of server.py: after clients left it collects (at most that often)
  and freezes the survivors; without departures it waits for the full interval.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import server as entry
from tests.harness import (
    ServerProcess,
    WsClient,
    eventually,
    populated_server,
    same_key,
    seconds,
)
from tests.test_slow_clients import KEYS, client_frame, data, never_reading_client
from tests.test_socket_writer import serving_in_process

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with populated_server(tmp_path_factory.mktemp("memory"), PROVIDERS="counting") as running:
        yield running


async def _read_all(url: str, requests: list[dict[str, Any]]) -> None:
    client = await WsClient.open(url, max_size=None)
    await client.send(*requests)
    after = 0
    for _ in requests:
        init = await client.wait_for("data_init", after=after, timeout=60)
        after = next(i for i, m in enumerate(client.messages) if m is init) + 1
    await client.close()


async def _settled_rss(hub: psutil.Process) -> int:
    """The RSS once it stopped moving by more than 1 MiB over half a second."""
    previous = hub.memory_info().rss
    deadline = time.monotonic() + seconds(10)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = hub.memory_info().rss
        if abs(now - previous) < MIB:
            return now
        previous = now
    return previous


async def test_rss_returns_near_its_baseline_after_clients_with_large_requests_leave(
    server: ServerProcess,
) -> None:
    hub = psutil.Process(server.proc.pid)  # type: ignore[union-attr]
    requests = [data(n, i, 10_000) for n, i in KEYS]
    await _read_all(server.ws_url, requests)  # the bars are cached from here on
    baseline = await _settled_rss(hub)

    stalled = [never_reading_client(server) for _ in range(2)]
    for sock in stalled:  # 45 replies of about 1 MB each, never read
        sock.sendall(client_frame(json.dumps(requests * 5).encode()))
    await asyncio.gather(*(_read_all(server.ws_url, requests * 2) for _ in range(3)))
    peak = hub.memory_info().rss
    for sock in stalled:
        sock.close()  # gone with replies pending and more waiting to be built

    deadline = time.monotonic() + seconds(15)
    while (rss := hub.memory_info().rss) > baseline + 30 * MIB:
        assert time.monotonic() < deadline, (
            f"RSS {rss / MIB:.0f} MiB after the clients left; baseline {baseline / MIB:.0f}, "
            f"peak {peak / MIB:.0f}"
        )
        await asyncio.sleep(0.2)
    # The stalled clients' pending replies finish (nobody reads them) before their sockets
    # are seen to be gone: wait for that too.
    await eventually(lambda: server.get("/health")["clients"] == 0, what="the clients to leave")


CLIENT_TYPES = {"Client", "Outbox", "_Connection", "DirectWriter", "WebSocketsSansIOProtocol"}


def _alive(names: set[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for obj in gc.get_objects():
        name = type(obj).__name__
        if name in names:
            counts[name] = counts.get(name, 0) + 1
    return counts


async def test_a_departed_clients_objects_are_freed_without_a_collection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving_in_process(tmp_path, monkeypatch) as url:
        gc.collect()
        gc.disable()
        try:
            client = await WsClient.open(url, max_size=None)
            await client.send(data("AAA", "1m", 5000, stream=True), data("BBB", "5m", 3000))
            await client.wait_for("data_init", same_key("BBB", "5m"), timeout=30)
            await client.wait_for("data_update", same_key("AAA", "1m"))
            assert _alive(CLIENT_TYPES).get("Outbox") == 1
            await client.close()
            deadline = time.monotonic() + seconds(5)
            while alive := _alive(CLIENT_TYPES):
                assert time.monotonic() < deadline, f"still alive: {alive}"
                await asyncio.sleep(0.05)
        finally:
            gc.enable()


class _Entrance:
    departures = 0


def test_the_collector_collects_after_departures_at_most_that_often_and_freezes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    collections: list[int] = []
    monkeypatch.setattr(entry.gc, "collect", lambda: collections.append(1) or 0)
    monkeypatch.setattr(entry.gc, "freeze", lambda: collections.append(2))
    monkeypatch.setattr(entry.gc, "unfreeze", lambda: collections.append(3))
    entrance = _Entrance()
    collector = entry.Collector(entrance)  # type: ignore[arg-type]
    start = collector.last
    collector.check(start + entry.FULL_GC_MIN_SECONDS + 1)
    assert collections == []  # nobody left
    entrance.departures = 2
    collector.check(start + 1)
    assert collections == []  # too soon after the last one
    collector.check(start + entry.FULL_GC_MIN_SECONDS + 1)
    assert collections == [1, 2]  # collected what is not frozen, froze the survivors
    collector.check(collector.last + entry.FULL_GC_MIN_SECONDS + 1)
    assert collections == [1, 2]  # nobody left since
    collector.check(collector.last_full + entry.FULL_GC_MAX_SECONDS + 1)  # not exactly: rounding
    assert collections == [1, 2, 3, 1, 2]  # the periodic full one unfreezes first


def test_collection_pauses_are_summarised_per_generation() -> None:
    pauses = entry.GcPauses()
    for generation in (0, 0, 2):
        pauses("start", {"generation": generation})
        pauses("stop", {"generation": generation})
    summary = pauses.summary()
    assert summary.startswith("gen0 n=2 p50=")
    assert "gen1 n=0" in summary
    assert "gen2 n=1" in summary
