"""A synthetic provider for benchmarks: ``BENCH_KEYS`` symbols updated ``BENCH_RATE`` times
per second each. The bar's volume carries the wall time of publication, so clients can
measure provider-to-client latency."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from backend.provider import Provider


def symbol_names(count: int) -> list[str]:
    return [f"SYN{i:05d}" for i in range(count)]


class SyntheticProvider(Provider):
    """Publishes the forming 1m bar of every streamed key at a fixed rate."""

    def init(self) -> None:
        self.rate = float(os.environ.get("BENCH_RATE", "1"))
        self.keys: set[tuple[str, str]] = set()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def get_dataset(self) -> Iterator[dict[str, Any]]:
        for name in symbol_names(int(os.environ.get("BENCH_KEYS", "100"))):
            yield {
                "source": self.source,
                "name": name,
                "name_label": f"Synthetic {name}",
                "type": "candlestick",
                "categories": ["Bench"],
                "intervals": ["1m"],
                "outputs": [
                    {"name": f, "y_axis": "price"} for f in ("open", "high", "low", "close")
                ]
                + [{"name": "volume", "y_axis": "volume"}],
            }

    def get_history(
        self, symbol: str, interval: str, start_time_query: str, end_time_query: str, count: int
    ) -> list[tuple[int, float, float, float, float, float]]:
        now = int(time.time()) // 60 * 60
        return [(t, 100.0, 101.0, 99.0, 100.5, 0.0) for t in range(now - 60 * 10, now + 1, 60)]

    def on_first_subscriber(self, symbol: str, interval: str) -> None:
        with self.lock:
            self.keys.add((symbol, interval))

    def on_last_subscriber(self, symbol: str, interval: str) -> None:
        with self.lock:
            self.keys.discard((symbol, interval))

    def staleness_limit(self, symbol: str, interval: str) -> float | None:
        return None

    def _run(self) -> None:
        period = 1.0 / self.rate if self.rate > 0 else 1.0
        next_tick = time.monotonic()
        price = 100.0
        while not self.stopping.is_set():
            next_tick += period
            with self.lock:
                keys = list(self.keys)
            now = time.time()
            t = int(now) // 60 * 60
            price += 0.01
            for symbol, interval in keys:
                self.publish(symbol, interval, (t, 100.0, price + 1, 99.0, price, now))
            delay = next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_tick = time.monotonic()

    def shutdown(self) -> None:
        self.stopping.set()
