# ruff: noqa: UP017 - written in the seed's spelling, as users copy it
"""Providers written as a new user would write them from the README, DESIGN section 3 and the
seed how-to, for ``tests/test_user_providers.py``: plain, untyped, synchronous code.

``SeedPortProvider`` is ported from the seed text with only its import lines changed;
``TypedProvider`` uses ``publish`` and the first/last-subscriber hooks; ``SloppyProvider``
returns what vendors return (newest first, repeats, strings, datetimes, NaN, too much);
``BuggyProvider``, ``BlockingStartProvider``, ``FloodProvider``, ``CrashingProvider`` and
``BadInitProvider`` have the bugs users write. Hook calls go to the file named by
``CANDLEWIRE_TEST_LOG`` (one line each) so the tests can see what ran.
"""

import json
import math
import os
import threading
import time
from datetime import datetime, timezone

from backend.provider import Provider

ALL = ["1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "1w", "1M"]
SECONDS = {"1m": 60, "5m": 300, "1h": 3600, "1d": 86400}


def log(line):
    path = os.environ.get("CANDLEWIRE_TEST_LOG", "")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(line + "\n")


def row(source, name, **extra):
    out = {
        "source": source,
        "name": name,
        "name_label": f"{name} pair",
        "type": "candlestick",
        "categories": ["Crypto"],
        "intervals": ["1m", "5m", "1h", "1d"],
        "outputs": [
            {"name": "open", "y_axis": "price"},
            {"name": "high", "y_axis": "price"},
            {"name": "low", "y_axis": "price"},
            {"name": "close", "y_axis": "price"},
            {"name": "volume", "y_axis": "volume"},
        ],
    }
    out.update(extra)
    return out


def kline(t, seed=0):
    """``[open_time_ms, o, h, l, c, v]`` of the bar opening at ``t`` (UTC seconds)."""
    p = 100 + 5 * math.sin(t / 3600 + seed)
    return [t * 1000, p, p + 1, p - 1, p + 0.5, 10.0]


def publish_forever(provider):
    """The stream thread of the providers below that publish: the forming kline of each key
    in ``provider.keys`` (under ``provider.lock``), five times a second."""
    while True:
        with provider.lock:
            keys = list(provider.keys)
        for symbol, interval in keys:
            now = int(time.time())
            provider.publish(symbol, interval, kline(now - now % SECONDS[interval]))
        time.sleep(0.2)


class SeedPortProvider(Provider):
    """The seed's how-to, followed to the letter: it keeps its own ``ws_clients`` and sends
    ``write_message`` with a pre-encoded ``data_update``; times are parsed with strptime."""

    def init(self):
        self.ws_clients = {}
        self.running = {}

    def get_dataset(self):
        return [row("seedport", "BTCUSDT"), row("seedport", "ETHUSDT")]

    def start_streaming(self, ws_client, symbol, interval):
        key = symbol + "_" + interval
        if key not in self.ws_clients:
            self.ws_clients[key] = []
        self.ws_clients[key].append(ws_client)
        if key not in self.running:
            self.running[key] = True
            threading.Thread(target=self.loop, args=(symbol, interval), daemon=True).start()

    def loop(self, symbol, interval):
        key = symbol + "_" + interval
        while self.running.get(key):
            now = int(time.time())
            step = SECONDS[interval]
            data = self.format_datapoint(symbol, interval, kline(now - now % step))
            ws_clients = self.ws_clients.get(key, [])
            self.send_from(
                {
                    "action": "write_message",
                    "ws_clients": ws_clients,
                    "source": "seedport",
                    "name": symbol,
                    "interval": interval,
                    "args": [
                        json.dumps(
                            {
                                "type": "data_update",
                                "source": "seedport",
                                "name": symbol,
                                "interval": interval,
                                "data": data,
                            }
                        )
                    ],
                }
            )
            time.sleep(0.2)

    def format_datapoint(self, symbol, interval, k):
        date_str = datetime.fromtimestamp(k[0] / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        return {
            "date": date_str,
            f"seedport-{symbol}-{interval}-open": k[1],
            f"seedport-{symbol}-{interval}-high": k[2],
            f"seedport-{symbol}-{interval}-low": k[3],
            f"seedport-{symbol}-{interval}-close": k[4],
            f"seedport-{symbol}-{interval}-volume": k[5],
        }

    def no_update(self, symbol, interval):
        pass

    def get_history(self, symbol, interval, start_time_query, end_time_query, count):
        log(f"seedport history {symbol} {interval} {start_time_query}|{end_time_query}|{count}")
        fmt = "%Y-%m-%d %H:%M:%S"
        start = datetime.strptime(start_time_query, fmt).replace(tzinfo=timezone.utc)
        if end_time_query == "now UTC":
            end = datetime.now(timezone.utc)
        else:
            end = datetime.strptime(end_time_query, fmt).replace(tzinfo=timezone.utc)
        step = SECONDS[interval]
        t = int(start.timestamp())
        t = t - t % step + (step if t % step else 0)
        out = []
        while t <= int(end.timestamp()):
            out.append(self.format_datapoint(symbol, interval, kline(t)))
            t += step
        return out

    def on_close(self, ws_client, symbol, interval):
        key = symbol + "_" + interval
        if ws_client in self.ws_clients.get(key, []):
            self.ws_clients[key].remove(ws_client)
        if not self.ws_clients.get(key):
            self.running[key] = False
            self.running.pop(key, None)


class TypedProvider(Provider):
    """The base class's way: publish() and the first/last-subscriber hooks."""

    def init(self):
        self.keys = set()
        self.lock = threading.Lock()
        threading.Thread(target=self.pump, daemon=True).start()

    def get_dataset(self):
        return [row("typed", "AAA"), row("typed", "BBB")]

    def on_first_subscriber(self, symbol, interval):
        log(f"typed first {symbol} {interval}")
        with self.lock:
            self.keys.add((symbol, interval))

    def on_last_subscriber(self, symbol, interval):
        log(f"typed last {symbol} {interval}")
        with self.lock:
            self.keys.discard((symbol, interval))

    def get_history(self, symbol, interval, start_time_query, end_time_query, count):
        step = SECONDS[interval]
        now = int(time.time())
        return [kline(t) for t in range(now - now % step - (count - 1) * step, now + 1, step)]

    def pump(self):
        publish_forever(self)


class SloppyProvider(Provider):
    """What vendors hand back, passed on as it came."""

    def get_dataset(self):
        yield row("sloppy", "AAA")
        yield row("sloppy", "AAA")  # a repeat
        yield {  # a line without source_label; "value" as its output
            "source": "sloppy",
            "name": "BARE",
            "name_label": "bare line",
            "type": "line",
            "categories": ["Misc"],
            "intervals": ["5m"],
            "outputs": [{"name": "value", "y_axis": "price"}],
        }
        no_label = row("sloppy", "NOLABEL")
        del no_label["name_label"]
        yield no_label  # invalid: skipped
        yield row("sloppy", "Ü€-株式", name_label="Ünïcødé 株式 \u200b\u202e pair")
        yield row("sloppy", "NUMS")
        yield row("sloppy", "EPOCH")

    def get_history(self, symbol, interval, start_time_query, end_time_query, count):
        step = SECONDS[interval]
        now = int(time.time())
        last = now - now % step
        # Twice as many bars as asked, some after "end" and before "start", newest first.
        times = [last - i * step for i in range(2 * count)]
        out = []
        for i, t in enumerate(times):
            k = kline(t)
            if symbol == "NUMS":  # numbers as strings, NaN, None and inf here and there
                bar = {
                    "date": datetime.fromtimestamp(t, timezone.utc),
                    "open": str(k[1]),
                    "high": str(k[2]),
                    "low": str(k[3]),
                    "close": str(k[4]),
                    "volume": [None, "nan", float("inf"), "12"][i % 4],
                }
                if i == 3:
                    bar["close"] = float("nan")
                if i == 5:
                    bar["high"] = float("inf")
                out.append(bar)
            elif symbol == "EPOCH":  # epoch seconds ints
                out.append([t, k[1], k[2], k[3], k[4], k[5]])
            elif symbol == "BARE":
                out.append({"date": datetime.fromtimestamp(t, timezone.utc), "value": k[4]})
            else:
                out.append(self.format_datapoint(symbol, interval, k))
            if i % 7 == 0:  # a repeat of the same bar
                out.append(out[-1])
        return out


class BuggyProvider(Provider):
    """Each symbol has a bug: RAISE and BLOCK in get_history, STARTRAISE in start_streaming,
    CLOSERAISE and CLOSEBLOCK (until the test writes ``<CANDLEWIRE_TEST_LOG>.release``)
    in on_close, GHOST publishes forever after on_close (and
    keys nobody asked for), JUNK sends junk."""

    def init(self):
        self.stop = threading.Event()

    def get_dataset(self):
        names = ("OK", "RAISE", "BLOCK", "CLOSERAISE", "CLOSEBLOCK", "STARTRAISE", "GHOST", "JUNK")
        return [row("buggy", s) for s in names]

    def get_history(self, symbol, interval, start_time_query, end_time_query, count):
        log(f"buggy history {symbol} {interval}")
        if symbol == "RAISE":
            raise KeyError("vendor said no")
        if symbol == "BLOCK":
            self.stop.wait(60)
        step = SECONDS[interval]
        now = int(time.time())
        return [kline(t) for t in range(now - now % step - (count - 1) * step, now + 1, step)]

    def start_streaming(self, ws_client, symbol, interval):
        if symbol == "STARTRAISE":
            raise ValueError("no stream for you")
        if symbol == "GHOST":
            threading.Thread(target=self.ghost, args=(interval,), daemon=True).start()
        if symbol == "JUNK":
            threading.Thread(target=self.junk, args=(interval,), daemon=True).start()
        if symbol == "OK":
            threading.Thread(target=self.ok, args=(interval,), daemon=True).start()

    def ok(self, interval):
        while True:
            now = int(time.time())
            self.publish("OK", interval, kline(now - now % SECONDS[interval]))
            time.sleep(0.2)

    def ghost(self, interval):
        while True:
            now = int(time.time())
            for name in ("GHOST", "NOBODY", "OK"):
                self.publish(name, interval, kline(now - now % SECONDS[interval]))
            self.publish("GHOST", "7m", kline(now - now % 60))  # no such interval
            time.sleep(0.05)

    def junk(self, interval):
        now = int(time.time())
        t = now - now % SECONDS[interval]
        junk = [
            "hello",
            None,
            42,
            (1, 2, 3),
            tuple(kline(t)),
            ("JUNK", interval, "bar", False),
            {"action": "write_message", "args": ["{not json"]},
            {"action": "write_message", "args": "abc"},
            {"action": "write_message", "name": "JUNK", "interval": interval, "args": [123]},
            {"action": "nothing"},
            {},
            lambda: None,
            threading.Lock(),
        ]
        for item in junk:
            try:
                self.send_from(item)
            except Exception as exc:
                log(f"junk raised {type(exc).__name__}: {item!r}")
            time.sleep(0.05)
        while True:  # then good bars, which must still arrive
            now = int(time.time())
            self.publish("JUNK", interval, kline(now - now % SECONDS[interval]))
            time.sleep(0.2)

    def on_close(self, ws_client, symbol, interval):
        log(f"buggy on_close {symbol} {interval}")
        if symbol == "CLOSERAISE":
            raise RuntimeError("on_close broke")
        if symbol == "CLOSEBLOCK":  # until the test has seen it reported stuck (30 s at most)
            release = os.environ.get("CANDLEWIRE_TEST_LOG", "") + ".release"
            deadline = time.monotonic() + 30
            while not os.path.exists(release) and time.monotonic() < deadline:
                time.sleep(0.05)


class BlockingStartProvider(Provider):
    """``start_streaming`` of STUCK blocks for 60 s; other symbols stream."""

    def init(self):
        self.keys = set()
        threading.Thread(target=self.pump, daemon=True).start()

    def get_dataset(self):
        return [row("blockstart", s) for s in ("STUCK", "FINE")]

    def get_history(self, symbol, interval, start_time_query, end_time_query, count):
        step = SECONDS[interval]
        now = int(time.time())
        return [kline(t) for t in range(now - now % step - (count - 1) * step, now + 1, step)]

    def start_streaming(self, ws_client, symbol, interval):
        if symbol == "STUCK":
            time.sleep(60)
        self.keys.add((symbol, interval))

    def pump(self):
        while True:
            for symbol, interval in list(self.keys):
                now = int(time.time())
                self.publish(symbol, interval, kline(now - now % SECONDS[interval]))
            time.sleep(0.2)


class FloodProvider(Provider):
    """Publishes as fast as it can (well over 50,000 updates a second) while subscribed."""

    def init(self):
        self.on = threading.Event()
        threading.Thread(target=self.pump, daemon=True).start()

    def get_dataset(self):
        return [row("flood", "FAST")]

    def get_history(self, symbol, interval, start_time_query, end_time_query, count):
        step = SECONDS[interval]
        now = int(time.time())
        return [kline(t) for t in range(now - now % step - (count - 1) * step, now + 1, step)]

    def on_first_subscriber(self, symbol, interval):
        self.on.set()

    def on_last_subscriber(self, symbol, interval):
        self.on.clear()

    def pump(self):
        i = 0
        while True:
            self.on.wait()
            now = int(time.time())
            t = now - now % 60
            for _ in range(1000):
                i += 1
                p = 100 + (i % 1000) / 100
                self.publish("FAST", "1m", (t, 100.0, 111.0, 99.0, p, float(i)))


class CrashingProvider(Provider):
    """Streams, and its process dies (``os._exit``) once, 1 s into its first stream."""

    def init(self):
        self.keys = set()
        self.lock = threading.Lock()
        log(f"crashing init {os.getpid()}")
        threading.Thread(target=self.pump, daemon=True).start()

    def get_dataset(self):
        return [row("crashing", "AAA")]

    def get_history(self, symbol, interval, start_time_query, end_time_query, count):
        step = SECONDS[interval]
        now = int(time.time())
        return [kline(t) for t in range(now - now % step - (count - 1) * step, now + 1, step)]

    def on_first_subscriber(self, symbol, interval):
        log(f"crashing first {symbol} {interval} {os.getpid()}")
        with self.lock:
            self.keys.add((symbol, interval))
        marker = os.environ.get("CANDLEWIRE_TEST_LOG", "") + ".crashed"
        if not os.path.exists(marker):
            open(marker, "w").close()
            threading.Timer(1.0, os._exit, args=(7,)).start()

    def on_last_subscriber(self, symbol, interval):
        with self.lock:
            self.keys.discard((symbol, interval))

    def pump(self):
        publish_forever(self)


class BadInitProvider(Provider):
    """``init`` raises: the vendor's client cannot be built."""

    def init(self):
        raise ConnectionRefusedError("vendor login failed")

    def get_dataset(self):
        return [row("badinit", "AAA")]


class RenamedSeedProvider(SeedPortProvider):
    """The seed port registered under another key, its dataset rows changed to match but
    not the prefix of its datapoint keys (``seedport-...``): a copy-and-rename slip."""

    def get_dataset(self):
        return [row("renamed", "BTCUSDT")]


class OwnInitProvider(Provider):
    """Sets itself up in ``__init__`` and forgets ``super().__init__()``, as plain Python
    classes are written."""

    def __init__(self):
        self.keys = set()
        self.lock = threading.Lock()

    def init(self):
        threading.Thread(target=self.pump, daemon=True).start()

    def get_dataset(self):
        return [row("owninit", "AAA")]

    def get_history(self, symbol, interval, start_time_query, end_time_query, count):
        step = SECONDS[interval]
        now = int(time.time())
        return [kline(t) for t in range(now - now % step - (count - 1) * step, now + 1, step)]

    def on_first_subscriber(self, symbol, interval):
        with self.lock:
            self.keys.add((symbol, interval))

    def on_last_subscriber(self, symbol, interval):
        with self.lock:
            self.keys.discard((symbol, interval))

    def pump(self):
        publish_forever(self)
