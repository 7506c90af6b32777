"""Symbol search shows only what the server can chart: the rows of the enabled providers.

The symbol database keeps every provider that was ever populated (``populate.py`` with
``PROVIDERS=csv,counting``, say); a server started later with ``PROVIDERS=csv,my_provider``
cannot serve ``counting`` (a ``data`` request for it is ``unknown_source``), so its rows
must not be offered by ``search_data``, ``/api/symbols``, ``/udf/search`` or
``/udf/symbols`` either (DESIGN 3 and 4: ``PROVIDERS`` enables providers).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests import harness
from tests.harness import ServerProcess, WsClient


def _get(server: ServerProcess, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(server.url + path, timeout=harness.seconds(10)) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_rows_of_providers_not_enabled_are_not_offered(tmp_path: Path) -> None:
    env = harness.base_env(tmp_path, PROVIDERS="csv,counting,my_provider")
    result = harness.populate(env)
    assert result.returncode == 0, result.stderr
    env["PROVIDERS"] = "csv,my_provider"
    with ServerProcess(env, tmp_path / "server.log") as server:
        client = await WsClient.open(server.ws_url)
        for text in ("AAA", "test", "count", ""):
            mark = len(client.messages)
            await client.send({"type": "search_data", "search": text})
            reply = await client.wait_for("search_data_done", after=mark)
            sources = {row["details"]["source"] for row in reply["results"]}
            assert "counting" not in sources, (text, reply["results"][:3])
        mark = len(client.messages)
        await client.send({"type": "search_data", "search": "test"})
        reply = await client.wait_for("search_data_done", after=mark)
        assert {row["name"] for row in reply["results"]} == {"BTCUSDT", "ETHUSDT"}
        await client.close()

        status, body = _get(server, "/api/symbols?q=AAA")
        assert status == 200 and body["results"] == []
        status, body = _get(server, "/api/symbols?limit=100")
        assert {row["details"]["source"] for row in body["results"]} == {"csv", "my_provider"}
        status, body = _get(server, "/api/symbols?q=&source=counting")
        assert body["results"] == []
        status, body = _get(server, "/udf/search?query=AAA&limit=10")
        assert body == []
        status, body = _get(server, "/udf/symbols?symbol=counting:AAA")
        assert body.get("s") == "error"
        status, body = _get(server, "/udf/symbols?symbol=AAA")
        assert body.get("s") == "error"
        # What is enabled is still found.
        status, body = _get(server, "/api/symbols?q=BTCUSDT")
        assert body["results"][0]["id"] == "my_provider-BTCUSDT"
        status, body = _get(server, "/udf/symbols?symbol=my_provider:ETHUSDT")
        assert body["name"] == "ETHUSDT"
