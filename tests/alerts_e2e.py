"""What the end-to-end alert tests share: a CSV server streaming BTCUSD 1m at 60x with the
fake push service as its operator webhook, Tradiny ``alert`` requests over its bars, the
``/api/alerts`` calls (``test_e2e_alerts.py``, ``test_e2e_alert_deliveries.py``), and a
webhook receiver that can be down (:class:`Hooks`: ``test_alerts_durable.py``,
``test_bus_alerts.py``)."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.fakes.webpush import FakePush
from tests.harness import ROOT, ServerProcess, base_env, populate

SERIES = {"source": "csv", "name": "BTCUSD", "interval": "1m"}


def flip_rule() -> dict[str, str]:
    """``close > open`` of the forming 1m bar: true and false in turn as the replay runs."""
    return {
        "type1": "data",
        "source1": "csv",
        "name1": "BTCUSD",
        "interval1": "1m",
        "key1": "close",
        "comparator": ">",
        "type2": "data",
        "source2": "csv",
        "name2": "BTCUSD",
        "interval2": "1m",
        "key2": "open",
    }


def alert(message: str, subscription: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    return {
        "type": "alert",
        "message": message,
        "rules": [flip_rule()],
        "operators": [],
        "indicators": {},
        "dataProviderConfig": {"full_url": "wss://elsewhere.invalid/websocket/", "data": []},
        "subscription": subscription,
        **extra,
    }


def always_true_rule() -> dict[str, str]:
    """``close > 0``: true at once, so an alert with it fires when it is made."""
    return {**flip_rule(), "type2": "value", "value2": "0"}


def env_for(tmp: Path, fake: FakePush, **extra: str) -> dict[str, str]:
    env = base_env(
        tmp,
        PROVIDERS="csv",
        CSV_FOLDER_PATH=str(ROOT / "data"),
        CSV_REPLAY_SPEED="60",
        ALERT_WEBHOOK_URL=f"{fake.url}/hook/all",
        ALERT_RETRY_SECONDS="0.05",
        **{"ALERT_CLIENT_WEBHOOKS": "true", **extra},
    )
    assert populate(env).returncode == 0
    return env


class KeyedServer(ServerProcess):
    """The harness's server, its health checks carrying the first API key."""

    def get(self, path: str) -> Any:
        request = urllib.request.Request(self.url + path, headers={"X-API-Key": KEYS[0]})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())


KEYS = ("key-of-alice-0001", "key-of-bob-0002")


def get_json(server: ServerProcess, path: str) -> Any:
    with urllib.request.urlopen(server.url + path, timeout=10) as response:
        return json.loads(response.read())


def delete_json(server: ServerProcess, path: str) -> tuple[int, Any]:
    request = urllib.request.Request(server.url + path, method="DELETE")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def listed_alert(server: ServerProcess, owner: str, alert_id: int) -> dict[str, Any]:
    found = [
        a for a in get_json(server, f"/api/alerts?owner={owner}")["alerts"] if a["id"] == alert_id
    ]
    return found[0] if found else {}


class Hooks:
    """A webhook receiver on 127.0.0.1 (``http.server`` in a thread) whose port is taken at
    once but refuses connections until :meth:`up` (a receiver that is down); each POST's
    JSON body lands in :attr:`bodies`, answered 200."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}/hook"
        self._server: ThreadingHTTPServer | None = None

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.bodies.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        server = ThreadingHTTPServer(self._socket.getsockname(), Handler, False)
        server.socket.close()
        server.socket = self._socket
        server.server_activate()  # listen() on the port taken from the start
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def fired(self) -> list[int]:
        """The ``fired`` count of each call, in order of arrival."""
        return [body["fired"] for body in self.bodies]

    def __enter__(self) -> Hooks:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        else:
            self._socket.close()
