"""Synthetic sources for the benchmarks.

``SyntheticProvider`` streams the forming 1m bar of every subscribed key (``BENCH_KEYS``
symbols ``SYN00000``...) at ``BENCH_RATE`` updates per second per key, or at the rate read
from the file ``BENCH_RATE_FILE`` (polled, so a benchmark can raise the rate without
restarting the server). Updates are spread evenly over time in round-robin order (a
:class:`Schedule`), not sent as one burst per period, and a source that falls more than
``MAX_LAG`` behind skips updates instead of bursting to catch up: an overloaded server shows
as delivered < ideal. The bar's volume carries the wall time of publication, so clients can
measure provider-to-client latency. ``bench/ceiling.py`` runs the same :class:`Schedule`.

``HistoryProvider`` serves deterministic 1m history for ``BENCH_HISTORY_SYMBOLS`` symbols
``HIS00000``..., for ``bench/history.py``; it logs each ``get_history`` call (symbol and
number of bars) to ``BENCH_HISTORY_LOG`` when set.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from backend.runtime.provider import Provider

TICK_SECONDS = 0.005
MAX_LAG = 0.1  # seconds of updates a late source may still send in one tick
POLL_SECONDS = 0.2
LISTED_DAYS = 30


def symbol_names(count: int, prefix: str = "SYN") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(count)]


def dataset_row(source: str, name: str, label: str) -> dict[str, Any]:
    return {
        "source": source,
        "name": name,
        "name_label": f"{label} {name}",
        "type": "candlestick",
        "categories": ["Bench"],
        "intervals": ["1m"],
        "outputs": [{"name": f, "y_axis": "price"} for f in ("open", "high", "low", "close")]
        + [{"name": "volume", "y_axis": "volume"}],
    }


class RateFile:
    """Updates per second per key: fixed, or read from a file at most every 0.2 s."""

    def __init__(self, path: str | None, default: float) -> None:
        self.path = path
        self.value = default
        self._read_at = 0.0

    def get(self, now: float) -> float:
        if self.path and now - self._read_at >= POLL_SECONDS:
            self._read_at = now
            try:
                with open(self.path, encoding="ascii") as f:
                    self.value = float(f.read().strip() or 0)
            except (OSError, ValueError):
                pass
        return self.value

    @staticmethod
    def write(path: str, rate: float) -> None:
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="ascii") as f:
            f.write(repr(float(rate)))
        os.replace(tmp, path)


class Schedule:
    """Which keys to update now: ``rate`` updates per second per key, evenly spread."""

    def __init__(self, rate: RateFile) -> None:
        self.rate = rate
        self.current = -1.0
        self.origin = 0.0
        self.done = 0
        self.cursor = 0
        self.skipped = 0

    def take(self, keys: list[Any], now: float) -> list[Any]:
        rate = self.rate.get(now)
        if rate != self.current:
            self.current, self.origin, self.done = rate, now, 0
        if rate <= 0 or not keys:
            self.origin, self.done = now, 0
            return []
        total = rate * len(keys)
        target = int((now - self.origin) * total)
        due = target - self.done
        burst = max(1, int(total * MAX_LAG))
        if due > burst:
            self.skipped += due - burst
            self.done = target - burst
            due = burst
        if due <= 0:
            return []
        n = len(keys)
        start = self.cursor % n
        out = [keys[(start + i) % n] for i in range(due)]
        self.cursor = (start + due) % n
        self.done += due
        return out


class SyntheticProvider(Provider):
    """Publishes the forming 1m bar of every streamed key, spread evenly over time."""

    def init(self) -> None:
        self.schedule = Schedule(
            RateFile(os.environ.get("BENCH_RATE_FILE"), float(os.environ.get("BENCH_RATE", "1")))
        )
        self.keys: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def get_dataset(self) -> Iterator[dict[str, Any]]:
        for name in symbol_names(int(os.environ.get("BENCH_KEYS", "100"))):
            yield dataset_row(self.source, name, "Synthetic")

    def get_history(
        self, symbol: str, interval: str, start_time_query: str, end_time_query: str, count: int
    ) -> list[tuple[int, float, float, float, float, float]]:
        now = int(time.time()) // 60 * 60
        return [(t, 100.0, 101.0, 99.0, 100.5, 0.0) for t in range(now - 60 * 10, now + 1, 60)]

    def on_first_subscriber(self, symbol: str, interval: str) -> None:
        with self.lock:
            self.keys = sorted({*self.keys, (symbol, interval)})

    def on_last_subscriber(self, symbol: str, interval: str) -> None:
        with self.lock:
            self.keys = [k for k in self.keys if k != (symbol, interval)]

    def staleness_limit(self, symbol: str, interval: str) -> float | None:
        return None

    def _run(self) -> None:
        price = 100.0
        wall = time.time
        while not self.stopping.is_set():
            now = wall()
            due = self.schedule.take(self.keys, now)
            if due:
                t = int(now) // 60 * 60
                price += 0.01
                for symbol, interval in due:
                    self.publish(symbol, interval, (t, 100.0, price + 1, 99.0, price, wall()))
            time.sleep(TICK_SECONDS)

    def shutdown(self) -> None:
        self.stopping.set()


def history_bar(t: int) -> tuple[int, float, float, float, float, float]:
    """A deterministic 1m bar opening at ``t`` (cheap to compute)."""
    p = 100.0 + (t // 60 % 997) * 0.01
    return (t, p, p + 0.5, p - 0.5, p + 0.25, float(t // 60 % 89 + 1))


def _parse(text: str, now: int) -> int:
    if text == "now UTC":
        return now
    return int(datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp())


class HistoryProvider(Provider):
    """Deterministic 1m history for ``BENCH_HISTORY_SYMBOLS`` symbols, listed 30 days ago."""

    def init(self) -> None:
        self.log_path = os.environ.get("BENCH_HISTORY_LOG", "")
        self.listed = (int(time.time()) // 86400 - LISTED_DAYS) * 86400
        self.lock = threading.Lock()

    def get_dataset(self) -> Iterator[dict[str, Any]]:
        for name in symbol_names(int(os.environ.get("BENCH_HISTORY_SYMBOLS", "200")), "HIS"):
            yield dataset_row(self.source, name, "History")

    def get_history(
        self, symbol: str, interval: str, start_time_query: str, end_time_query: str, count: int
    ) -> list[tuple[int, float, float, float, float, float]]:
        now = int(time.time())
        start = max(_parse(start_time_query, now), self.listed)
        end = min(_parse(end_time_query, now), now)
        first = start - start % 60 + (60 if start % 60 else 0)
        bars = [history_bar(t) for t in range(first, end + 1, 60)]
        if self.log_path:
            with self.lock, open(self.log_path, "a", encoding="utf-8") as out:
                out.write(f"{symbol} {len(bars)}\n")
        return bars

    def staleness_limit(self, symbol: str, interval: str) -> float | None:
        return None
