"""Fixtures shared by the end-to-end test modules.

``client`` is a WebSocket client of the module's own ``server`` fixture (each module starts
the server it needs), closed after the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.harness import ServerProcess, WsClient


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[WsClient]:
    ws = await WsClient.open(server.ws_url)
    yield ws
    await ws.close()
