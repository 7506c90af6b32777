"""End to end: ``/health`` shows a provider ``stuck`` while one of its history calls runs
past ``HISTORY_TIMEOUT``, and the provider's own status again once it returns.

The runner said ``ok`` when the stuck call returned, whatever the provider had reported
itself: a Binance provider under a 418 ban showed ``ok`` in ``/health`` for the rest of the
ban. The same runner serves every provider (CSV's ``ready``, Polygon's ``ok`` with its URLs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.harness import WsClient, eventually, populated_server


def provider_health(server: Any) -> dict[str, Any]:
    health: dict[str, Any] = server.get("/health")["providers"]["banned"]
    return health


async def test_a_stuck_history_call_that_returns_gives_back_the_provider_s_own_status(
    tmp_path: Path,
) -> None:
    stuck = tmp_path / "stuck"
    with populated_server(
        tmp_path,
        PROVIDERS="banned",
        EXTRA_PROVIDERS="banned=tests.providers:BannedProvider",
        CANDLEWIRE_TEST_STUCK=str(stuck),
        HISTORY_TIMEOUT="1",
    ) as server:
        await eventually(lambda: provider_health(server)["status"] == "banned", what="banned")
        stuck.touch()
        client = await WsClient.open(server.ws_url)
        try:
            request = {"type": "data", "source": "banned", "name": "AAA", "interval": "1h"}
            await client.send({**request, "count": 3, "stream": False})
            error = await client.wait_for("error", timeout=10)
            assert error["code"] == "provider_unavailable"  # the hub's HISTORY_TIMEOUT
            await eventually(
                lambda: provider_health(server)["status"] == "stuck", what="reported stuck"
            )
            detail = provider_health(server)["status_detail"]
            assert "1 get_history call(s) past HISTORY_TIMEOUT (AAA 1h)" in detail
            assert "its own status: banned: HTTP 418" in detail
            stuck.unlink()  # the call returns
            await eventually(
                lambda: provider_health(server)["status"] != "stuck", what="the call returned"
            )
            health = provider_health(server)
            assert (health["status"], health["status_detail"]) == (
                "banned",
                "HTTP 418: banned until the test ends",
            )
        finally:
            await client.close()
