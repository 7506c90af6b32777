"""Idle connections: server memory per subscribed, idle WebSocket connection.

    python bench/connections.py [--connections 10000] [--keys 100]

Opens ``--connections`` connections from the load generator process (the open-file limit is
raised to its hard limit in every process), each subscribed to one of ``--keys`` synthetic
keys that never update, waits, and reads the server process's RSS before and after: the
difference divided by the number of connections. Same against ``bench/ceiling.py``.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CeilingServer,
    LoadGen,
    OurServer,
    Target,
    emit,
    log,
    machine,
    raise_nofile,
    ratio,
    table,
)
from bench.synthetic import symbol_names

TARGET_KB = 30.0


def measure(gen: LoadGen, target: Target, connections: int, names: list[str]) -> dict[str, Any]:
    time.sleep(1.0)
    before = target.rss()
    result = gen.call("connect", url=target.ws_url, clients=connections, names=names, per_client=1)
    log(
        f"  {target.label}: {result['connected']} connected in {result['seconds']} s "
        f"({result['failed']} failed {result['first_failure'] or ''})"
    )
    time.sleep(2.0)
    after = target.rss()
    connected = result["connected"]
    per_connection = (after - before) / max(1, connected) / 1024
    gen.call("close")
    return {
        "connected": connected,
        "connect_s": result["seconds"],
        "rss_before_mb": round(before / 2**20, 1),
        "rss_after_mb": round(after / 2**20, 1),
        "kb_per_connection": round(per_connection, 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    limit = raise_nofile()
    names = symbol_names(args.keys)
    log(f"connections: {args.connections} idle subscribed connections (open-file limit {limit})")
    with LoadGen() as gen:
        with OurServer(BENCH_KEYS=str(args.keys), MAX_CLIENTS=str(args.connections + 1000)) as s:
            ours = measure(gen, s, args.connections, names)
        with CeilingServer("broadcast", args.keys) as c:
            ceiling = measure(gen, c, args.connections, names)
    row = {
        "connections": args.connections,
        "ours_connected": ours["connected"],
        "ours_kb": ours["kb_per_connection"],
        "ours_rss_mb": ours["rss_after_mb"],
        "ours_connect_s": ours["connect_s"],
        "ceiling_kb": ceiling["kb_per_connection"],
        "ceiling_rss_mb": ceiling["rss_after_mb"],
        "ratio": ratio(ours["kb_per_connection"], ceiling["kb_per_connection"]),
        "target_met": ours["connected"] == args.connections
        and ours["kb_per_connection"] <= TARGET_KB,
    }
    return {"row": row, "ours": ours, "ceiling": ceiling, "machine": machine()}


COLUMNS = [
    ("connections", "connections", ",d"),
    ("ours connected", "ours_connected", ",d"),
    ("ours KB/conn", "ours_kb", ".1f"),
    ("ours RSS MB", "ours_rss_mb", ".0f"),
    ("ceiling KB/conn", "ceiling_kb", ".1f"),
    ("ceiling RSS MB", "ceiling_rss_mb", ".0f"),
    ("ours/ceiling", "ratio", ".2f"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=100)
    args = parser.parse_args()
    figures = run(args)
    print(f"idle subscribed connections: server RSS per connection (target <= {TARGET_KB:g} KB)")
    print(table(COLUMNS, [figures["row"]]))
    emit("connections", figures)


if __name__ == "__main__":
    main()
