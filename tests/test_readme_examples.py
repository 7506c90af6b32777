"""The README's examples, run as a user would copy them: the provider of "Write your own
provider" (registered through ``EXTRA_PROVIDERS``) serves search, history and live bars;
the ``indicator`` and ``scan`` requests of "Requests by example" are answered, not refused.
An example that does not run (the provider's once called functions that did not exist)
misleads every user who starts from it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.harness import ROOT, WsClient, populated_server, same_key

README = (ROOT / "README.md").read_text()


def code_block(language: str, first_line: str) -> str:
    """The README's fenced block of ``language`` whose first line starts with ``first_line``."""
    for block in re.findall(rf"```{language}\n(.*?)```", README, re.S):
        if block.startswith(first_line):
            return str(block)
    raise AssertionError(f"no {language} block starting {first_line!r} in the README")


def json_block(first_line: str) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(code_block("json", first_line))
    return parsed


async def test_the_provider_example_serves_search_history_and_live_bars(tmp_path: Path) -> None:
    source = code_block("python", "# backend/data_providers/my_provider.py")
    (tmp_path / "readme_provider.py").write_text(source)
    env = {
        "PROVIDERS": "my_provider",
        "EXTRA_PROVIDERS": "my_provider=readme_provider:MyProvider",
        "PYTHONPATH": str(tmp_path),
    }
    with populated_server(tmp_path, **env) as server:
        client = await WsClient.open(server.ws_url)
        try:
            await client.send({"type": "search_data", "search": "btcusdt"})
            found = await client.wait_for("search_data_done")
            assert found["results"][0]["name"] == "BTCUSDT"
            request = {"type": "data", "source": "my_provider", "name": "BTCUSDT"}
            await client.send({**request, "interval": "1m", "count": 50})
            init = await client.wait_for("data_init", same_key("BTCUSDT", "1m"))
            assert len(init["data"]) == 50
            await client.wait_for("data_update", same_key("BTCUSDT", "1m"), timeout=10)
            assert client.of_type("error") == []
        finally:
            await client.close()
    assert "Traceback" not in (tmp_path / "server.log").read_text()


async def test_the_indicator_and_scan_examples_are_answered(tmp_path: Path) -> None:
    indicator = json_block('{"type": "indicator"')
    scan = json_block('{"type": "scan"')
    with populated_server(
        tmp_path, PROVIDERS="csv", CSV_FOLDER_PATH=str(ROOT / "data"), CSV_REPLAY_SPEED="60"
    ) as server:
        client = await WsClient.open(server.ws_url)
        try:
            series = {"source": "csv", "name": "BTCUSD", "interval": "1m"}
            await client.send({"type": "data", **series, "count": 300})  # as a chart does
            await client.send(indicator)
            init = await client.wait_for("indicator_init", lambda m: m.get("id") == "rsi-btc")
            assert len(init["data"]) == 300
            assert isinstance(init["data"][-1]["rsi-btc-RSI"], float)
            await client.wait_for("indicator_update", lambda m: m.get("id") == "rsi-btc", 20)
            await client.send(scan)
            done = await client.wait_for("scan_done", timeout=30)
            assert done["scanned"] >= 1 and not done["stopped"]
            assert client.of_type("error") == []
        finally:
            await client.close()
