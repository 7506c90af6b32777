"""A provider ported from Tradiny's own ``data_providers/binance.py`` (the "complete
example" the seed how-to points to) runs with only its imports changed.

Tradiny's providers send each live bar twice: ``{"action": "update_in_cache", "args":
(source, symbol, interval, [datapoint])}`` for the hub's cache, then the ``write_message``
for the clients. The hub here merges every bar a provider publishes into its cache, so
``update_in_cache`` has nothing left to do: it is accepted quietly (it was logged as an
ERROR, "unknown action", several times a second), and the clients get each bar once.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from backend.provider import Provider
from tests import harness
from tests.harness import ServerProcess, WsClient, same_key
from tests.providers import STEP, bar, dataset_row


class TradinyPortProvider(Provider):
    """Live bars as Tradiny's BinanceProvider sends them."""

    def init(self):  # type: ignore[no-untyped-def]
        self.ws_clients: dict[tuple[str, str], list[int]] = {}
        self.lock = threading.Lock()

    def get_dataset(self):  # type: ignore[no-untyped-def]
        return [dataset_row("tradiny", "AAA")]

    def start_streaming(self, ws_client, symbol, interval):  # type: ignore[no-untyped-def]
        with self.lock:
            clients = self.ws_clients.setdefault((symbol, interval), [])
            clients.append(ws_client)
            if len(clients) == 1:
                threading.Thread(target=self.stream, args=(symbol, interval), daemon=True).start()

    def on_close(self, ws_client, symbol, interval):  # type: ignore[no-untyped-def]
        with self.lock:
            clients = self.ws_clients.get((symbol, interval), [])
            if ws_client in clients:
                clients.remove(ws_client)

    def stream(self, symbol, interval):  # type: ignore[no-untyped-def]
        while self.ws_clients.get((symbol, interval)):
            now = int(time.time())
            k = bar(now - now % STEP[interval], interval, now)
            data = self.format_datapoint(symbol, interval, k)
            self.send_from(
                {"action": "update_in_cache", "args": ("tradiny", symbol, interval, [data])}
            )
            ws_clients = self.ws_clients.get((symbol, interval), [])
            if len(ws_clients) > 0:
                self.send_from(
                    {
                        "action": "write_message",
                        "ws_clients": ws_clients,
                        "source": "tradiny",
                        "name": symbol,
                        "interval": interval,
                        "args": [
                            json.dumps(
                                {
                                    "type": "data_update",
                                    "source": "tradiny",
                                    "name": symbol,
                                    "interval": interval,
                                    "data": data,
                                }
                            )
                        ],
                    }
                )
            time.sleep(0.2)


async def test_update_in_cache_is_accepted_quietly(tmp_path: Path) -> None:
    env = harness.base_env(
        tmp_path,
        PROVIDERS="tradiny",
        EXTRA_PROVIDERS="tradiny=tests.test_tradiny_port:TradinyPortProvider",
    )
    assert harness.populate(env).returncode == 0
    log = tmp_path / "server.log"
    with ServerProcess(env, log) as server:
        client = await WsClient.open(server.ws_url)
        await client.send(
            {"type": "data", "source": "tradiny", "name": "AAA", "interval": "1m", "count": 3}
        )
        await client.wait_for("data_init", same_key("AAA", "1m"))
        await harness.eventually(
            lambda: len(client.of_type("data_update")) >= 5, 10, "five data_update"
        )
        await client.close()
    text = log.read_text()
    assert "unknown action" not in text
    assert " ERROR " not in text
