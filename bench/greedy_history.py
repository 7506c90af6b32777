"""What one greedy history client costs everyone else: a bystander's ping round trip and
``data_update`` delivery while another socket asks for as much history as it can read.

    python bench/greedy_history.py [--seconds 8] [--greedy 1] [--per-frame 100] [--plain]
        [--same-windows --symbols 10]

One real server (``populate.py`` + ``server.py``, on the server core) with the synthetic
source streaming 10 keys at ``--rate`` updates/s each and the deterministic ``history``
source (200 symbols, 30 days of 1m bars). A bystander holds one streamed key and sends a
``ping`` every 20 ms. First it runs alone (the ceiling: the same server, nobody greedy),
then beside ``--greedy`` clients that each send frames of ``--per-frame`` ``data_history``
requests at ``MAX_COUNT`` bars, every one a window not asked before (a new end time: the
encoded-frame cache cannot answer it), as fast as they read the replies. Prints the
bystander's ping p50 / p99 / max and the age of its ``data_update``s (p50 / p99), beside the
ceiling, and the bars per second the greedy clients got: once with no history budget
(``HISTORY_BARS_PER_SECOND=0``), once with the default one (README, "Security"), and
the hub's event-loop stalls (``candlewire_loop_stalls_total``) counted while the bystander
ran beside them.

The greedy clients negotiate permessage-deflate, as browsers do (the hub compresses every
reply for them); ``--plain`` makes them ask for no compression, the reference. With
``--same-windows`` they ask the same window of each symbol every time: after the first round
every reply comes from the encoded-frame cache, so what the hub's loop still does per reply
is writing it, and compressing it for a deflate client.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import websockets

from bench.common import OurServer, emit, log, machine, summary
from bench.synthetic import RateFile, symbol_names

PING_SECONDS = 0.02
WARM_UP = 2.0  # seconds
ENGAGE_POLLS = 120  # half seconds for the greedy ones to spend HISTORY_BARS_BURST
MAX_COUNT = 10_000
VOLUME = "synthetic-SYN00000-1m-volume"


def history_request(name: str, end: int) -> dict[str, Any]:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(end))
    return {
        "type": "data_history",
        "source": "history",
        "name": name,
        "interval": "1m",
        "end": stamp,
        "count": MAX_COUNT,
    }


async def bystander(url: str, seconds: float) -> dict[str, Any]:
    """Ping round trips and data_update ages (now less the bar's own wall-clock stamp,
    its volume field) of one client holding one streamed key, for ``seconds``."""
    pings: list[float] = []
    ages: list[float] = []
    sent: dict[int, float] = {}
    async with websockets.connect(url, max_size=None) as ws:
        key = {"source": "synthetic", "name": "SYN00000", "interval": "1m"}
        await ws.send(orjson.dumps({"type": "data", **key, "count": 1}))

        async def read() -> None:
            async for frame in ws:
                now = time.time()
                for message in _messages(frame):
                    kind = message.get("type")
                    if kind == "pong" and message.get("id") in sent:
                        pings.append((time.perf_counter() - sent.pop(message["id"])) * 1000)
                    elif kind == "data_update" and isinstance(message.get("data"), dict):
                        # the synthetic source puts the wall-clock time in the volume field
                        stamp = message["data"].get(VOLUME)
                        if isinstance(stamp, (int, float)) and stamp > 1e9:
                            ages.append((now - stamp) * 1000)

        reader = asyncio.create_task(read())
        stop = time.perf_counter() + seconds
        for n in itertools.count():
            if time.perf_counter() >= stop:
                break
            sent[n] = time.perf_counter()
            await ws.send(orjson.dumps({"type": "ping", "id": n}))
            await asyncio.sleep(PING_SECONDS)
        await asyncio.sleep(0.5)  # the last pongs
        reader.cancel()
    return {"ping": summary(pings), "lost_pings": len(sent), "update_age": summary(ages)}


def _messages(frame: str | bytes) -> list[dict[str, Any]]:
    try:
        parsed = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return []
    items = parsed if isinstance(parsed, list) else [parsed]
    return [item for item in items if isinstance(item, dict)]


async def greedy(
    url: str,
    per_frame: int,
    stop: asyncio.Event,
    bars: list[int],
    symbols: int = 200,
    deflate: bool = True,
    same_windows: bool = False,
) -> None:
    """Frames of ``per_frame`` data_history requests for windows not asked before (with
    ``same_windows``, the same window of each symbol every time), the next frame once the
    last one's replies are in, until ``stop``."""
    names = symbol_names(symbols, "HIS")
    ends = itertools.repeat(0) if same_windows else itertools.count()
    now = int(time.time()) // 60 * 60
    compression = "deflate" if deflate else None
    async with websockets.connect(url, max_size=None, compression=compression) as ws:
        while not stop.is_set():
            frame = [
                history_request(names[i % len(names)], now - 60 * (next(ends) % 30_000) - 3600)
                for i in range(per_frame)
            ]
            await ws.send(orjson.dumps(frame))
            pending = per_frame
            while pending and not stop.is_set():
                try:
                    reply = await asyncio.wait_for(ws.recv(), 1.0)
                except TimeoutError:
                    continue
                for message in _messages(reply):
                    if message.get("type") == "data_history":
                        pending -= 1
                        bars[0] += len(message.get("data") or [])


