"""Scan benchmark: a scan of 1,000 symbols, cold (history fetched from the provider) and then
with the history cached, while a client streams live bars from the same hub.

    python bench/scan.py [--symbols 1000] [--runs 3] [--stream-keys 10] [--stream-rate 20]

The real server (``populate.py`` + ``server.py``) with two sources: ``history``
(``bench/synthetic.py``'s ``HistoryProvider``: ``--symbols`` symbols of deterministic 1m
history) and ``synthetic`` streaming ``--stream-keys`` keys at ``--stream-rate`` updates/s
each. The scan is the Filters window's request: every symbol matching "History" whose 1m
close > 0 and RSI(14) > 0 (so every symbol matches and is reported). The first scan fetches
each symbol's tail from the provider (cold); the next ``--runs`` read the cache and store
(target: under 5 s). Meanwhile a client subscribed to the synthetic keys records the
provider-to-client latency of its ``data_update``s (the bar's volume carries the publish
time): p50/p99 before and during the scans show whether scanning starves streaming.

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import OurServer, emit, log, machine, summary, table
from bench.synthetic import symbol_names
from tests.harness import WsClient

RSI_LABEL = "RSI timeperiod=14"


def scan_request(template: str) -> dict[str, Any]:
    column = {
        "source": "history",
        "name": template,
        "interval": "1m",
        "value": f"history-{template}-1m-close",
        "dataKey": "close",
    }
    rsi = {
        "type": "indicator",
        "id": f"talib-momentum-RSI_timeperiod-14_close-history-{template}-1m-close",
        "indicator": {"id": "talib.momentum.RSI", "name": "RSI"},
        "inputs": {"timeperiod": "14"},
        "dataMap": {"close": column},
    }
    return {
        "type": "scan",
        "search": "History",
        "operators": ["and"],
        "rules": [
            {
                "type1": "data",
                "source1": "history",
                "name1": template,
                "interval1": "1m",
                "key1": "close",
                "comparator": ">",
                "type2": "value",
                "value2": "0",
            },
            {
                "type1": "indicator",
                "indicator1": RSI_LABEL,
                "indicator_interval1": "1m",
                "output1": "RSI",
                "comparator": ">",
                "type2": "value",
                "value2": "0",
            },
        ],
        "indicators": {RSI_LABEL: {"indicator": rsi, "outputs": [{"name": "RSI"}]}},
        "dataProviderConfig": {
            "data": [{"type": "data", "source": "history", "name": template, "interval": "1m"}]
        },
    }


class Streamer:
    """A client subscribed to the synthetic keys; latencies of its updates, by window."""

    def __init__(self, client: WsClient) -> None:
        self.client = client
        self.seen = 0

    def latencies(self) -> list[float]:
        """Provider-to-client ms of the updates since the last call (read as they arrived)."""
        messages = self.client.messages[self.seen :]
        self.seen += len(messages)
        out = []
        for m in messages:
            if m.get("type") == "data_update":
                published = next(v for k, v in m["data"].items() if k.endswith("-volume"))
                out.append(1000 * (m["_at"] - published))
        return out


async def timed_scan(client: WsClient, request: dict[str, Any]) -> dict[str, Any]:
    after = len(client.messages)
    started = time.perf_counter()
    await client.send(request)
    done = await client.wait_for("scan_done", after=after, timeout=600)
    return {
        "seconds": round(time.perf_counter() - started, 3),
        "total": done["total"],
        "scanned": done["scanned"],
        "matched": done["matched"],
        "results": len(client.of_type("scan_result", after)),
    }


async def run_async(args: argparse.Namespace, ours: OurServer) -> dict[str, Any]:
    scanner = await WsClient.open(ours.ws_url, max_size=None)
    streaming = await WsClient.open(ours.ws_url)
    stamp(streaming)
    keys = symbol_names(args.stream_keys)
    await streaming.send(
        *({"type": "data", "source": "synthetic", "name": k, "interval": "1m"} for k in keys)
    )
    streamer = Streamer(streaming)
    await asyncio.sleep(2.0)  # a baseline window of streaming alone
    baseline = streamer.latencies()
    request = scan_request(symbol_names(1, "HIS")[0])
    runs = []
    for i in range(args.runs + 1):
        result = await timed_scan(scanner, request)
        result["run"] = "cold" if i == 0 else f"cached {i}"
        result["stream"] = summary(streamer.latencies())
        runs.append(result)
        log(f"  scan {result['run']}: {result}")
    await scanner.close()
    await streaming.close()
    return {"baseline_stream": summary(baseline), "runs": runs}


def stamp(client: WsClient) -> None:
    """Record each message's arrival time (``_at``) as the client's reader appends it."""

    class Stamped(list[dict[str, Any]]):
        def append(self, item: dict[str, Any]) -> None:
            item["_at"] = time.time()
            super().append(item)

    client.messages = Stamped()


def run(args: argparse.Namespace) -> dict[str, Any]:
    with OurServer(
        providers="history,synthetic",
        BENCH_HISTORY_SYMBOLS=str(args.symbols),
        BENCH_KEYS=str(args.stream_keys),
    ) as ours:
        ours.set_rate(args.stream_rate)
        figures = asyncio.run(run_async(args, ours))
    figures.update(
        {
            "symbols": args.symbols,
            "stream_keys": args.stream_keys,
            "stream_rate": args.stream_rate,
            "machine": machine(),
        }
    )
    return figures


def print_report(f: dict[str, Any]) -> None:
    print(
        f"\nscan of {f['symbols']} symbols (1m close > 0 and RSI(14) > 0), while "
        f"{f['stream_keys']} keys stream at {f['stream_rate']}/s each"
    )
    rows = [
        {
            **r,
            "p50": r["stream"]["p50_ms"],
            "p99": r["stream"]["p99_ms"],
            "max": r["stream"]["max_ms"],
        }
        for r in f["runs"]
    ]
    base = f["baseline_stream"]
    rows.insert(0, {"run": "streaming alone", "p50": base["p50_ms"], "p99": base["p99_ms"]})
    rows[0]["max"] = base["max_ms"]
    columns = [
        ("run", "run", ""),
        ("seconds", "seconds", ".2f"),
        ("scanned", "scanned", "d"),
        ("matched", "matched", "d"),
        ("stream p50 ms", "p50", ".1f"),
        ("p99 ms", "p99", ".1f"),
        ("max ms", "max", ".1f"),
    ]
    print(table(columns, rows))
    print("target: a cached scan of 1,000 symbols under 5 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--stream-keys", type=int, default=10)
    parser.add_argument("--stream-rate", type=float, default=20.0)
    args = parser.parse_args()
    figures = run(args)
    print_report(figures)
    emit("scan", figures)


if __name__ == "__main__":
    main()
