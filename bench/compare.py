"""Two checkouts of Candlewire side by side under the same load: latency windows and
saturation searches interleaved, so that both meet the same background load.

    python bench/compare.py --before /path/to/other/checkout [--clients 100,1000]
                            [--rates 8000,38000] [--windows 5] [--seconds 3] [--saturation]

Both servers (``populate.py`` then ``server.py`` of each checkout, with the synthetic source
of ``bench/synthetic.py``) run at once on the server core; one load generator holds
``--clients`` connections (5 keys of 100 each) to both. For each N and its rate in
``--rates`` (messages/s), ``--windows`` latency windows of ``--seconds`` alternate between
the two (only one source is on at a time); each window's p50/p99/max and server CPU is
printed and the worst and median of each side are summarised. ``--saturation`` adds the
interleaved saturation search of ``bench/fanout.py`` at the largest N. This is how a change
is shown to help (or not to cost throughput) on a shared machine whose load moves by 2x
between separate runs. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import LoadGen, OurServer, Search, drain, emit, interleave, log, machine, table
from bench.fanout import connect
from bench.synthetic import symbol_names
from tests import harness

KEYS = 100
PER_CLIENT = 5


class CheckoutServer(OurServer):
    """:class:`OurServer` run from another checkout (its ``populate.py`` and ``server.py``)."""

    def __init__(self, root: Path, label: str, **env: str) -> None:
        super().__init__(**env)
        self.root = root
        self.label = label

    def __enter__(self) -> CheckoutServer:
        saved, harness.ROOT = harness.ROOT, self.root
        try:
            super().__enter__()
        finally:
            harness.ROOT = saved
        return self


def windows(
    servers: list[CheckoutServer], gen: LoadGen, rate: float, count: int, seconds: float
) -> dict[str, list[dict[str, Any]]]:
    """``count`` windows per server at ``rate`` updates/s per key, alternating."""
    out: dict[str, list[dict[str, Any]]] = {s.label: [] for s in servers}
    for i in range(count):
        for server in servers if i % 2 == 0 else reversed(servers):
            server.set_rate(rate)
            time.sleep(1.0)
            m = gen.call("measure", seconds=seconds)
            drain(server, gen)
            out[server.label].append(
                {k: m[k] for k in ("per_s", "p50_ms", "p99_ms", "max_ms")}
                | {"at": time.strftime("%H:%M:%S")}
            )
            log(
                f"  {server.label:<7} {m['per_s']:8.0f}/s p50 {m['p50_ms']} p99 {m['p99_ms']} "
                f"max {m['max_ms']} ms"
            )
    return out


def summarise(label: str, n: int, per_s: float, rows: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> float:
        return round(float(statistics.median(r[key] for r in rows if r[key] is not None)), 2)

    return {
        "server": label,
        "clients": n,
        "msg_per_s": round(per_s),
        "p50_median": med("p50_ms"),
        "p99_median": med("p99_ms"),
        "max_median": med("max_ms"),
        "max_worst": max(r["max_ms"] for r in rows if r["max_ms"] is not None),
        "windows": rows,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = symbol_names(KEYS)
    roots = {"before": Path(args.before).resolve(), "after": Path(args.after).resolve()}
    clients = [int(x) for x in args.clients.split(",")]
    rates = [float(x) for x in args.rates.split(",")]
    rows: list[dict[str, Any]] = []
    saturation: dict[str, Any] = {}
    with LoadGen() as gen:
        for n, per_s in zip(clients, rates, strict=True):
            log(f"compare: {n} clients x {PER_CLIENT} keys at {per_s:,.0f} msg/s")
            env = {"BENCH_KEYS": str(KEYS), "MAX_CLIENTS": str(n + 100)}
            with (
                CheckoutServer(roots["before"], "before", **env) as before,
                CheckoutServer(roots["after"], "after", **env) as after,
            ):
                servers = [before, after]
                for server in servers:
                    connect(gen, server, n, names, PER_CLIENT)
                rate = per_s / (n * PER_CLIENT)
                got = windows(servers, gen, rate, args.windows, args.seconds)
                rows += [summarise(s.label, n, per_s, got[s.label]) for s in servers]
                if args.saturation and n == clients[-1]:
                    searches = [
                        Search(s, n * PER_CLIENT, args.start / (n * PER_CLIENT), log=log)
                        for s in servers
                    ]
                    found = interleave(searches, gen)
                    saturation = {
                        s.label: {
                            "saturation_per_s": f["saturation_per_s"],
                            "limited_by": f["limited_by"],
                        }
                        for s, f in zip(servers, found, strict=True)
                    }
                gen.call("close")
    return {
        "before": str(roots["before"]),
        "after": str(roots["after"]),
        "rows": rows,
        "saturation": saturation,
        "machine": machine(),
    }


COLUMNS = [
    ("server", "server", ""),
    ("clients", "clients", "d"),
    ("msg/s", "msg_per_s", ",d"),
    ("p50 ms (median)", "p50_median", ".2f"),
    ("p99 ms (median)", "p99_median", ".2f"),
    ("max ms (median)", "max_median", ".1f"),
    ("max ms (worst)", "max_worst", ".1f"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the other checkout")
    parser.add_argument("--after", default=str(harness.ROOT), help="default: this checkout")
    parser.add_argument("--clients", default="100,1000")
    parser.add_argument("--rates", default="8000,38000", help="messages/s per --clients entry")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--saturation", action="store_true")
    parser.add_argument("--start", type=float, default=37_500.0, help="first saturation step")
    args = parser.parse_args()
    figures = run(args)
    print("latency, windows alternating between the two checkouts")
    print(table(COLUMNS, figures["rows"]))
    for label, found in figures["saturation"].items():
        print(f"saturation {label}: {found['saturation_per_s']:,} msg/s ({found['limited_by']})")
    emit("compare", figures)


if __name__ == "__main__":
    main()
