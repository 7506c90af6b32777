"""History benchmark: ``data_init`` latency from memory, from SQLite and from the provider.

    python bench/history.py [--keys 100] [--repeat 200] [--seconds 4]

The real server with a provider of deterministic 1m history (``bench.synthetic:
HistoryProvider``), asked with ``stream: false`` ``data`` requests over loopback by the load
generator process (on the other core; latency = request sent to reply received, end to end).
For ``count`` = 300 and 5,000:

- provider: the first request for each of ``--keys`` cold keys (the provider is asked);
- memory: ``--repeat`` back-to-back requests on one warm key;
- throughput: 100 clients, each repeating a request for its own warm key, answers/s;
- SQLite: the server is restarted on the same database, then the first request per key.

The same memory and throughput runs against ``bench/ceiling.py``, which answers each
request with a pre-encoded ``data_init`` of the same size: its latency is the floor of
loopback + WebSocket + client for that message, and every row of that count is compared
with it. ``CACHE_MAX_BARS`` is raised so that the
warm keys stay in memory. Every answer is checked to hold exactly ``count`` bars. The
provider's ``get_history`` calls are counted per phase (a request whose newest bars are
not known to be current also asks the provider for the tail). Prints a table, then one JSON
line. ``--profile S`` records the server with py-spy for S seconds while 100 clients ask
for 300 bars.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CeilingServer,
    LoadGen,
    OurServer,
    Target,
    emit,
    log,
    machine,
    ratio,
    summary,
    table,
)
from bench.hotspots import print_top, pyspy_top
from bench.synthetic import symbol_names

COUNTS = (300, 5000)
UNMETERED = {
    "UPSTREAM_CALLS_PER_SECOND": "1000000",
    "UPSTREAM_BURST": "1000000",
    "PROVIDER_CALLS_PER_SECOND": "1000000",
}
TARGETS_P50_MS = {("memory", 300): 2.0, ("sqlite", 300): 10.0, ("sqlite", 5000): 40.0}


def request(name: str, count: int) -> bytes:
    return orjson.dumps(
        [
            {
                "type": "data",
                "source": "history",
                "name": name,
                "interval": "1m",
                "count": count,
                "stream": False,
            }
        ]
    )


class CallLog:
    """Counts the provider's get_history calls (lines of its log file) between phases."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen = 0

    def since_last(self) -> int:
        lines = self.path.read_text().count("\n") if self.path.exists() else 0
        new, self.seen = lines - self.seen, lines
        return new


def sequential(gen: LoadGen, payloads: list[bytes], count: int) -> dict[str, Any]:
    result = gen.call("rpc", index=0, payloads=payloads)
    figures = summary(result["latencies_ms"])
    figures["complete"] = sum(b == count for b in result["bars"]) / len(result["bars"])
    return figures


def throughput(gen: LoadGen, names: list[str], count: int, seconds: float) -> dict[str, Any]:
    payloads = [request(name, count) for name in names]
    result = gen.call("rpc_loop", payloads=payloads, seconds=seconds)
    return {
        "per_s": round(result["per_s"], 1),
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
    }


def profile_during(target: Target, work: Any, seconds: float) -> dict[str, Any]:
    """py-spy on the server while ``work()`` runs (it must last longer than ``seconds``)."""
    result: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: result.update(pyspy_top(target.pid, seconds, children=True))
    )
    thread.start()
    work()
    thread.join()
    result["rate"] = "100 clients x 300 bars"
    return result


