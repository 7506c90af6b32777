"""How long the hub's event loop stalls when many alerts fire on one tick.

    PYTHONPATH=. python bench/alert_burst.py [--alerts 1000] [--runs 3]

The real :class:`~backend.hub.hub.Hub` and its alerts (``tests/hub_fakes.py``: a fake
provider, no sockets) with a SQLite ``DB`` in a temporary folder, ``--alerts`` alerts on one
series (``close > 1000``, armed on a history at 100), the operator's webhook a receiver in
another process that answers 200 and counts. One update at 1500 fires them all; a task
that sleeps 1 ms at a time measures how late it wakes (the loop held by something else),
less the time the loop's thread waited for a CPU (other processes: the figure is the hub's
own, as ``candlewire_loop_stall_own_max_seconds``), from that update until the receiver has
every call. Prints the CPU time ``on_bar`` took, the longest and the total stall (those
over 5 ms), the time until the last delivery and the time spent in garbage collections
meanwhile (the server's collector settings, ``server.tune_gc``).
Runs in any checkout (``PYTHONPATH=.`` in it): the figures before and after a change.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from aiohttp import web

from backend.hub.stalls import RunQueueClock
from backend.model.bars import SeriesId
from server import tune_gc
from tests.harness import eventually
from tests.hub_fakes import SOURCE, FakeClock, close_above_alert, connect, make_hub, send, taken

KEY = SeriesId(SOURCE, "AAA", "1m")
T0 = 1_700_000_040


def receiver(port_out: Any) -> None:
    """The webhook receiver: 200 to every POST, ``GET /count`` the calls so far."""
    count = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal count
        await request.read()
        count += 1
        return web.Response()

    async def counted(request: web.Request) -> web.Response:
        return web.Response(text=str(count))

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/hook", hook)
        app.router.add_get("/count", counted)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_out.send(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await asyncio.Event().wait()

    asyncio.run(main())


async def one_run(url: str, alerts: int, folder: Path) -> dict[str, float]:
    hub, provider = make_hub(
        FakeClock(),
        ALERT_WEBHOOK_URL=f"{url}/hook",
        MAX_ALERTS_PER_DAY=alerts + 10,
        ALERT_RETRY_SECONDS=0.05,
    )
    provider.history = [(T0 + 60 * i, 100.0, 101.0, 99.0, 100.0, 10.0) for i in range(3)]
    alerting = hub.alerting
    await alerting.open(folder / "candlewire.db")
    http = aiohttp.ClientSession()
    try:
        client = connect(hub)
        base = close_above_alert()
        for first in range(0, alerts, 100):
            batch = [
                {**base, "message": f"m{n}", "subscription": None, "owner": "o"}
                for n in range(first, min(first + 100, alerts))
            ]
            await send(hub, client, *batch)
            taken(client)
        await eventually(  # the seeds ran: every alert armed, none fired
            lambda: len(alerting.alerts) == alerts and not _seeding(alerting), 60, "the seeds"
        )
        assert all(a.armed and not a.fired for a in alerting.alerts.values())

        async def count() -> int:
            async with http.get(f"{url}/count") as response:
                return int(await response.text())

        before = await count()
        counted = before
        stalls: list[float] = []  # lateness less the time the loop waited for a CPU
        done = asyncio.Event()
        waited = RunQueueClock()

        async def probe() -> None:
            while not done.is_set():
                started, wait = time.perf_counter(), waited()
                await asyncio.sleep(0.001)
                late = time.perf_counter() - started - 0.001
                stalls.append(max(0.0, late - (waited() - wait)))

        collections: list[float] = []
        collecting = [0.0]

        def timed(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                collecting[0] = time.perf_counter()
            else:
                collections.append(time.perf_counter() - collecting[0])

        gc.callbacks.append(timed)
        probing = asyncio.ensure_future(probe())
        await asyncio.sleep(0.01)
        started, cpu = time.perf_counter(), time.thread_time()
        alerting.on_bar(KEY, (T0 + 180, 100.0, 2000.0, 99.0, 1500.0, 10.0))
        on_bar = time.thread_time() - cpu

        async def poll() -> None:
            nonlocal counted
            while not done.is_set():
                counted = await count()
                await asyncio.sleep(0.05)

        polling = asyncio.ensure_future(poll())
        await eventually(lambda: counted - before >= alerts, 120, "every delivery")
        delivered = time.perf_counter() - started
        done.set()
        await asyncio.gather(probing, polling)
        gc.callbacks.remove(timed)
        waited.close()
        return {
            "on_bar_ms": on_bar * 1000,
            "max_stall_ms": max(stalls) * 1000,
            "stalled_ms": sum(s for s in stalls if s > 0.005) * 1000,
            "delivered_s": delivered,
            "gc_ms": sum(collections) * 1000,
        }
    finally:
        await http.close()
        await alerting.close()


def _seeding(alerting: Any) -> bool:
    return any("seed" in task.get_name() for task in alerting._tasks)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alerts", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    tune_gc()  # as the server does
    ours, theirs = multiprocessing.Pipe()
    process = multiprocessing.Process(target=receiver, args=(theirs,), daemon=True)
    process.start()
    url = f"http://127.0.0.1:{ours.recv()}"
    results = []
    try:
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as folder:
                results.append(asyncio.run(one_run(url, args.alerts, Path(folder))))
                print(", ".join(f"{k} {v:.1f}" for k, v in results[-1].items()), flush=True)
    finally:
        process.terminate()
        process.join()
    for name in results[0]:
        values = [r[name] for r in results]
        print(f"{name}: median {statistics.median(values):.1f} (runs: {values})")


if __name__ == "__main__":
    main()
