"""The hub's live indicator path in one process: CPU per key update of the ``data_update``
fan-out alone (the ceiling) and with EMA(20), RSI(14), MACD and BBANDS held on every key.

    python bench/indicators_live.py [--keys 100] [--holders 10] [--blocks 40] [--updates 2000]

The hub's own objects (:class:`~backend.hub.fanout.Fanout`, :class:`~backend.hub.indicating.
Indicating`, the bar cache, real client outboxes), no sockets: the provider batches of the
synthetic source (one forming-bar update per key, a new bar every ``--bar-every`` updates)
go through ``Fanout.on_provider_events`` as in the server, and the outboxes are drained after
each block. Blocks with and without the indicators alternate in the same hub, so both meet
the same background load: the plain blocks update ``--keys`` keys no indicator reads, the
others as many keys on which every holder holds the four indicators (attached all along, as
in the server: a key's running computations see every bar close); each figure is the median
of its blocks. The garbage collector is tuned as in the server (the bars frozen
out of collections, young collections every 20,000 allocations). What it leaves out
(socket writes, the event loop) the plain run pays in full in the server, so the figures
here are the indicator path's own cost, not a capacity ratio (``bench/indicators_fanout.py``
gives that).

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.history.cache import BarCache
from backend.hub.clients import Client, Replies
from backend.hub.fanout import Fanout
from backend.hub.indicating import Indicating
from backend.hub.listeners import Listeners
from backend.hub.metrics import Metrics
from backend.hub.subscriptions import Subscriptions
from backend.indicators.engine import Binding, bind
from backend.indicators.registry import build_indicators
from backend.model.bars import SeriesId, WireKeys
from backend.runtime.clocks import Clocks
from backend.runtime.messages import WireEvent
from backend.wire.outbox import Outbox
from bench.common import emit, loadavg
from bench.synthetic import history_bar, symbol_names

SOURCE = "indsyn"
INDICATORS = [
    ("ema", "talib.overlap.EMA", {"timeperiod": 20}),
    ("rsi", "talib.momentum.RSI", {"timeperiod": 14}),
    ("macd", "talib.momentum.MACD", {}),
    ("bbands", "talib.overlap.BBANDS", {"timeperiod": 20}),
]
HISTORY = 7200
GC_THRESHOLDS = (20_000, 20, 100)  # server.GC_YOUNG_THRESHOLD and the rest of tune_gc


class Bench:
    """A hub's fan-out and indicator objects over ``keys`` series, ``holders`` clients each."""

    def __init__(self, keys: int, holders: int) -> None:
        """``keys`` plain keys and ``keys`` keys with the indicators, ``holders`` each."""
        self.metrics = Metrics()
        self.cache = BarCache()
        self.clients: dict[int, Client] = {}
        settings = SimpleNamespace(INDICATOR_UPDATE_SECONDS=0.0, MAX_COUNT=10_000)
        hub: Any = SimpleNamespace(
            cache=self.cache, clients=self.clients, settings=settings, metrics=self.metrics
        )
        self.fanout = Fanout(
            self.cache, Subscriptions(), Listeners(), Clocks(), self.metrics, None, _kick
        )
        self.indicating = Indicating(hub, build_indicators(), _kick)
        self.indicating.attach(self.fanout)
        names = symbol_names(2 * keys)
        self.names = {"plain": names[:keys], "indicators": names[keys:]}
        self.t0 = (int(time.time()) // 60 - HISTORY) * 60
        forming = self.t0 + 60 * (HISTORY - 1)
        self.minute = dict.fromkeys(self.names, forming)  # the forming bar of each set
        self.updated = dict.fromkeys(self.names, 0)  # key updates of each set so far
        self.price = 100.0
        for name in names:
            key = SeriesId(SOURCE, name, "1m")
            series = self.cache.get(key)
            series.merge([history_bar(self.t0 + 60 * i) for i in range(HISTORY)])
            series.live = True
            self.fanout._wire[key] = WireKeys(key, "candlestick")
        for i in range(2 * keys * holders):
            key = SeriesId(SOURCE, names[i % (2 * keys)], "1m")
            client = Client(i, "bench", Outbox(10_000), _gone, Replies(8, "bench"))
            self.clients[i] = client
            self.fanout.start_delivery(client, key)
            if i % (2 * keys) < keys:  # a plain key: no indicator reads it
                continue
            for label, indicator_id, inputs in INDICATORS:
                bound = bind(
                    self.indicating.indicators,
                    indicator_id,
                    inputs,
                    [Binding("close", key, "close")],
                )
                self.indicating.live.subscribe(i, f"{label}_{key.name}", bound)

    def batch(self, label: str, updates: int, bar_every: int) -> list[WireEvent]:
        """``updates`` forming-bar updates of the ``label`` keys, round-robin; a new bar of
        each every ``bar_every`` updates of it."""
        names = self.names[label]
        events: list[WireEvent] = []
        for _ in range(updates):
            i = self.updated[label]
            self.updated[label] += 1
            if i % (len(names) * bar_every) == 0 and i:
                self.minute[label] += 60
            self.price += 0.01
            bar = (self.minute[label], 100.0, self.price + 1, 99.0, self.price, 1.0)
            events.append((names[i % len(names)], "1m", bar, False))
        return events

    def block(self, events: list[WireEvent], per_batch: int) -> float:
        """CPU seconds to fan out ``events`` in provider batches of ``per_batch``."""
        started = time.process_time()
        for start in range(0, len(events), per_batch):
            self.fanout.on_provider_events(SOURCE, events[start : start + per_batch])
        spent = time.process_time() - started
        for client in self.clients.values():
            client.outbox.drain()
        return spent


def _kick(client: Client, reason: str) -> None:
    raise RuntimeError(f"client {client.id} kicked: {reason}")


def _gone(code: int, reason: str) -> None:
    pass


def run(args: argparse.Namespace) -> dict[str, Any]:
    bench = Bench(args.keys, args.holders)
    gc.set_threshold(*GC_THRESHOLDS)  # as the server runs (server.tune_gc): the bars frozen
    gc.collect()
    gc.freeze()
    costs: dict[str, list[float]] = {"plain": [], "indicators": []}
    for i in range(args.blocks + 2):
        for label in ("plain", "indicators"):
            events = bench.batch(label, args.updates, args.bar_every)
            spent = bench.block(events, args.per_batch)
            if i >= 2:  # the first blocks warm up (tails, streams, caches)
                costs[label].append(1e6 * spent / args.updates)
    plain, rich = (statistics.median(costs[k]) for k in ("plain", "indicators"))
    return {
        "keys": args.keys,
        "holders": args.holders,
        "per_batch": args.per_batch,
        "bar_every": args.bar_every,
        "us_per_key_update": {"plain": round(plain, 2), "indicators": round(rich, 2)},
        "us_indicator_path": round(rich - plain, 2),
        "us_per_computation": round((rich - plain) / len(INDICATORS), 2),
        "loadavg": loadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100, help="keys of each kind")
    parser.add_argument("--holders", type=int, default=10, help="clients per key")
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--updates", type=int, default=2000, help="key updates per block")
    parser.add_argument("--per-batch", type=int, default=20, help="key updates per batch")
    parser.add_argument("--bar-every", type=int, default=50, help="updates per key per bar")
    args = parser.parse_args()
    f = run(args)
    us = f["us_per_key_update"]
    print(
        f"{f['keys']} keys x {f['holders']} holders x {len(INDICATORS)} indicators, "
        f"batches of {f['per_batch']} key updates, a new bar every {f['bar_every']} updates:\n"
        f"  CPU per key update: data_update fan-out alone {us['plain']} us, with the "
        f"indicators {us['indicators']} us\n"
        f"  indicator path {f['us_indicator_path']} us per key update "
        f"({f['us_per_computation']} us per shared computation incl. encode + queue); "
        f"load {f['loadavg']}"
    )
    emit("indicators_live", f)


if __name__ == "__main__":
    main()