def connect(gen: LoadGen, target: Target, clients: int) -> None:
    result = gen.call("connect", url=target.ws_url, clients=clients)
    if result["connected"] != clients:
        raise RuntimeError(f"{target.label}: {result}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    keys = {
        count: symbol_names(args.keys * 2, "HIS")[i * args.keys : (i + 1) * args.keys]
        for i, count in enumerate(COUNTS)
    }
    ours: dict[str, Any] = {}
    ceiling: dict[str, Any] = {}
    profile: dict[str, Any] | None = None
    calls: dict[str, int] = {}
    with LoadGen() as gen:
        server = OurServer(
            providers="history",
            BENCH_HISTORY_SYMBOLS=str(args.keys * 2),
            CACHE_MAX_BARS=str(max(2_000_000, args.keys * sum(COUNTS) * 2)),
            # The load generator is one client: without these its upstream budget (60 calls
            # at once, then 5/s) refused most cold keys, answered empty in no time.
            **UNMETERED,
        )
        call_log = CallLog(server.tmp / "history-calls.log")
        server.env["BENCH_HISTORY_LOG"] = str(call_log.path)
        with server:
            connect(gen, server, args.clients)
            for count in COUNTS:
                log(f"history: {count} bars from the provider ({args.keys} cold keys)")
                call_log.since_last()
                ours[f"provider_{count}"] = sequential(
                    gen, [request(k, count) for k in keys[count]], count
                )
                calls[f"provider_{count}"] = call_log.since_last()
            for count in COUNTS:
                log(f"history: {count} bars from memory")
                repeat = args.repeat if count < 1000 else max(20, args.repeat // 5)
                ours[f"memory_{count}"] = sequential(
                    gen, [request(keys[count][0], count)] * repeat, count
                )
                calls[f"memory_{count}"] = call_log.since_last()
                tp = throughput(gen, keys[count][: args.clients], count, args.seconds)
                ours[f"throughput_{count}"] = tp
                calls[f"throughput_{count}"] = call_log.since_last()
            if args.profile:
                log(f"history: py-spy during {args.clients} clients asking for 300 bars")
                profile = profile_during(
                    server,
                    lambda: throughput(gen, keys[300][: args.clients], 300, args.profile + 1),
                    args.profile,
                )
            gen.call("close")
            time.sleep(1.0)  # the store flushes every 0.25 s; stopping flushes again
            log("history: restarting the server on the same database")
            server.restart()
            connect(gen, server, 1)
            for count in COUNTS:
                log(f"history: {count} bars from SQLite after the restart")
                call_log.since_last()
                ours[f"sqlite_{count}"] = sequential(
                    gen, [request(k, count) for k in keys[count]], count
                )
                calls[f"sqlite_{count}"] = call_log.since_last()
            gen.call("close")
        with CeilingServer("broadcast") as target:
            connect(gen, target, args.clients)
            for count in COUNTS:
                log(f"history: ceiling, {count} bars")
                repeat = args.repeat if count < 1000 else max(20, args.repeat // 5)
                ceiling[f"memory_{count}"] = sequential(
                    gen, [request(keys[count][0], count)] * repeat, count
                )
                sequential(gen, [request(k, count) for k in keys[count][: args.clients]], count)
                ceiling[f"throughput_{count}"] = throughput(
                    gen, keys[count][: args.clients], count, args.seconds
                )
            gen.call("close")
    rows = []
    for count in COUNTS:
        for source in ("memory", "sqlite", "provider"):
            ours_figures = ours[f"{source}_{count}"]
            ceiling_figures = ceiling[f"memory_{count}"]  # the floor for this message size
            target = TARGETS_P50_MS.get((source, count))
            rows.append(
                {
                    "count": count,
                    "from": source,
                    "n": ours_figures["n"],
                    "p50_ms": ours_figures["p50_ms"],
                    "p99_ms": ours_figures["p99_ms"],
                    "ceiling_p50_ms": ceiling_figures.get("p50_ms"),
                    "x_ceiling": ratio(ours_figures["p50_ms"], ceiling_figures.get("p50_ms")),
                    "target_ms": target,
                    "met": None if target is None else ours_figures["p50_ms"] <= target,
                    "provider_calls": calls[f"{source}_{count}"],
                    "complete": ours_figures["complete"],
                }
            )
        tp, ctp = ours[f"throughput_{count}"], ceiling[f"throughput_{count}"]
        rows.append(
            {
                "count": count,
                "from": f"{args.clients} clients",
                "answers_per_s": tp["per_s"],
                "p50_ms": tp["p50_ms"],
                "p99_ms": tp["p99_ms"],
                "ceiling_answers_per_s": ctp["per_s"],
                "x_ceiling": ratio(tp["per_s"], ctp["per_s"]),
                "provider_calls": calls[f"throughput_{count}"],
            }
        )
    return {
        "rows": rows,
        "ours": ours,
        "ceiling": ceiling,
        "provider_calls": calls,
        "profile": profile,
        "machine": machine(),
    }


COLUMNS = [
    ("count", "count", "d"),
    ("from", "from", ""),
    ("n", "n", "d"),
    ("p50 ms", "p50_ms", ".2f"),
    ("p99 ms", "p99_ms", ".2f"),
    ("ceiling p50", "ceiling_p50_ms", ".2f"),
    ("answers/s", "answers_per_s", ",.0f"),
    ("ceiling answers/s", "ceiling_answers_per_s", ",.0f"),
    ("ours/ceiling", "x_ceiling", ".2f"),
    ("target p50", "target_ms", "g"),
    ("provider calls", "provider_calls", "d"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100, help="cold keys per count")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=200, help="memory requests (300 bars)")
    parser.add_argument("--seconds", type=float, default=4.0, help="throughput window")
    parser.add_argument("--profile", type=float, default=0.0, help="py-spy seconds (0: off)")
    args = parser.parse_args()
    figures = run(args)
    print(
        "data_init latency, stream: false, end to end over loopback (ours/ceiling: latency "
        "ratio, or answers/s ratio for the clients rows)"
    )
    print(table(COLUMNS, figures["rows"]))
    bad = [r for r in figures["rows"] if r.get("complete", 1) != 1]
    if bad:
        print(f"WARNING: answers without exactly count bars: {bad}")
    if figures["profile"]:
        print_top(figures["profile"])
    emit("history", figures)


if __name__ == "__main__":
    main()