async def run(
    url: str,
    seconds: float,
    greedy_clients: int,
    per_frame: int,
    symbols: int = 200,
    engaged: Callable[[], bool] | None = None,
    deflate: bool = True,
    stalls: Callable[[], dict[str, float] | None] = lambda: None,
    same_windows: bool = False,
) -> dict[str, Any]:
    """The bystander alone, then beside the greedy clients once they are under way (and,
    with ``engaged``, once it says their budget holds them back: past their burst)."""
    alone = await bystander(url, seconds)
    stop = asyncio.Event()
    bars = [0]
    tasks = [
        asyncio.create_task(greedy(url, per_frame, stop, bars, symbols, deflate, same_windows))
        for _ in range(greedy_clients)
    ]
    await asyncio.sleep(WARM_UP)  # the greedy ones under way
    for _ in range(ENGAGE_POLLS):  # a poll of /metrics: the server is another process
        if engaged is None or engaged():
            break
        await asyncio.sleep(0.5)
    started, before, stalls_before = time.perf_counter(), bars[0], stalls() or {}
    beside = await bystander(url, seconds)
    got = (bars[0] - before) / (time.perf_counter() - started)
    stalls_after = stalls() or {}
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "alone": alone,
        "beside_greedy": beside,
        "greedy_bars_per_s": round(got),
        "stalls_beside": {
            over: count - stalls_before.get(over, 0.0) for over, count in stalls_after.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--greedy", type=int, default=1)
    parser.add_argument("--per-frame", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0, help="updates/s per streamed key")
    parser.add_argument(
        "--symbols", type=int, default=200, help="symbols the greedy ones ask (few: from memory)"
    )
    parser.add_argument(
        "--plain", action="store_true", help="greedy clients without permessage-deflate"
    )
    parser.add_argument(
        "--same-windows",
        action="store_true",
        help="ask each symbol's same window every time: answered from the encoded-frame "
        "cache, what is left per reply is writing it (and compressing it, with deflate)",
    )
    args = parser.parse_args()
    results = {}
    for budget, env in (("off", {"HISTORY_BARS_PER_SECOND": "0"}), ("default", {})):
        with OurServer(
            "synthetic,history", BENCH_KEYS="10", BENCH_HISTORY_SYMBOLS="200", **env
        ) as server:
            RateFile.write(server.rate_file, args.rate)
            engaged = None if env else functools.partial(_paced, server)
            result = asyncio.run(
                run(
                    server.ws_url,
                    args.seconds,
                    args.greedy,
                    args.per_frame,
                    args.symbols,
                    engaged,
                    deflate=not args.plain,
                    stalls=server.loop_stalls,
                    same_windows=args.same_windows,
                )
            )
            result["stalls"] = server.loop_stalls()
        results[budget] = result
    log("bystander, ms                      ping p50     p99     max   update age p50    p99")
    rows = (
        ("alone (ceiling)", results["default"]["alone"]),
        ("beside greedy, no budget", results["off"]["beside_greedy"]),
        ("beside greedy, default budget", results["default"]["beside_greedy"]),
    )
    for label, part in rows:
        ping, age = part["ping"], part["update_age"]
        log(
            f"{label:>30} {_ms(ping, 'p50')} {_ms(ping, 'p99')} {_ms(ping, 'max')}"
            f"        {_ms(age, 'p50')} {_ms(age, 'p99')}"
        )
    for budget in ("off", "default"):
        result = results[budget]
        beside = ", ".join(f">{over} ms: {n:g}" for over, n in result["stalls_beside"].items())
        log(
            f"budget {budget}: greedy clients got {result['greedy_bars_per_s']:,} bars/s; "
            f"loop stalls beside them: {beside}"
        )
    emit("greedy_history", {"machine": machine(), **vars(args), **results})


def _paced(server: OurServer) -> bool:
    """Whether the server has held a history reply back for its client's budget."""
    for line in str(server.server.get("/metrics")).splitlines():
        if line.startswith("candlewire_history_paced_total "):
            return float(line.split()[1]) > 0
    return False


def _ms(figures: dict[str, Any], name: str) -> str:
    value = figures.get(name + "_ms")
    return f"{value:7.1f}" if isinstance(value, (int, float)) else "      -"


if __name__ == "__main__":
    main()
