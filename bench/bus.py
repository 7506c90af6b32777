"""Scale-out over Redis (issue 14): the hub through the bus vs the same hub without it.

    python bench/bus.py [--clients 1000] [--keys 100] [--keys-per-client 5]
                        [--ingest-keys 2000] [--ingest-clients 10] [--failovers 5]
                        [--redis redis://127.0.0.1:6379/0] [--seconds 3]

Three parts, each printed beside its reference measured in the same run:

1. Fan-out: ``--clients`` clients x ``--keys-per-client`` of ``--keys`` synthetic keys, on
   the single-process server (``--role all``, no bus) and on a hub (``--role hub``) fed by
   a provider node (``--role providers``) through Redis, both on the server core; their
   saturation searches alternate (``bench/common.py`` ``Search``); then p50/p99 of both at
   half of the single-process saturation rate, ``--latency-windows`` alternating windows
   each, the median p99. Figures: bus / single-process ratios. ``--node-core client`` puts
   the node on the load generator's core (a node on another machine) instead of the hub's.
2. Ingest: ``--ingest-keys`` keys, one subscriber each, over ``--ingest-clients``
   connections, the same two servers: upstream updates/s through the bus (target >= 20,000).
3. Failover: two provider nodes (counting provider of tests/providers.py, 10 updates/s) and
   a hub; ``--failovers`` times: SIGKILL the active node, time until a client of the hub
   gets an update from the new holder (the first after the hub's ``/health`` names it;
   polled every 20 ms, so up to one update period late), start the killed node again (the
   new standby); then the closed bars on the hub compared with the fake's history (bars
   lost or wrong; target 0).

Each deployment uses its own ``BUS_PREFIX``. Prints tables, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import itertools
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CLIENT_CORE,
    SERVER_CORE,
    LoadGen,
    OurServer,
    Search,
    affinity,
    emit,
    interleave,
    loadavg,
    log,
    machine,
    pin_tree,
    ratio,
    table,
    tree_cpu,
)
from bench.fanout import connect, latency_at
from bench.synthetic import symbol_names

INGEST_TARGET_PER_S = 20_000


class BusServer(OurServer):
    """A provider node and a hub (two ``server.py`` processes) talking through Redis, the
    hub on the server core, the node on ``node_core`` (by default the server core too);
    the rate file reaches the node's synthetic provider."""

    label = "bus"

    def __init__(self, redis: str, node_core: int | None = SERVER_CORE, **env: str) -> None:
        super().__init__(BUS_URL=redis, BUS_PREFIX=f"cwbench-{uuid.uuid4().hex[:8]}", **env)
        self.node: Any = None
        self.node_core = node_core

    def start(self) -> None:
        from tests.harness import ServerProcess

        with affinity(self.node_core):
            self.node = ServerProcess(
                self.env, self.tmp / "node.log", args=("--role", "providers")
            ).start(timeout=60)
        with affinity(SERVER_CORE):
            self.server = ServerProcess(
                self.env, self.tmp / "server.log", args=("--role", "hub")
            ).start(timeout=60)
        self.pid = self.server.proc.pid
        self.ws_url = self.server.ws_url
        self.pinned = pin_tree(self.pid, SERVER_CORE) and pin_tree(
            self.node.proc.pid, self.node_core
        )

    def stop(self) -> None:
        super().stop()
        if self.node is not None:
            self.node.stop()
            self.node = None

    def cpu(self) -> dict[str, float]:
        """The hub's own CPU ("main"); the node and its provider process ("children")."""
        hub, node = tree_cpu(self.pid), tree_cpu(self.node.proc.pid)
        return {"main": hub["main"], "children": hub["children"] + node["main"] + node["children"]}


def searches(
    args: argparse.Namespace, gen: LoadGen, ours: OurServer, bus: BusServer, subs: int
) -> list[dict[str, Any]]:
    """Both saturation searches, their steps alternating."""
    options = {"seconds": args.seconds, "settle": args.settle, "precision": 1.2, "log": log}
    return interleave(
        [Search(target, subs, args.start / subs, **options) for target in (ours, bus)], gen
    )


