"""Providers used by the end-to-end tests, registered through ``EXTRA_PROVIDERS``.

``SeedProvider`` is written from the seed how-to (shared/seeds/001) with only its import
line changed: it tracks ``ws_clients`` itself and sends the seed's ``write_message``.
``CountingProvider`` uses the base class bookkeeping and logs every hook call to the file
named by ``CANDLEWIRE_TEST_LOG`` so tests can count upstream starts and history calls.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from backend.runtime.provider import Provider

INTERVALS = ["1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d"]
STEP = {
    "1m": 60,
    "3m": 180,
    "5m": 300,
    "15m": 900,
    "30m": 1800,
    "1h": 3600,
    "2h": 7200,
    "4h": 14400,
    "6h": 21600,
    "8h": 28800,
    "12h": 43200,
    "1d": 86400,
}


def price(minute: int, seed: int = 0) -> float:
    """A deterministic price for a minute (epoch seconds, multiple of 60)."""
    x = minute / 60
    return round(100 + 10 * math.sin(x / 97 + seed) + 3 * math.sin(x / 7.3 + 2 * seed), 4)


def bar(t: int, interval: str, now: int, seed: int = 0) -> list[float]:
    """``[t_ms, o, h, l, c, v]`` of the bar opening at ``t``, as of ``now``."""
    step = STEP[interval]
    end = min(t + step, now + 1)
    minutes = range(t, end, 60) or range(t, t + 60, 60)
    prices = [price(m, seed) for m in minutes]
    volume = max(1, end - t) / 60  # grows every second while the bar forms
    return [t * 1000, prices[0], max(prices), min(prices), prices[-1], volume]


def dataset_row(source: str, name: str) -> dict[str, object]:
    return {
        "source": source,
        "name": name,
        "name_label": f"{name} test instrument",
        "type": "candlestick",
        "categories": ["Test"],
        "intervals": INTERVALS,
        "outputs": [{"name": f, "y_axis": "price"} for f in ("open", "high", "low", "close")]
        + [{"name": "volume", "y_axis": "volume"}],
    }


def parse(text: str) -> int:
    if text == "now UTC":
        return int(time.time())
    d = datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    return int(d.timestamp())


class SeedProvider(Provider):
    """A provider exactly as the seed tells users to write one."""

    def init(self):
        self.ws_clients = {}
        self.threads = {}
        self.stops = {}

    def get_dataset(self):
        return [dataset_row("my_provider", "BTCUSDT"), dataset_row("my_provider", "ETHUSDT")]

    def start_streaming(self, ws_client, symbol, interval):
        key = (symbol, interval)
        self.ws_clients.setdefault(key, set()).add(ws_client)
        if key not in self.threads:
            stop = threading.Event()
            thread = threading.Thread(
                target=self.stream, args=(symbol, interval, stop), daemon=True
            )
            self.stops[key] = stop
            self.threads[key] = thread
            thread.start()

    def stream(self, symbol, interval, stop):
        while not stop.wait(0.2):
            now = int(time.time())
            step = STEP[interval]
            k = bar(now - now % step, interval, now)
            ws_clients = list(self.ws_clients.get((symbol, interval), ()))
            data = self.format_datapoint(symbol, interval, k)
            self.send_from(
                {
                    "action": "write_message",
                    "ws_clients": ws_clients,
                    "source": "my_provider",
                    "name": symbol,
                    "interval": interval,
                    "args": [
                        json.dumps(
                            {
                                "type": "data_update",
                                "source": "my_provider",
                                "name": symbol,
                                "interval": interval,
                                "data": data,
                            }
                        )
                    ],
                }
            )

    def format_datapoint(self, symbol, interval, k):
        date_str = datetime.fromtimestamp(k[0] / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        return {
            "date": date_str,
            f"my_provider-{symbol}-{interval}-open": k[1],
            f"my_provider-{symbol}-{interval}-high": k[2],
            f"my_provider-{symbol}-{interval}-low": k[3],
            f"my_provider-{symbol}-{interval}-close": k[4],
            f"my_provider-{symbol}-{interval}-volume": k[5],
        }

    def no_update(self, symbol, interval):
        key = (symbol, interval)
        clients = self.ws_clients.get(key, set())
        self.stop_stream(key)
        for ws_client in list(clients):
            self.start_streaming(ws_client, symbol, interval)

    def get_history(self, symbol, interval, start_time_query, end_time_query, count):
        step = STEP[interval]
        start, end = parse(start_time_query), parse(end_time_query)
        now = int(time.time())
        end = min(end, now)
        first = start - start % step + (step if start % step else 0)
        return [
            self.format_datapoint(symbol, interval, bar(t, interval, now))
            for t in range(first, end + 1, step)
        ]

    def on_close(self, ws_client, symbol, interval):
        key = (symbol, interval)
        self.ws_clients.get(key, set()).discard(ws_client)
        if not self.ws_clients.get(key):
            self.stop_stream(key)

    def stop_stream(self, key):
        stop = self.stops.pop(key, None)
        if stop is not None:
            stop.set()
        self.threads.pop(key, None)


class CountingProvider(Provider):
    """Base-class style provider that logs its hook calls; symbol ``HANG`` never answers."""

    def init(self) -> None:
        self.log_path = os.environ.get("CANDLEWIRE_TEST_LOG", "")
        self.period = float(os.environ.get("CANDLEWIRE_TEST_PERIOD", "0.1"))
        self.streams: set[tuple[str, str]] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.stream, daemon=True)
        self.thread.start()
        # Listed 30 days ago (a stable time across restarts): nothing exists before.
        self.listed = (int(time.time()) // 86400 - 30) * 86400
        self.log(f"init {os.getpid()}")

    def log(self, line: str) -> None:
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as out:
                out.write(line + "\n")

    def get_dataset(self) -> list[dict[str, object]]:
        return [dataset_row("counting", name) for name in ("AAA", "BBB", "CCC", "HANG")]

    def on_first_subscriber(self, symbol: str, interval: str) -> None:
        self.log(f"first {symbol} {interval}")
        with self.lock:
            self.streams.add((symbol, interval))

    def on_last_subscriber(self, symbol: str, interval: str) -> None:
        self.log(f"last {symbol} {interval}")
        with self.lock:
            self.streams.discard((symbol, interval))

    def get_history(
        self, symbol: str, interval: str, start_time_query: str, end_time_query: str, count: int
    ) -> list[list[float]]:
        self.log(f"history {symbol} {interval}")
        if symbol == "HANG":
            self.stop.wait(3600)
            return []
        step = STEP[interval]
        now = int(time.time())
        start, end = parse(start_time_query), min(parse(end_time_query), now)
        start = max(start, self.listed)
        first = start - start % step + (step if start % step else 0)
        seed = sum(map(ord, symbol)) % 7
        return [bar(t, interval, now, seed) for t in range(first, end + 1, step)]

    def stream(self) -> None:
        while not self.stop.wait(self.period):
            now = int(time.time())
            with self.lock:
                keys = list(self.streams)
            for symbol, interval in keys:
                step = STEP[interval]
                self.publish(
                    symbol,
                    interval,
                    tuple(bar(now - now % step, interval, now, sum(map(ord, symbol)) % 7)),
                )

    def shutdown(self) -> None:
        self.stop.set()


class SteeredProvider(CountingProvider):
    """A counting provider whose bars, history and live, are flat at the price written in
    the file ``CANDLEWIRE_TEST_PRICE`` (the test turns alert rules true and false with it;
    write it atomically). An unreadable file keeps the last price."""

    def init(self) -> None:
        self.price_path = os.environ.get("CANDLEWIRE_TEST_PRICE", "")
        self.last_price = 1.0
        super().init()

    def price(self) -> float:
        try:
            with open(self.price_path, encoding="utf-8") as source:
                self.last_price = float(source.read())
        except (OSError, ValueError):
            pass
        return self.last_price

    def flat(self, k: list[float]) -> list[float]:
        p = self.price()
        return [k[0], p, p, p, p, k[5]]

    def get_history(
        self, symbol: str, interval: str, start_time_query: str, end_time_query: str, count: int
    ) -> list[list[float]]:
        bars = super().get_history(symbol, interval, start_time_query, end_time_query, count)
        return [self.flat(k) for k in bars]

    def stream(self) -> None:
        while not self.stop.wait(self.period):
            now = int(time.time())
            with self.lock:
                keys = list(self.streams)
            for symbol, interval in keys:
                step = STEP[interval]
                self.publish(
                    symbol, interval, tuple(self.flat(bar(now - now % step, interval, now)))
                )


class SlowHistoryProvider(CountingProvider):
    """A counting provider whose ``get_history`` logs its window (``window SYMBOL INTERVAL
    start|end|count``) and then takes ``CANDLEWIRE_TEST_HISTORY_DELAY`` seconds, so that
    requests from several hubs meet while it is in flight."""

    def get_history(
        self, symbol: str, interval: str, start_time_query: str, end_time_query: str, count: int
    ) -> list[list[float]]:
        self.log(f"window {symbol} {interval} {start_time_query}|{end_time_query}|{count}")
        self.stop.wait(float(os.environ.get("CANDLEWIRE_TEST_HISTORY_DELAY", "0")))
        return super().get_history(symbol, interval, start_time_query, end_time_query, count)


class IntradayOnlyProvider(CountingProvider):
    """A counting provider whose symbols offer only ``1m`` and ``1h`` (a futures feed, say):
    no daily series."""

    def get_dataset(self) -> list[dict[str, object]]:
        return [{**dataset_row("intraday", name), "intervals": ["1m", "1h"]} for name in ("AAA",)]


class LateStreamProvider(CountingProvider):
    """A counting provider whose stream starts just after a bar closed: its history answers
    the forming bar half made (close 1.0; closed bars are flat at 2.0), and its stream,
    ``CANDLEWIRE_TEST_STREAM_DELAY`` seconds after the first subscriber, publishes only the
    next bar (flat at 3.0), never the one history gave as forming. Once it streams, history
    has that bar's final values (2.0), as an exchange's would after the bar closed."""

    def init(self) -> None:
        self.delay = float(os.environ.get("CANDLEWIRE_TEST_STREAM_DELAY", "0.5"))
        self.since: dict[tuple[str, str], float] = {}
        self.moved_on = threading.Event()
        super().init()

    def get_dataset(self) -> list[dict[str, object]]:
        return [dataset_row("late", "AAA")]

    def on_first_subscriber(self, symbol: str, interval: str) -> None:
        with self.lock:
            self.since[(symbol, interval)] = time.monotonic()
        super().on_first_subscriber(symbol, interval)

    def get_history(
        self, symbol: str, interval: str, start_time_query: str, end_time_query: str, count: int
    ) -> list[list[float]]:
        bars = super().get_history(symbol, interval, start_time_query, end_time_query, count)
        now = int(time.time())
        forming = now - now % STEP[interval]
        out = []
        for k in bars:
            price = 1.0 if k[0] == forming * 1000 and not self.moved_on.is_set() else 2.0
            out.append([k[0], 2.0, 2.0, min(price, 2.0), price, k[5]])
        return out

    def stream(self) -> None:
        while not self.stop.wait(self.period):
            now = int(time.time())
            with self.lock:
                keys = [k for k, t in self.since.items() if k in self.streams]
                ready = [k for k in keys if time.monotonic() - self.since[k] >= self.delay]
            for symbol, interval in ready:
                self.moved_on.set()
                step = STEP[interval]
                t = now - now % step + step
                self.publish(symbol, interval, (t * 1000, 3.0, 3.0, 3.0, 3.0, 1.0))


class StuckHistoryProvider(CountingProvider):
    """A counting provider whose ``get_history`` never returns (for every symbol) while the
    file ``CANDLEWIRE_TEST_STUCK`` exists; its stream goes on (a vendor whose REST API hangs
    while its socket streams)."""

    def get_dataset(self) -> list[dict[str, object]]:
        return [dataset_row("stuckhist", name) for name in ("AAA", "BBB", "CCC")]

    def get_history(
        self, symbol: str, interval: str, start_time_query: str, end_time_query: str, count: int
    ) -> list[list[float]]:
        if os.path.exists(os.environ.get("CANDLEWIRE_TEST_STUCK", "")):
            self.stop.wait(3600)
            return []
        return super().get_history(symbol, interval, start_time_query, end_time_query, count)


class PolledProvider(CountingProvider):
    """A counting provider without a stream (a vendor polled over REST): prices come only
    from history, which holds the closed bars (the last stays the same for a whole bar).
    ``get_history`` fails (``ConnectionError``) while the file ``CANDLEWIRE_TEST_DOWN``
    exists (the vendor is down), and the symbol ``NONE`` never has a bar."""

    def get_dataset(self) -> list[dict[str, object]]:
        return [dataset_row("polled", name) for name in ("AAA", "BBB", "NONE")]

    def stream(self) -> None:
        self.stop.wait()

    def get_history(
        self, symbol: str, interval: str, start_time_query: str, end_time_query: str, count: int
    ) -> list[list[float]]:
        if symbol == "NONE":
            return []
        if os.path.exists(os.environ.get("CANDLEWIRE_TEST_DOWN", "")):
            raise ConnectionError("the vendor does not answer")
        bars = super().get_history(symbol, interval, start_time_query, end_time_query, count)
        closed = time.time() - STEP[interval]
        return [b for b in bars if b[0] / 1000 <= closed]


class BannedProvider(CountingProvider):
    """A counting provider whose upstream has banned it: it reports its own status
    ``banned`` (as the Binance provider does under a 418) at init, and its ``get_history``
    does not return while the file ``CANDLEWIRE_TEST_STUCK`` exists (it answers once the
    file is gone: a call stuck past ``HISTORY_TIMEOUT`` that returns later)."""

    def init(self) -> None:
        super().init()
        self.report_status("banned", "HTTP 418: banned until the test ends")

    def get_dataset(self) -> list[dict[str, object]]:
        return [dataset_row("banned", name) for name in ("AAA", "BBB")]

    def get_history(
        self, symbol: str, interval: str, start_time_query: str, end_time_query: str, count: int
    ) -> list[list[float]]:
        stuck = os.environ.get("CANDLEWIRE_TEST_STUCK", "")
        while stuck and os.path.exists(stuck) and not self.stop.wait(0.05):
            pass
        return super().get_history(symbol, interval, start_time_query, end_time_query, count)


class NamedProvider(CountingProvider):
    """A counting provider whose symbols are those of ``CANDLEWIRE_TEST_NAMES``: a JSON list
    of ``[name, name_label]`` pairs (JSON escapes carry what a provider may read from
    elsewhere, as a lone surrogate of a file name that is not UTF-8)."""

    def get_dataset(self) -> list[dict[str, object]]:
        pairs = json.loads(os.environ.get("CANDLEWIRE_TEST_NAMES", "[]"))
        return [dataset_row(self.source, name) | {"name_label": label} for name, label in pairs]


class OddPriceProvider(CountingProvider):
    """``counting`` at odd prices, source ``odd``: ``PEPE`` a hundred-billionth of its own
    (about 0.000000001, a meme token), ``SATS`` at about 0.000000015 (a pair quoted in BTC),
    ``WEI`` at its own prices but with ``precision`` 18 in its dataset row (the decimals
    of an ERC-20 token, which a provider may take for its price precision), and ``TICK`` at
    its own prices with ``price_precision`` 5 (a tick size of 0.00001, as the Binance
    provider states it)."""

    SCALES = {"PEPE": 1e-11, "SATS": 1.5e-10, "WEI": 1.0, "TICK": 1.0}
    # dataset row fields: WEI's precision, TICK's tick size as Binance rows state it
    EXTRA: dict[str, dict[str, object]] = {"WEI": {"precision": 18}, "TICK": {"price_precision": 5}}

    def get_dataset(self) -> list[dict[str, object]]:
        return [dataset_row("odd", name) | self.EXTRA.get(name, {}) for name in self.SCALES]

    def scaled(self, symbol: str, k: Sequence[float]) -> list[float]:
        return [k[0], *(p * self.SCALES[symbol] for p in k[1:5]), k[5]]

    def get_history(
        self, symbol: str, interval: str, start_time_query: str, end_time_query: str, count: int
    ) -> list[list[float]]:
        bars = super().get_history(symbol, interval, start_time_query, end_time_query, count)
        return [self.scaled(symbol, k) for k in bars]

    def publish(
        self,
        symbol: str,
        interval: str,
        bar: Any,
        *,
        final: bool = False,
    ) -> None:
        super().publish(symbol, interval, tuple(self.scaled(symbol, bar)), final=final)


class BurstProvider(CountingProvider):
    """A counting provider that, on the first tick of each streamed key, publishes
    ``BURST`` states of its forming bar in one held burst (``hold_updates``), the volume
    counting up to ``BURST``: more than a pipe batch, so its process merges the superseded
    ones before sending. It publishes nothing else."""

    BURST = 2000

    def init(self) -> None:
        self.burst: set[tuple[str, str]] = set()
        super().init()

    def stream(self) -> None:
        while not self.stop.wait(self.period):
            now = int(time.time())
            with self.lock:
                keys = [key for key in self.streams if key not in self.burst]
            for symbol, interval in keys:
                self.burst.add((symbol, interval))
                k = bar(now - now % STEP[interval], interval, now)
                self.hold_updates()
                for n in range(1, self.BURST + 1):
                    self.publish(symbol, interval, (*k[:5], float(n)))
                self.release_updates()
