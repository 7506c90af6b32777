"""Ingest saturation: many keys updating, few clients; the real server vs the ceiling.

    python bench/ingest.py [--keys 2000] [--clients 10] [--seconds 3]

``--keys`` synthetic keys split evenly over ``--clients`` connections (each key has one
subscriber, so delivered messages = upstream bar updates). The upstream rate is raised until
delivered/ideal < 0.95 or p99 > 100 ms, then bisected, against the real server and against
``bench/ceiling.py``, their steps alternating (as in ``bench/fanout.py``); the load
generator's own ceiling is measured with the frame blaster.
``--profile S`` records the server with py-spy for S seconds at its saturation rate.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CeilingServer,
    LoadGen,
    OurServer,
    Search,
    emit,
    interleave,
    log,
    machine,
    ratio,
    table,
)
from bench.fanout import client_ceiling, connect
from bench.hotspots import print_top, profile_at
from bench.synthetic import symbol_names

TARGET_PER_S = 20_000


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = symbol_names(args.keys)
    per_client = -(-args.keys // args.clients)
    search = {
        "seconds": args.seconds,
        "settle": args.settle,
        "precision": args.precision,
        "log": log,
    }
    log(f"ingest: {args.keys} keys over {args.clients} clients ({per_client} keys each)")
    with LoadGen() as gen:
        with (
            OurServer(BENCH_KEYS=str(args.keys)) as ours,
            CeilingServer("broadcast", args.keys) as ceiling,
        ):
            connect(gen, ours, args.clients, names, per_client)
            connect(gen, ceiling, args.clients, names, per_client)
            searches = [
                Search(target, args.keys, args.start / args.keys, **search)
                for target in (ours, ceiling)
            ]
            found, ceiling_found = interleave(searches, gen)
            profile = profile_at(ours, gen, found, args.profile) if args.profile else None
            gen.call("close")
        client = client_ceiling(gen, args.clients, names, per_client, args.seconds)
    row = {
        "keys": args.keys,
        "clients": args.clients,
        "ours_per_s": found["saturation_per_s"],
        "ours_p99_ms": (found["best"] or {}).get("p99_ms"),
        "ours_limit": found["limited_by"],
        "ceiling_per_s": ceiling_found["saturation_per_s"],
        "ceiling_p99_ms": (ceiling_found["best"] or {}).get("p99_ms"),
        "ratio": ratio(found["saturation_per_s"], ceiling_found["saturation_per_s"]),
        "client_max_per_s": client["per_s"],
        "target_met": found["saturation_per_s"] >= TARGET_PER_S,
    }
    return {
        "row": row,
        "ours": found,
        "ceiling": ceiling_found,
        "client": client,
        "profile": profile,
        "machine": machine(),
    }


COLUMNS = [
    ("keys", "keys", "d"),
    ("clients", "clients", "d"),
    ("ours updates/s", "ours_per_s", ",d"),
    ("p99 ms", "ours_p99_ms", ".1f"),
    ("ceiling updates/s", "ceiling_per_s", ",d"),
    ("p99 ms", "ceiling_p99_ms", ".1f"),
    ("ratio", "ratio", ".2f"),
    ("client max msg/s", "client_max_per_s", ",d"),
    ("ours limited by", "ours_limit", ""),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--start", type=float, default=8000.0, help="upstream updates/s first")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument("--precision", type=float, default=1.2)
    parser.add_argument("--profile", type=float, default=0.0, help="py-spy seconds (0: off)")
    args = parser.parse_args()
    figures = run(args)
    print(
        f"ingest saturation (upstream bar updates/s delivered; target >= {TARGET_PER_S:,} "
        "at p99 <= 100 ms)"
    )
    print(table(COLUMNS, [figures["row"]]))
    if figures["profile"]:
        print_top(figures["profile"])
    emit("ingest", figures)


if __name__ == "__main__":
    main()
