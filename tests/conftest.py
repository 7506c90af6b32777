"""Fixtures shared by the end-to-end test modules, and the order the modules run in.

``client`` is a WebSocket client of the module's own ``server`` fixture (each module starts
the server it needs), closed after the test.

The slowest modules run first: ``make test`` hands whole modules to four workers in the
order collected (``--dist loadfile --no-loadscope-reorder``), so a long module started
last would leave the other workers idle at the end of the run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.harness import ServerProcess, WsClient

# Seconds a worker spent in each of the slowest modules (two full runs, 2026-12-07, four
# workers on two cores); the rest follow in name order. Only the order depends on them.
MODULE_SECONDS = {
    "test_browser_page.py": 183,
    "test_binance_provider.py": 141,
    "test_e2e_alerts.py": 78,
    "test_e2e_csv.py": 63,
    "test_alerts_durable.py": 63,
    "test_polygon_provider.py": 61,
    "test_browser.py": 59,
    "test_browser_unserved.py": 55,
    "test_browser_indicators.py": 53,
    "test_binance_docs.py": 48,
    "test_polygon_docs.py": 43,
    "test_e2e_store.py": 43,
    "test_binance_client_model.py": 43,
    "test_user_providers.py": 39,
    "test_e2e_refill.py": 35,
    "test_runtime.py": 34,
    "test_browser_alerts.py": 34,
    "test_startup_failure.py": 33,
    "test_e2e_scan.py": 33,
    "test_bus_alerts.py": 33,
    "test_chat.py": 30,
    "test_polygon_races.py": 29,
    "test_e2e_hub.py": 28,
    "test_e2e_alert_deliveries.py": 28,
    "test_bus_history.py": 27,
    "test_access_hostile.py": 27,
    "test_bus_down_answers.py": 24,
    "test_e2e_csv_changes.py": 22,
    "test_bus.py": 22,
    "test_access_e2e.py": 22,
    "test_search_ranking.py": 21,
    "test_symbols.py": 19,
    "test_fake_polygon.py": 17,
    "test_bus_fencing.py": 17,
    "test_browser_prices.py": 16,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slowest modules first (a stable sort: each module's tests keep their order)."""
    items.sort(key=lambda item: -MODULE_SECONDS.get(item.path.name, 0))


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[WsClient]:
    ws = await WsClient.open(server.ws_url)
    yield ws
    await ws.close()
