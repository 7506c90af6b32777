"""End to end: a bar that a history answer gave while it was forming, and that closed
before the stream that started behind it ever updated it, does not stay half made.

Seen from clients that reconnected after a server restart (the CSV replay at 60x closes a
bar every second): a ``data_init`` answered just before the bar closed held it partial, the
new stream's first update was of the next bar, and the partial bar became a closed bar of
the cache, of every later ``data_init`` and of ``/api/history``, with values no history of
the provider has. The hub now refills from that bar (as after a provider restart): its
clients get its final values as a ``data_update`` before the next bar's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests import harness
from tests.harness import ServerProcess, WsClient, populated_server, same_key

AAA = {"type": "data", "source": "late", "name": "AAA", "interval": "1m", "count": 5}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with populated_server(
        tmp_path_factory.mktemp("unseen"),
        PROVIDERS="late",
        EXTRA_PROVIDERS="late=tests.providers:LateStreamProvider",
        CANDLEWIRE_TEST_STREAM_DELAY="0.5",
    ) as running:
        yield running


async def test_a_forming_bar_closed_unseen_by_the_stream_gets_its_final_values(
    server: ServerProcess,
) -> None:
    # The provider's next bar is "now"'s bar plus a minute: keep clear of a minute's turn.
    harness.until(lambda: 2 < time.time() % 60 < 50, timeout=20, what="mid-minute")
    client = await WsClient.open(server.ws_url)
    try:
        await client.send(AAA)
        init = await client.wait_for("data_init", same_key("AAA", "1m"))
        forming = init["data"][-1]
        assert forming["late-AAA-1m-close"] == 1.0  # half made, as the provider gave it
        date = forming["date"]

        def final_of_forming(m: dict[str, object]) -> bool:
            data = m["data"]
            return isinstance(data, dict) and data["date"] == date

        update = await client.wait_for("data_update", final_of_forming, timeout=5)
        assert update["data"]["late-AAA-1m-close"] == 2.0
        updates = [m["data"]["date"] for m in client.of_type("data_update")]
        assert updates.index(date) == 0  # before the next bar's update
        await client.wait_for("data_update", lambda m: m["data"]["date"] > date)

        history = server.get("/api/history?source=late&name=AAA&interval=1m&count=5")
        closed = {bar["date"]: bar for bar in history["data"]}
        assert closed[date]["late-AAA-1m-close"] == 2.0
        assert not client.of_type("error")
    finally:
        await client.close()