def half_saturation_latency(
    args: argparse.Namespace, gen: LoadGen, ours: OurServer, bus: BusServer, rate: float
) -> dict[str, Any]:
    """``--latency-windows`` windows of each at ``rate``, alternating; per server the
    window with the median p99 (one window's p99 is one stall of a shared machine away
    from twice its usual value)."""
    windows: dict[str, list[dict[str, Any]]] = {"ours": [], "bus": []}
    for _ in range(args.latency_windows):
        for label, target in (("ours", ours), ("bus", bus)):
            windows[label].append(latency_at(target, gen, rate, args.latency_seconds))
    result: dict[str, Any] = {"rate": rate}
    for label, measured in windows.items():
        ranked = sorted(measured, key=lambda m: m["p99_ms"])
        result[label] = {**ranked[len(ranked) // 2], "p99_windows": [m["p99_ms"] for m in measured]}
    return result


def fanout(args: argparse.Namespace, gen: LoadGen) -> dict[str, Any]:
    names = symbol_names(args.keys)
    n, k = args.clients, args.keys_per_client
    log(f"fan-out: {n} clients x {k} keys of {args.keys}, single process vs through Redis")
    env = {"BENCH_KEYS": str(args.keys), "MAX_CLIENTS": str(n + 100)}
    node_core = CLIENT_CORE if args.node_core == "client" else SERVER_CORE
    with OurServer(**env) as ours, BusServer(args.redis, node_core, **env) as bus:
        connect(gen, ours, n, names, k)
        connect(gen, bus, n, names, k)
        found, bus_found = searches(args, gen, ours, bus, n * k)
        best = found["best"]["rate"] if found["best"] else args.start / (n * k)
        latency = half_saturation_latency(args, gen, ours, bus, best / 2)
        gen.call("close")
    return {
        "clients": n,
        "subscriptions": n * k,
        "node_core": args.node_core,
        "ours_per_s": found["saturation_per_s"],
        "bus_per_s": bus_found["saturation_per_s"],
        "saturation_ratio": ratio(bus_found["saturation_per_s"], found["saturation_per_s"]),
        "latency": latency,
        "p99_ratio": ratio(latency["bus"]["p99_ms"], latency["ours"]["p99_ms"]),
        "ours": found,
        "bus": bus_found,
    }


def ingest(args: argparse.Namespace, gen: LoadGen) -> dict[str, Any]:
    names = symbol_names(args.ingest_keys)
    per_client = -(-args.ingest_keys // args.ingest_clients)
    log(f"ingest: {args.ingest_keys} keys over {args.ingest_clients} clients")
    with (
        OurServer(BENCH_KEYS=str(args.ingest_keys)) as ours,
        BusServer(args.redis, BENCH_KEYS=str(args.ingest_keys)) as bus,
    ):
        connect(gen, ours, args.ingest_clients, names, per_client)
        connect(gen, bus, args.ingest_clients, names, per_client)
        found, bus_found = searches(args, gen, ours, bus, args.ingest_keys)
        gen.call("close")
    return {
        "keys": args.ingest_keys,
        "ours_per_s": found["saturation_per_s"],
        "bus_per_s": bus_found["saturation_per_s"],
        "ratio": ratio(bus_found["saturation_per_s"], found["saturation_per_s"]),
        "bus_p99_ms": (bus_found["best"] or {}).get("p99_ms"),
        "target_met": bus_found["saturation_per_s"] >= INGEST_TARGET_PER_S,
        "ours": found,
        "bus": bus_found,
    }


# ---------------------------------------------------------------------------- failover


async def failover(args: argparse.Namespace) -> dict[str, Any]:
    from tests import bus_deploy
    from tests.harness import WsClient, eventually, populate, same_key
    from tests.providers import bar

    with tempfile.TemporaryDirectory(prefix="candlewire-bus-bench-") as folder:
        tmp = Path(folder)
        prefix = f"cwbench-{uuid.uuid4().hex[:8]}"

        def env(name: str) -> dict[str, str]:
            return bus_deploy.bus_env(tmp, args.redis, prefix, name, LOG_LEVEL="WARNING")

        nodes = bus_deploy.start_all(
            *(lambda n=n: bus_deploy.node(env(n), tmp, n) for n in ("node1", "node2"))
        )
        assert populate(env("hub"), "--from-bus").returncode == 0
        hub = bus_deploy.hub(env("hub"), tmp, "hub", symbols=tmp / "hub.sqlite3")
        times: list[float] = []
        lost = wrong = 0
        try:
            client = await WsClient.open(hub.ws_url)
            request = {"type": "data", "source": "counting", "name": "AAA", "interval": "1m"}
            await client.send({**request, "count": 5})
            await client.wait_for("data_update", same_key("AAA", "1m"), 20)
            for round_ in range(args.failovers):
                active = next(n for n in nodes if bus_deploy.holds_lease(n))
                old = hub.get("/health")["providers"]["counting"]["node"]
                assert active.proc is not None
                active.proc.kill()
                killed = time.monotonic()

                def moved(old: str = old) -> bool:
                    node = hub.get("/health")["providers"]["counting"]["node"]
                    return node not in (old, None)

                # Updates the killed node published just before it died may still arrive:
                # count from the moment the hub knows the new holder (polled every 20 ms).
                await eventually(
                    moved,
                    30,
                    "the hub to see the new holder",
                )
                mark = len(client.messages)
                await client.wait_for("data_update", same_key("AAA", "1m"), 30, mark)
                times.append(time.monotonic() - killed)
                log(f"  failover {round_ + 1}: {times[-1]:.2f} s to the next update")
                active.stop()
                active.start(timeout=60)  # back, as the standby
            check = await WsClient.open(hub.ws_url)
            await check.send({**request, "count": 30})
            init = await check.wait_for("data_init", same_key("AAA", "1m"), 20)
            await check.close()
            rows = init["data"][:-1]
            stamps = [calendar.timegm(time.strptime(r["date"], "%Y-%m-%d %H:%M:%S")) for r in rows]
            lost = sum((b - a) // 60 - 1 for a, b in itertools.pairwise(stamps))
            seed = sum(map(ord, "AAA")) % 7
            for t, row in zip(stamps, rows, strict=True):
                want = bar(t, "1m", t + 60, seed)
                if row["counting-AAA-1m-close"] != want[4] or row["counting-AAA-1m-volume"] != 1:
                    wrong += 1
            await client.close()
        finally:
            hub.stop()
            for node in nodes:
                node.stop()
    return {
        "rounds": len(times),
        "seconds": [round(t, 2) for t in times],
        "median_s": round(statistics.median(times), 2) if times else None,
        "lease_seconds": bus_deploy.LEASE,
        "closed_bars_checked": len(rows),
        "closed_bars_lost": lost,
        "closed_bars_wrong": wrong,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--keys-per-client", type=int, default=5)
    parser.add_argument("--ingest-keys", type=int, default=2000)
    parser.add_argument("--ingest-clients", type=int, default=10)
    parser.add_argument("--start", type=float, default=8000.0, help="ideal msg/s, first step")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument("--latency-seconds", type=float, default=6.0)
    parser.add_argument(
        "--latency-windows", type=int, default=5, help="alternating windows at half saturation"
    )
    parser.add_argument("--failovers", type=int, default=5)
    parser.add_argument(
        "--node-core",
        choices=("server", "client"),
        default="server",
        help="the provider node's core in the fan-out part: the hub's (all on one core, as"
        " the single process and its provider) or the load generator's (a node elsewhere)",
    )
    parser.add_argument("--skip", default="", help="comma list of parts to skip: fanout,ingest")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    figures: dict[str, Any] = {"loadavg_start": loadavg()}
    with LoadGen() as gen:
        if "fanout" not in skip:
            figures["fanout"] = fanout(args, gen)
        if "ingest" not in skip:
            figures["ingest"] = ingest(args, gen)
    if "failover" not in skip:
        figures["failover"] = asyncio.run(failover(args))
    figures["machine"] = machine()
    figures["loadavg_end"] = loadavg()
    print_report(figures)
    emit("bus", figures)


def print_report(figures: dict[str, Any]) -> None:
    if "fanout" in figures:
        f = figures["fanout"]
        lat = f["latency"]
        print(
            f"fan-out, {f['clients']} clients ({f['subscriptions']} subscriptions), provider"
            f" node on the {f.get('node_core', 'server')} core"
        )
        print(
            table(
                [
                    ("server", "server", ""),
                    ("saturation msg/s", "per_s", ",d"),
                    ("p50 ms @half", "p50_ms", ".2f"),
                    ("p99 ms @half", "p99_ms", ".2f"),
                ],
                [
                    {"server": "single process", "per_s": f["ours_per_s"], **lat["ours"]},
                    {"server": "through Redis", "per_s": f["bus_per_s"], **lat["bus"]},
                ],
            )
        )
        print(
            f"bus/single: saturation {f['saturation_ratio']} (target >= 0.9), "
            f"p99 at half saturation {f['p99_ratio']}x (target <= 1.5; median of"
            f" {len(lat['ours'].get('p99_windows', [0]))} alternating windows each; p99 per"
            f" window, single: {lat['ours'].get('p99_windows')},"
            f" bus: {lat['bus'].get('p99_windows')})"
        )
    if "ingest" in figures:
        i = figures["ingest"]
        print(
            f"ingest, {i['keys']} keys: single process {i['ours_per_s']:,} updates/s, through "
            f"Redis {i['bus_per_s']:,} (ratio {i['ratio']}; target >= {INGEST_TARGET_PER_S:,}: "
            f"{'met' if i['target_met'] else 'NOT met'})"
        )
    if "failover" in figures:
        fo = figures["failover"]
        print(
            f"failover (lease {fo['lease_seconds']} s): median {fo['median_s']} s of "
            f"{fo['seconds']}; closed bars lost {fo['closed_bars_lost']}, wrong "
            f"{fo['closed_bars_wrong']} of {fo['closed_bars_checked']}"
        )
    print(f"load average: start {figures['loadavg_start']}, end {figures['loadavg_end']}")


if __name__ == "__main__":
    main()
