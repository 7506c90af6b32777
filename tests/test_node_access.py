"""A provider node's ``/health`` and ``/metrics`` follow the hub's access rules (issue 14):
with ``AUTH=token`` ``/health`` is a public liveness answer whose details need a key, and
``/metrics`` needs a key unless ``METRICS_PUBLIC=true``; errors have the documented shape.

Real ``server.py --role providers`` processes on the shared Redis, each under its own
``BUS_PREFIX``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import bus_deploy
from tests.bus_deploy import SHARED_REDIS
from tests.harness import ServerProcess, seconds

KEY = "node-test-key-1"


class KeyedNode(ServerProcess):
    """A provider node whose own health checks (the harness's) carry the key."""

    def get(self, path: str) -> Any:
        request = urllib.request.Request(self.url + path, headers=bearer())
        with urllib.request.urlopen(request, timeout=seconds(10)) as response:
            return json.loads(response.read())


def http(node: ServerProcess, path: str, method: str = "GET", **headers: str) -> Any:
    """(status, body as JSON or text, headers) of one request."""
    request = urllib.request.Request(node.url + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=seconds(10)) as response:
            status, body, got = response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        status, body, got = error.code, error.read(), error.headers
    text = body.decode()
    return status, (json.loads(text) if text[:1] in ("{", "[") else text), got


def start_node(tmp: Path, name: str, **extra: str) -> ServerProcess:
    env = bus_deploy.bus_env(
        tmp, SHARED_REDIS, bus_deploy.new_prefix(), name, AUTH="token", API_KEYS=KEY, **extra
    )
    return KeyedNode(env, tmp / f"{name}.server.log", args=("--role", "providers")).start()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    running = start_node(tmp_path_factory.mktemp("node_access"), "node")
    try:
        yield running
    finally:
        running.stop()


def bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_node_health_is_public_liveness_and_its_details_need_a_key(node: ServerProcess) -> None:
    status, public, _ = http(node, "/health")
    assert status == 200
    assert set(public) == {"status", "version"} and public["status"] == "ok"
    assert http(node, "/health", method="HEAD")[0] == 200
    status, detail, _ = http(node, "/health", **bearer())
    assert status == 200
    assert detail["role"] == "providers" and set(detail["leases"]) == {"counting"}
    assert detail["providers"]["counting"]["pid"] > 0
    # A wrong key is no key: the liveness answer only.
    assert set(http(node, "/health", **bearer("wrong"))[1]) == {"status", "version"}


def test_node_metrics_need_a_key_and_refuse_in_the_documented_shape(node: ServerProcess) -> None:
    for headers in ({}, bearer("wrong")):
        status, body, got = http(node, "/metrics", **headers)
        assert status == 401
        assert body["error"] == "unauthorized" and body["message"]
        assert got["WWW-Authenticate"].startswith("Bearer")
    status, text, _ = http(node, "/metrics", **bearer())
    assert status == 200 and "candlewire_bus_up 1" in text
    status, text, _ = http(node, f"/metrics?token={KEY}")
    assert status == 200 and "candlewire_bus_lease_held" in text
    assert "candlewire_provider_memory_bytes{source=" in text  # its provider processes
    assert "candlewire_provider_updates_merged_total{source=" in text


def test_node_metrics_are_public_when_the_operator_says_so(tmp_path: Path) -> None:
    node = start_node(tmp_path, "public", METRICS_PUBLIC="true")
    try:
        status, text, _ = http(node, "/metrics")
        assert status == 200 and "candlewire_bus_up" in text
        assert set(http(node, "/health")[1]) == {"status", "version"}
    finally:
        node.stop()
