"""Fan-out saturation: the real server vs the ``websockets`` broadcast ceiling.

    python bench/fanout.py [--clients 100,1000,5000] [--keys 100] [--keys-per-client 5]
                           [--seconds 3] [--latency-clients 1000] [--profile SECONDS]

For each N: ``--keys`` synthetic keys (``bench/synthetic.py``), N clients each subscribed to
K keys (``--keys-per-client``) in a load generator process on the other core. The update
rate per key is raised until delivered/ideal < 0.95 or p99 latency > 100 ms, then bisected;
the figure is the largest delivered messages/s that met both. The same search runs against
``bench/ceiling.py`` (``websockets.broadcast()``, same source, same frames): both servers
run at once (only one has its source on at a time) and their search steps alternate, so both
meet the same background load. The load generator's own ceiling is measured against a server
that only blasts frames. At N =
``--latency-clients`` both servers are then measured at half of our saturation rate (p50,
p99, max latency). ``--profile S`` records the hub with py-spy for S seconds at our
saturation rate (N = ``--latency-clients``) and prints the top frames.

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
    Search,
    Target,
    drain,
    emit,
    interleave,
    loadavg,
    log,
    machine,
    ratio,
    table,
    window,
)
from bench.hotspots import print_top, profile_at
from bench.synthetic import symbol_names


def connect(gen: LoadGen, target: Target, clients: int, names: list[str], per_client: int) -> None:
    result = gen.call(
        "connect", url=target.ws_url, clients=clients, names=names, per_client=per_client
    )
    log(f"  {target.label}: {result['connected']} clients connected in {result['seconds']} s")
    if result["connected"] != clients:
        raise RuntimeError(
            f"{target.label}: only {result['connected']} of {clients} connected: "
            f"{result['first_failure']} {result['error_samples']}"
        )


def latency_at(target: Target, gen: LoadGen, rate: float, seconds: float) -> dict[str, Any]:
    target.set_rate(rate)
    time.sleep(1.5)
    m = window(target, gen, seconds)
    drain(target, gen)
    return {
        "rate": round(rate, 4),
        "delivered_per_s": round(m["per_s"]),
        "p50_ms": m["p50_ms"],
        "p99_ms": m["p99_ms"],
        "max_ms": m["max_ms"],
        "n": m["n"],
        "server_cpu": m["server_cpu"],
        "client_cpu": m["client_cpu"],
    }


def client_ceiling(
    gen: LoadGen, clients: int, names: list[str], per_client: int, seconds: float
) -> dict[str, Any]:
    with CeilingServer("blast") as blaster:
        connect(gen, blaster, clients, names, per_client)
        blaster.set_rate(1)
        time.sleep(1.0)
        m = window(blaster, gen, seconds)
        blaster.set_rate(0)
        gen.call("quiet", timeout=20)
        gen.call("close")
    log(
        f"  blaster: the load generator took {m['per_s']:.0f} messages/s "
        f"(client cpu {m['client_cpu']}, blaster cpu {m['server_cpu']})"
    )
    return {
        "per_s": round(m["per_s"]),
        "client_cpu": m["client_cpu"],
        "server_cpu": m["server_cpu"],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = symbol_names(args.keys)
    k = args.keys_per_client
    rows: list[dict[str, Any]] = []
    latency: dict[str, Any] = {}
    profile: dict[str, Any] | None = None
    search = {
        "seconds": args.seconds,
        "settle": args.settle,
        "precision": args.precision,
        "log": log,
    }
    previous: dict[str, float] = {}
    with LoadGen() as gen:
        for n in [int(x) for x in args.clients.split(",")]:
            subs = n * k
            log(f"fan-out: {n} clients x {k} keys of {args.keys} ({subs} subscriptions)")
            with (
                OurServer(BENCH_KEYS=str(args.keys), MAX_CLIENTS=str(n + 100)) as ours,
                CeilingServer("broadcast", args.keys, args.ceiling_loop) as ceiling,
            ):
                connect(gen, ours, n, names, k)
                connect(gen, ceiling, n, names, k)
                searches = [
                    Search(
                        target,
                        subs,
                        (0.5 * previous[target.label] if target.label in previous else args.start)
                        / subs,
                        **search,
                    )
                    for target in (ours, ceiling)
                ]
                found, ceiling_found = interleave(searches, gen)
                rss_mb = ours.rss() / 2**20
                if n == args.latency_clients:
                    best_rate = found["best"]["rate"] if found["best"] else searches[0].rate
                    latency["rate"] = best_rate / 2
                    for name, target in (("ours", ours), ("ceiling", ceiling)):
                        latency[name] = latency_at(target, gen, best_rate / 2, args.latency_seconds)
                    if args.profile:
                        profile = profile_at(ours, gen, found, args.profile)
                gen.call("close")
            for label, result in ((ours.label, found), (ceiling.label, ceiling_found)):
                if result["saturation_per_s"]:
                    previous[label] = result["saturation_per_s"]
            client = client_ceiling(gen, n, names, k, args.seconds)
            ours_best = found["saturation_per_s"]
            ceiling_best = ceiling_found["saturation_per_s"]
            rows.append(
                {
                    "clients": n,
                    "subscriptions": subs,
                    "ours_per_s": ours_best,
                    "ours_p99_ms": (found["best"] or {}).get("p99_ms"),
                    "ours_limit": found["limited_by"],
                    "ceiling_per_s": ceiling_best,
                    "ceiling_p99_ms": (ceiling_found["best"] or {}).get("p99_ms"),
                    "ceiling_limit": ceiling_found["limited_by"],
                    "ratio": ratio(ours_best, ceiling_best),
                    "client_max_per_s": client["per_s"],
                    "client_bound": bool(max(ours_best, ceiling_best) >= 0.8 * client["per_s"]),
                    "server_rss_mb": round(rss_mb, 1),
                    "ours": found,
                    "ceiling": ceiling_found,
                }
            )
    return {
        "keys": args.keys,
        "keys_per_client": k,
        "rows": rows,
        "latency": latency,
        "profile": profile,
        "machine": machine(),
        "ceiling_loop": args.ceiling_loop,
        "loadavg_end": loadavg(),
    }


COLUMNS = [
    ("clients", "clients", "d"),
    ("subs", "subscriptions", "d"),
    ("ours msg/s", "ours_per_s", ",d"),
    ("p99 ms", "ours_p99_ms", ".1f"),
    ("ceiling msg/s", "ceiling_per_s", ",d"),
    ("p99 ms", "ceiling_p99_ms", ".1f"),
    ("ratio", "ratio", ".2f"),
    ("client max msg/s", "client_max_per_s", ",d"),
    ("ours limited by", "ours_limit", ""),
    ("RSS MB", "server_rss_mb", ".0f"),
]


def print_report(figures: dict[str, Any]) -> None:
    print(
        f"fan-out saturation ({figures['keys']} keys, {figures['keys_per_client']} per client;"
        " delivered/ideal >= 0.95 and p99 <= 100 ms)"
    )
    print(table(COLUMNS, figures["rows"]))
    lat = figures["latency"]
    if lat:
        print(f"\nlatency at half of our saturation rate ({lat['rate']:.3f} updates/s per key):")
        rows = [{"server": name, **lat[name]} for name in ("ours", "ceiling") if name in lat]
        print(
            table(
                [
                    ("server", "server", ""),
                    ("msg/s", "delivered_per_s", ",d"),
                    ("p50 ms", "p50_ms", ".2f"),
                    ("p99 ms", "p99_ms", ".2f"),
                    ("max ms", "max_ms", ".1f"),
                ],
                rows,
            )
        )
    if figures.get("profile"):
        print_top(figures["profile"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="100,1000,5000")
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--keys-per-client", type=int, default=5)
    parser.add_argument(
        "--start", type=float, default=8000.0, help="ideal messages/s of the first step"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="measurement window")
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument(
        "--precision",
        type=float,
        default=1.2,
        help="stop bisecting when failing/passing rate <= this",
    )
    parser.add_argument("--latency-clients", type=int, default=1000)
    parser.add_argument("--latency-seconds", type=float, default=8.0)
    parser.add_argument("--profile", type=float, default=0.0, help="py-spy seconds (0: off)")
    parser.add_argument(
        "--ceiling-loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop of the ceiling server",
    )
    args = parser.parse_args()
    figures = run(args)
    print_report(figures)
    emit("fanout", figures)


if __name__ == "__main__":
    main()
