"""A provider process that gets ahead of the hub merges superseded states of a forming bar
before sending them (only the newest matters); the hub counts them per provider in
``/metrics`` (``candlewire_provider_updates_merged_total``) and its clients still get the
newest state."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import ServerProcess, WsClient, eventually, populated_server, same_key
from tests.providers import BurstProvider

VOLUME = "counting-AAA-1m-volume"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with populated_server(
        tmp_path,
        PROVIDERS="counting",
        EXTRA_PROVIDERS="counting=tests.providers:BurstProvider",
        CANDLEWIRE_TEST_PERIOD="0.05",
    ) as running:
        yield running


def merged(server: ServerProcess) -> dict[str, float]:
    families = {f.name: f for f in text_string_to_metric_families(server.get("/metrics"))}
    family = families.get("candlewire_provider_updates_merged")
    assert family is not None and family.type == "counter", "not in /metrics as a counter"
    return {s.labels["source"]: s.value for s in family.samples if s.name.endswith("_total")}


async def test_states_a_provider_merged_ahead_of_the_hub_are_counted_and_the_newest_arrives(
    server: ServerProcess,
) -> None:
    assert merged(server) == {"counting": 0.0}
    client = await WsClient.open(server.ws_url)
    try:
        await client.send(
            {"type": "data", "source": "counting", "name": "AAA", "interval": "1m"}
            | {"count": 5, "stream": True}
        )
        # the burst's newest state (volume BURST) reaches the client: as an update, or in
        # the data_init if the burst reached the hub before the history did
        init = await client.wait_for("data_init", same_key("AAA", "1m"), timeout=20)
        if init["data"][-1].get(VOLUME) != BurstProvider.BURST:
            await client.wait_for(
                "data_update",
                lambda m: same_key("AAA", "1m")(m) and m["data"][VOLUME] == BurstProvider.BURST,
                timeout=20,
            )
    finally:
        await client.close()
    # the burst went to the pipe as one backlog: only its newest state was sent
    await eventually(lambda: merged(server)["counting"] > 0, 10, "a merge counted")
    assert merged(server) == {"counting": float(BurstProvider.BURST - 1)}
