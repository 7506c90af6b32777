"""History benchmark: ``data_init`` latency from memory, from SQLite and from the provider.

    python bench/history.py [--keys 100] [--repeat 200] [--seconds 3] [--rounds 3]

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
with it. Both servers run at once (a load generator process each, on the client core) and
the throughput windows alternate, ours then the ceiling's, ``--rounds`` times: the row
shows the median of each and the median of the rounds' ratios (target >= 0.5, issue 17).
The ceiling runs on uvloop; ``--ceiling-loop asyncio`` runs it on the standard library's
loop, the one the hub runs on. ``CACHE_MAX_BARS`` is raised so that the warm keys stay in
memory. Every answer is checked to hold exactly ``count`` bars. The provider's
``get_history`` calls are counted per phase (a request whose newest bars are not known to
be current also asks the provider for the tail). Prints a table, then one JSON line.
``--profile S`` records the server with py-spy for S seconds while 100 clients ask for 300
bars (``--profile-count 5000``: 5,000).
"""

from __future__ import annotations

import argparse
import statistics
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
THROUGHPUT_TARGET_X = 0.5  # answers/s of 100 clients, against the ceiling's (issue 17)
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


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the rounds of one throughput window."""
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


def profile_during(target: Target, work: Any, seconds: float, rate: str) -> dict[str, Any]:
    """py-spy on the server while ``work()`` runs (it must last longer than ``seconds``)."""
    result: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: result.update(pyspy_top(target.pid, seconds, children=True))
    )
    thread.start()
    work()
    thread.join()
    result["rate"] = rate
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
    # Both servers run side by side (the idle one costs nothing) so that the throughput
    # windows alternate: on a shared machine, each ratio compares figures seconds apart.
    with (
        LoadGen() as gen,
        LoadGen() as cgen,
        server,
        CeilingServer("broadcast", loop=args.ceiling_loop) as target,
    ):
        connect(gen, server, args.clients)
        connect(cgen, target, args.clients)
        for count in COUNTS:
            log(f"history: {count} bars from the provider ({args.keys} cold keys)")
            call_log.since_last()
            ours[f"provider_{count}"] = sequential(
                gen, [request(k, count) for k in keys[count]], count
            )
            calls[f"provider_{count}"] = call_log.since_last()
        for count in COUNTS:
            log(f"history: {count} bars from memory, and the ceiling")
            repeat = args.repeat if count < 1000 else max(20, args.repeat // 5)
            ours[f"memory_{count}"] = sequential(
                gen, [request(keys[count][0], count)] * repeat, count
            )
            ceiling[f"memory_{count}"] = sequential(
                cgen, [request(keys[count][0], count)] * repeat, count
            )
            sequential(cgen, [request(k, count) for k in keys[count][: args.clients]], count)
            calls[f"memory_{count}"] = call_log.since_last()
            log(f"history: {args.clients} clients x {count} bars, {args.rounds} rounds each")
            rounds = []
            for _ in range(args.rounds):
                tp = throughput(gen, keys[count][: args.clients], count, args.seconds)
                ctp = throughput(cgen, keys[count][: args.clients], count, args.seconds)
                rounds.append((tp, ctp))
            ours[f"throughput_{count}"] = median_round([tp for tp, _ in rounds])
            ceiling[f"throughput_{count}"] = median_round([ctp for _, ctp in rounds])
            ours[f"throughput_{count}"]["x_ceiling_rounds"] = [
                ratio(tp["per_s"], ctp["per_s"]) for tp, ctp in rounds
            ]
            calls[f"throughput_{count}"] = call_log.since_last()
        if args.profile:
            n = args.profile_count
            log(f"history: py-spy during {args.clients} clients asking for {n} bars")
            profile = profile_during(
                server,
                lambda: throughput(gen, keys[n][: args.clients], n, args.profile + 1),
                args.profile,
                f"{args.clients} clients x {n} bars",
            )
        gen.call("close")
        cgen.call("close")
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
    rows = []
    for count in COUNTS:
        for source in ("memory", "sqlite", "provider"):
            ours_figures = ours[f"{source}_{count}"]
            ceiling_figures = ceiling[f"memory_{count}"]  # the floor for this message size
            target_ms = TARGETS_P50_MS.get((source, count))
            rows.append(
                {
                    "count": count,
                    "from": source,
                    "n": ours_figures["n"],
                    "p50_ms": ours_figures["p50_ms"],
                    "p99_ms": ours_figures["p99_ms"],
                    "ceiling_p50_ms": ceiling_figures.get("p50_ms"),
                    "x_ceiling": ratio(ours_figures["p50_ms"], ceiling_figures.get("p50_ms")),
                    "target_ms": target_ms,
                    "met": None if target_ms is None else ours_figures["p50_ms"] <= target_ms,
                    "provider_calls": calls[f"{source}_{count}"],
                    "complete": ours_figures["complete"],
                }
            )
        tp, ctp = ours[f"throughput_{count}"], ceiling[f"throughput_{count}"]
        x_ceiling = statistics.median(r or 0.0 for r in tp["x_ceiling_rounds"])
        rows.append(
            {
                "count": count,
                "from": f"{args.clients} clients",
                "answers_per_s": tp["per_s"],
                "p50_ms": tp["p50_ms"],
                "p99_ms": tp["p99_ms"],
                "ceiling_answers_per_s": ctp["per_s"],
                "x_ceiling": round(x_ceiling, 3),
                "x_ceiling_rounds": tp["x_ceiling_rounds"],
                "target_x": THROUGHPUT_TARGET_X,
                "met": x_ceiling >= THROUGHPUT_TARGET_X,
                "provider_calls": calls[f"throughput_{count}"],
            }
        )
    return {
        "rows": rows,
        "ours": ours,
        "ceiling": ceiling,
        "ceiling_loop": args.ceiling_loop,
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
    ("target x", "target_x", "g"),
    ("met", "met", ""),
    ("provider calls", "provider_calls", "d"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100, help="cold keys per count")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=200, help="memory requests (300 bars)")
    parser.add_argument("--seconds", type=float, default=3.0, help="throughput window")
    parser.add_argument(
        "--rounds", type=int, default=3, help="throughput windows, ours and the ceiling's in turn"
    )
    parser.add_argument("--profile", type=float, default=0.0, help="py-spy seconds (0: off)")
    parser.add_argument("--profile-count", type=int, default=300, choices=COUNTS)
    parser.add_argument(
        "--ceiling-loop",
        default="uvloop",
        choices=("uvloop", "asyncio"),
        help="the ceiling's event loop (the hub runs on asyncio's own: README, Performance)",
    )
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
