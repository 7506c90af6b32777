"""Fan-out benchmark: the real server, a synthetic provider, N WebSocket clients.

    python bench/fanout.py [--clients 100,1000] [--keys 100] [--keys-per-client 5]
                           [--rate 2] [--duration 10]

Starts ``server.py`` with the synthetic provider (``bench/synthetic.py``), then a load
generator in another process (pinned to the other core with ``taskset`` when available)
that opens N connections, subscribes each to K keys and counts ``data_update`` messages and
their provider-to-client latency. Prints delivered vs ideal messages/s, p50/p99/max latency
and the server's RSS, as a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from tests.harness import ServerProcess, base_env, populate


def run_clients(
    url: str, clients: int, keys: int, per_client: int, duration: float, result: Any
) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result.update(asyncio.run(_load(url, clients, keys, per_client, duration)))


async def _load(
    url: str, clients: int, keys: int, per_client: int, duration: float
) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    from bench.synthetic import symbol_names

    names = symbol_names(keys)
    counts = {"messages": 0}
    latencies: list[float] = []
    measuring = asyncio.Event()
    done = asyncio.Event()

    async def one(i: int) -> None:
        async with connect(url, max_queue=None, compression=None, open_timeout=60) as ws:
            wanted = [names[(i * per_client + j) % keys] for j in range(per_client)]
            await ws.send(
                json.dumps(
                    [
                        {
                            "type": "data",
                            "source": "synthetic",
                            "name": n,
                            "interval": "1m",
                            "count": 1,
                        }
                        for n in wanted
                    ]
                )
            )
            async for raw in ws:
                if done.is_set():
                    return
                if measuring.is_set() and '"data_update"' in raw:
                    counts["messages"] += 1
                    if counts["messages"] % 7 == 0:
                        message = json.loads(raw)
                        sent = message["data"][f"synthetic-{message['name']}-1m-volume"]
                        latencies.append(time.time() - sent)

    tasks = []
    for i in range(clients):
        tasks.append(asyncio.create_task(one(i)))
        if i % 100 == 99:
            await asyncio.sleep(0.05)
    await asyncio.sleep(3)  # warm-up: all subscribed
    measuring.set()
    start = time.monotonic()
    await asyncio.sleep(duration)
    elapsed = time.monotonic() - start
    measuring.clear()
    done.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    latencies.sort()
    return {
        "delivered_per_s": counts["messages"] / elapsed,
        "latency_p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "latency_p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None,
        "latency_max_ms": 1000 * latencies[-1] if latencies else None,
    }


def pin(pid: int, core: int) -> bool:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return (
            subprocess.run(
                ["taskset", "-a", "-p", "-c", str(core), str(pid)], capture_output=True, check=False
            ).returncode
            == 0
        )
    return False


def measure(args: argparse.Namespace, clients: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        env = base_env(
            tmp,
            PROVIDERS="synthetic",
            LOG_LEVEL="WARNING",
            EXTRA_PROVIDERS="synthetic=bench.synthetic:SyntheticProvider",
            BENCH_KEYS=str(args.keys),
            BENCH_RATE=str(args.rate),
            MAX_CLIENTS=str(clients + 100),
        )
        populate(env)
        with ServerProcess(env, tmp / "server.log") as server:
            assert server.proc is not None
            pinned = pin(server.proc.pid, 0)
            manager = multiprocessing.get_context("spawn").Manager()
            result = manager.dict()
            loader = multiprocessing.get_context("spawn").Process(
                target=run_clients,
                args=(
                    server.ws_url,
                    clients,
                    args.keys,
                    args.keys_per_client,
                    args.duration,
                    result,
                ),
            )
            loader.start()
            pinned = pin(loader.pid or 0, 1) and pinned
            time.sleep(3 + args.duration / 2)
            rss = psutil.Process(server.proc.pid).memory_info().rss
            loader.join(args.duration + 120)
            figures = dict(result)
            manager.shutdown()
    ideal = clients * args.keys_per_client * args.rate
    return {
        "clients": clients,
        "keys": args.keys,
        "keys_per_client": args.keys_per_client,
        "rate_per_key": args.rate,
        "ideal_per_s": ideal,
        **figures,
        "delivered_ratio": figures.get("delivered_per_s", 0) / ideal,
        "server_rss_mb": rss / 2**20,
        "pinned": pinned,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="100,1000")
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--keys-per-client", type=int, default=5)
    parser.add_argument("--rate", type=float, default=2.0, help="updates per second per key")
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    rows = [measure(args, int(n)) for n in args.clients.split(",")]
    print(
        f"{'clients':>8} {'ideal/s':>10} {'delivered/s':>12} {'ratio':>6} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'max ms':>8} {'RSS MB':>7}"
    )
    for r in rows:
        print(
            f"{r['clients']:>8} {r['ideal_per_s']:>10.0f} {r.get('delivered_per_s', 0):>12.0f} "
            f"{r['delivered_ratio']:>6.3f} {r.get('latency_p50_ms') or 0:>8.1f} "
            f"{r.get('latency_p99_ms') or 0:>8.1f} {r.get('latency_max_ms') or 0:>8.1f} "
            f"{r['server_rss_mb']:>7.1f}"
        )
    print(json.dumps({"bench": "fanout", "results": rows}))


if __name__ == "__main__":
    main()
