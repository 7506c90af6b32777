"""Ceiling servers: what the benchmarks compare Candlewire with on the same machine.

    python bench/ceiling.py --mode broadcast|blast --keys 100 --rate-file PATH [--port 0]
                            [--reuse-port] [--ping-interval 20]

``broadcast``: a minimal server on the ``websockets`` library (asyncio implementation,
uvloop). A ``data`` request gets a ``data_init`` (with ``count`` bars of the same shape as
Candlewire's, encoded once per key and count and then reused) and, unless ``stream`` is
false, subscribes the connection to the key. The same synthetic source as the server's
(``bench.synthetic.Schedule``: ``--keys`` keys at the rate read from ``--rate-file``,
evenly spread, publish time in the volume) produces each update; the update is encoded once
(the same ``data_update`` frame as Candlewire's) and written to every subscriber with
``websockets.broadcast()``. No hub, no cache, no outboxes, no provider process.

``blast``: the load generator's own ceiling. A raw asyncio server that answers the
handshake and each ``data`` request, then, while the rate file holds a rate > 0, writes
pre-built ``data_update`` frames to every connection as fast as the connection takes them.

Both run on uvloop (``--loop asyncio``: the standard library's loop). ``--reuse-port``
listens with ``SO_REUSEPORT``, so several ceiling processes can share one port (each with
its own source and subscribers; ``bench/connections.py --workers N``). Prints ``listening on
ws://HOST:PORT/websocket/`` when ready; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import re
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from backend.model.bars import SeriesId, WireKeys
from backend.wire import protocol
from backend.wire.frames import text_frame
from bench.synthetic import TICK_SECONDS, RateFile, Schedule, dataset_row, history_bar

SOURCE = "synthetic"


class Keys:
    """Wire keys and pre-encoded data_init frames per key."""

    def __init__(self) -> None:
        self.wire: dict[str, WireKeys] = {}
        self.inits: dict[tuple[str, str, str, int], str] = {}
        self.ids: dict[str, SeriesId] = {}

    def series(self, name: str) -> SeriesId:
        key = self.ids.get(name)
        if key is None:
            key = self.ids[name] = SeriesId(SOURCE, name, "1m")
        return key

    def wire_keys(self, source: str, name: str, interval: str) -> WireKeys:
        wire = self.wire.get(name)
        if wire is None:
            wire = self.wire[name] = WireKeys(SeriesId(source, name, interval), "candlestick")
        return wire

    def data_init(self, source: str, name: str, interval: str, count: int) -> str:
        key = (source, name, interval, count)
        frame = self.inits.get(key)
        if frame is None:
            now = int(time.time()) // 60 * 60
            wire = WireKeys(SeriesId(source, name, interval), "candlestick")
            bars = [history_bar(t) for t in range(now - 60 * (count - 1), now + 1, 60)]
            frame = self.inits[key] = protocol.series_message(
                "data_init",
                SeriesId(source, name, interval),
                wire.datapoints(bars),
                dataset_row(source, name, "Ceiling"),
            ).decode()
        return frame


async def run_broadcast(args: argparse.Namespace) -> None:
    from websockets.asyncio.server import ServerConnection, broadcast, serve
    from websockets.exceptions import ConnectionClosed

    subscribers: dict[str, set[ServerConnection]] = {}
    active: list[str] = []  # keys with subscribers, sorted (as the provider keeps them)
    keys = Keys()

    def subscribe(name: str, ws: ServerConnection) -> None:
        group = subscribers.setdefault(name, set())
        if not group:
            active.append(name)
            active.sort()
        group.add(ws)

    def unsubscribe(name: str, ws: ServerConnection) -> None:
        group = subscribers.get(name)
        if group is not None:
            group.discard(ws)
            if not group:
                active.remove(name)

    async def handler(ws: ServerConnection) -> None:
        mine: list[str] = []
        try:
            await serve_requests(ws, mine)
        except ConnectionClosed:
            pass  # the bench client closes without waiting for the closing handshake
        finally:
            for name in mine:
                unsubscribe(name, ws)

    async def serve_requests(ws: ServerConnection, mine: list[str]) -> None:
        async for raw in ws:
            try:
                requests = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            for r in [requests] if isinstance(requests, dict) else requests:
                if not isinstance(r, dict) or r.get("type") != "data":
                    continue
                name, interval = str(r.get("name")), str(r.get("interval", "1m"))
                source = str(r.get("source", SOURCE))
                if r.get("stream", True):
                    subscribe(name, ws)
                    mine.append(name)
                await ws.send(keys.data_init(source, name, interval, int(r.get("count", 300))))

    async def source() -> None:
        schedule = Schedule(RateFile(args.rate_file, 0.0))
        price = 100.0
        wall = time.time
        while True:
            now = wall()
            due = schedule.take(active, now)
            if due:
                t = int(now) // 60 * 60
                price += 0.01
                for name in due:
                    wire = keys.wire_keys(SOURCE, name, "1m")
                    bar = (t, 100.0, price + 1, 99.0, price, wall())
                    frame = protocol.update_message(keys.series(name), wire.datapoint(bar)).decode()
                    broadcast(subscribers.get(name, ()), frame)
            await asyncio.sleep(TICK_SECONDS)

    async with serve(
        handler,
        args.host,
        args.port,
        compression=None,
        max_size=2**20,
        backlog=4096,
        reuse_port=args.reuse_port or None,
        ping_interval=args.ping_interval or None,
        ping_timeout=args.ping_interval or None,
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"listening on ws://{args.host}:{port}/websocket/", flush=True)
        task = asyncio.get_running_loop().create_task(source())
        await stopped()
        task.cancel()


GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"
KEY = re.compile(rb"sec-websocket-key:\s*(\S+)", re.IGNORECASE)


class Blaster:
    """Shared state of the blast server: the current chunk of frames and the connections."""

    FRAMES_PER_CHUNK = 16
    CHUNKS_PER_TURN = 8

    def __init__(self, rate_file: str) -> None:
        self.rate = RateFile(rate_file, 0.0)
        self.on = False
        self.chunk = b""
        self.connections: set[BlastProtocol] = set()
        self.wire = WireKeys(SeriesId(SOURCE, "SYN00000", "1m"), "candlestick")
        self.key = SeriesId(SOURCE, "SYN00000", "1m")

    def rebuild(self) -> None:
        now = time.time()
        bar = (int(now) // 60 * 60, 100.0, 101.0, 99.0, 100.5, now)
        frame = text_frame(protocol.update_message(self.key, self.wire.datapoint(bar)))
        self.chunk = frame * self.FRAMES_PER_CHUNK

    async def run(self) -> None:
        while True:
            self.rebuild()
            on = self.rate.get(time.time()) > 0
            if on and not self.on:
                self.on = True
                for connection in list(self.connections):
                    connection.pump()
            self.on = on
            await asyncio.sleep(0.02)


class BlastProtocol(asyncio.Protocol):
    def __init__(self, blaster: Blaster) -> None:
        self.blaster = blaster
        self.buf = b""
        self.upgraded = False
        self.paused = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.blaster.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if not self.upgraded:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            match = KEY.search(self.buf[:end])
            data, self.buf = self.buf[end + 4 :], b""
            if match is None:
                self.transport.close()
                return
            accept = base64.b64encode(hashlib.sha1(match.group(1) + GUID).digest())
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.upgraded = True
            self.blaster.connections.add(self)
        # The bench client masks with an all-zero key: its requests can be counted as they are.
        requests = data.count(b'"type":"data"')
        if requests:
            init = text_frame(b'{"type":"data_init","data":[]}')
            self.transport.write(init * requests)
        if b"\x88" in data[:1]:  # a close frame
            self.transport.close()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()

    def pump(self) -> None:
        transport = self.transport
        if transport is None or self.paused or not self.blaster.on:
            return
        chunk = self.blaster.chunk
        for _ in range(Blaster.CHUNKS_PER_TURN):
            transport.write(chunk)
            if self.paused:
                return
        asyncio.get_running_loop().call_soon(self.pump)


async def run_blast(args: argparse.Namespace) -> None:
    blaster = Blaster(args.rate_file)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: BlastProtocol(blaster),
        args.host,
        args.port,
        backlog=4096,
        reuse_port=args.reuse_port or None,
    )
    port = server.sockets[0].getsockname()[1]
    print(f"listening on ws://{args.host}:{port}/websocket/", flush=True)
    task = loop.create_task(blaster.run())
    await stopped()
    task.cancel()
    server.close()


async def stopped() -> None:
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await done.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("broadcast", "blast"), default="broadcast")
    parser.add_argument("--keys", type=int, default=100, help="(informational)")
    parser.add_argument("--rate-file", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--ping-interval",
        type=float,
        default=20.0,
        help="broadcast: keep-alive ping every this many seconds, 0 = none (websockets: 20)",
    )
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="listen with SO_REUSEPORT: several processes on one port, the kernel spreads "
        "connections (bench/connections.py --workers N)",
    )
    parser.add_argument(
        "--loop", choices=("uvloop", "asyncio"), default="uvloop", help="event loop (uvloop)"
    )
    args = parser.parse_args()
    from bench.common import raise_nofile, run_loop

    raise_nofile()
    run_loop(run_broadcast(args) if args.mode == "broadcast" else run_blast(args), args.loop)


if __name__ == "__main__":
    main()
