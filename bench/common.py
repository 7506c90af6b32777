"""What the benchmark scripts share: the servers under test, the load generator, the maths.

- Servers under test (context managers, started on the server core): :class:`OurServer`
  (``populate.py`` then the real ``server.py`` through ``tests/harness.py``, with the bench
  providers of ``bench/synthetic.py``) and :class:`CeilingServer` (``bench/ceiling.py``: the
  ``websockets`` ``broadcast()`` ceiling, or the frame blaster that measures the load
  generator's own ceiling). Each reads its update rate from a file, so one server and one set
  of connections serve a whole rate search.
- The load generator (:class:`LoadGen`): a separate process on the client core, driven over a
  pipe. Its WebSocket client is a lean ``asyncio.Protocol`` (uvloop) that parses the unmasked
  server frames itself: it counts ``data_update`` frames and reads the publish time carried
  in the bar's volume (the last number of the frame) without decoding JSON.
- :func:`saturation`: raise the rate until delivered/ideal < 0.95 or p99 > 100 ms, then
  bisect; the best rate that met both is the figure.
- Percentiles, CPU and RSS readings, pinning with ``taskset``, tables and JSON lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self, cast
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from bench.synthetic import RateFile

ROOT = Path(__file__).resolve().parent.parent
# The servers measured are started as users start them, ``python server.py``, not forked
# from the test suite's pre-imported launcher (``tests/zygote.py``).
os.environ["CANDLEWIRE_TEST_EXEC"] = "1"

CORES = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
SERVER_CORE = CORES[0] if len(CORES) > 1 else None
CLIENT_CORE = CORES[1] if len(CORES) > 1 else None
MAX_REQUESTS_PER_FRAME = 100  # the server's default MAX_REQUESTS_PER_FRAME

# ---------------------------------------------------------------------------- the machine


def raise_nofile() -> int:
    """Raise the open-file limit of this process to its hard limit; returns the new soft one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1_048_576
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pin_tree(pid: int, core: int | None) -> bool:
    """Pin ``pid``, all its threads and all its descendants to ``core`` with ``taskset``."""
    if core is None or not shutil.which("taskset"):
        return False
    try:
        pids = [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return False
    ok = True
    for p in pids:
        done = subprocess.run(
            ["taskset", "-a", "-p", "-c", str(core), str(p)], capture_output=True, check=False
        )
        ok = ok and done.returncode == 0
    return ok


@contextlib.contextmanager
def affinity(core: int | None) -> Iterator[None]:
    """Run this process on ``core`` for a while: processes started meanwhile inherit it."""
    if core is None:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in lscpu.splitlines()
            if line.startswith("Model name")
        ),
        "?",
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": sys.version.split()[0],
        "pinned": SERVER_CORE is not None and bool(shutil.which("taskset")),
        "server_core": SERVER_CORE,
        "client_core": CLIENT_CORE,
        "loadavg": loadavg(),
    }


def tree_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of ``pid`` ("main") and of its descendants ("children")."""
    out = {"main": 0.0, "children": 0.0}
    try:
        root = psutil.Process(pid)
        t = root.cpu_times()
        out["main"] = t.user + t.system
        for child in root.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                c = child.cpu_times()
                out["children"] += c.user + c.system
    except psutil.Error:
        pass
    return out


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


# ---------------------------------------------------------------------------- maths


def summary(values_ms: list[float]) -> dict[str, Any]:
    """n, p50, p99 and max of latencies in ms (sorted in place)."""
    if not values_ms:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    values_ms.sort()
    n = len(values_ms)
    return {
        "n": n,
        "p50_ms": round(values_ms[(n - 1) // 2], 3),
        "p99_ms": round(values_ms[min(n - 1, math.ceil(0.99 * n) - 1)], 3),
        "max_ms": round(values_ms[-1], 3),
    }


def ratio(ours: float | None, ceiling: float | None) -> float | None:
    if not ours or not ceiling:
        return None
    return round(ours / ceiling, 3)


# ---------------------------------------------------------------------------- the client

UPDATE = b'{"type":"data_update"'
INIT = b'{"type":"data_init"'
ERROR = b'{"type":"error"'
HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
ZERO_MASK = b"\x00\x00\x00\x00"  # a valid masking key: the payload goes out as it is


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client frame (RFC 6455 5.2) with an all-zero masking key."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return header + ZERO_MASK + payload


class Stats:
    """Counters shared by every connection of one load generator."""

    def __init__(self) -> None:
        self.messages = 0
        self.latencies: list[float] = []
        self.measuring = False
        self.errors = 0
        self.error_samples: list[str] = []
        self.counted = 0  # frames starting ``WsClient.counted`` (only counted)


class WsClient(asyncio.Protocol):
    """One WebSocket client connection: handshake, frame parsing, ping answers."""

    counted: bytes | None = None  # a payload prefix of frames only counted, not copied

    def __init__(self, stats: Stats, host: str, port: int, path: str) -> None:
        self.stats = stats
        self.handshake = HANDSHAKE.format(host=host, port=port, path=path).encode()
        self.buf = bytearray()
        self.upgraded = False
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.inits = 0
        self.inits_wanted = 0
        self.inits_done: asyncio.Future[None] | None = None
        self.expect = INIT
        self.waiter: asyncio.Future[tuple[float, bytes]] | None = None
        self.closed = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.handshake)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        error = ConnectionError(f"connection lost: {exc!r}")
        for fut in (self.opened, self.inits_done, self.waiter):
            if fut is not None and not fut.done():
                fut.set_exception(error)

    def send(self, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.write(client_frame(payload))

    def want_inits(self, count: int) -> asyncio.Future[None]:
        self.inits_wanted = self.inits + count
        self.inits_done = asyncio.get_running_loop().create_future()
        if count <= 0:
            self.inits_done.set_result(None)
        return self.inits_done

    async def request(self, frame: bytes, expect: bytes = INIT) -> tuple[float, bytes]:
        """Send ``frame``; the arrival time and payload of the next reply starting ``expect``."""
        self.expect = expect
        self.waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(frame)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(client_frame(b"\x03\xe8", opcode=8))
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(head.split(b"\r\n")[0].decode()))
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded = True
            self.opened.set_result(None)
        stats = self.stats
        counted = self.counted
        size = len(buf)
        pos = 0
        now = 0.0
        while size - pos >= 2:
            n = buf[pos + 1] & 0x7F
            if n < 126:
                start = pos + 2
            elif n == 126:
                if size - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 4
            else:
                if size - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            stop = start + n
            if stop > size:
                break
            if buf.startswith(UPDATE, start):
                stats.messages += 1
                if stats.measuring:
                    if not now:
                        now = time.time()
                    i = buf.rfind(b":", start, stop)
                    stats.latencies.append(now - float(buf[i + 1 : stop - 2]))
            elif counted is not None and buf.startswith(counted, start):
                stats.counted += 1
            else:
                self._other(buf[pos] & 0x0F, bytes(buf[start:stop]))
            pos = stop
        if pos:
            del buf[:pos]

    def _other(self, opcode: int, payload: bytes) -> None:
        if opcode == 1:
            if (
                self.waiter is not None
                and not self.waiter.done()
                and payload.startswith(self.expect)
            ):
                self.waiter.set_result((time.perf_counter(), payload))
            if payload.startswith(INIT):
                self.inits += 1
                done = self.inits_done
                if done is not None and not done.done() and self.inits >= self.inits_wanted:
                    done.set_result(None)
            elif payload.startswith(ERROR):
                self.stats.errors += 1
                if len(self.stats.error_samples) < 3:
                    self.stats.error_samples.append(payload[:300].decode(errors="replace"))
        elif opcode == 9 and self.transport is not None:  # ping -> pong
            self.transport.write(client_frame(payload, opcode=10))
        elif opcode == 8 and self.transport is not None:
            self.transport.close()


def subscriptions(names: list[str], per_client: int, i: int) -> list[str]:
    """The keys of client ``i``: ``per_client`` consecutive names, round robin."""
    return [names[(i * per_client + j) % len(names)] for j in range(per_client)]


def data_requests(
    names: list[str], source: str, count: int, stream: bool, interval: str = "1m"
) -> list[bytes]:
    """Client frames of ``data`` requests, at most ``MAX_REQUESTS_PER_FRAME`` per frame."""
    import orjson

    frames = []
    for a in range(0, len(names), MAX_REQUESTS_PER_FRAME):
        chunk = names[a : a + MAX_REQUESTS_PER_FRAME]
        payload = [
            {
                "type": "data",
                "source": source,
                "name": n,
                "interval": interval,
                "count": count,
                "stream": stream,
            }
            for n in chunk
        ]
        frames.append(client_frame(orjson.dumps(payload)))
    return frames


class Generator:
    """The load generator's state, in its own process; each method is a pipe command."""

    def __init__(self) -> None:
        self.stats = Stats()
        self.clients: list[WsClient] = []

    async def connect(
        self,
        url: str,
        clients: int,
        names: list[str] | None = None,
        per_client: int = 0,
        source: str = "synthetic",
        count: int = 1,
        stream: bool = True,
        concurrency: int = 200,
    ) -> dict[str, Any]:
        """Open ``clients`` connections; each sends its ``data`` requests and waits for every
        ``data_init``. Returns how many made it and how long it took."""
        parts = urlsplit(url)
        host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(concurrency)
        started = time.perf_counter()

        async def one(i: int) -> WsClient:
            async with gate:
                _, client = await loop.create_connection(
                    lambda: WsClient(self.stats, host, port, path), host, port
                )
                await asyncio.wait_for(client.opened, 60)
                if names and per_client:
                    wanted = subscriptions(names, per_client, i)
                    done = client.want_inits(len(wanted))
                    for frame in data_requests(wanted, source, count, stream):
                        assert client.transport is not None
                        client.transport.write(frame)
                    await asyncio.wait_for(done, 120)
                return client

        results = await asyncio.gather(*(one(i) for i in range(clients)), return_exceptions=True)
        ok = [r for r in results if isinstance(r, WsClient)]
        failed = [r for r in results if not isinstance(r, WsClient)]
        self.clients.extend(ok)
        return {
            "connected": len(ok),
            "failed": len(failed),
            "first_failure": repr(failed[0]) if failed else None,
            "seconds": round(time.perf_counter() - started, 2),
            "errors": self.stats.errors,
            "error_samples": self.stats.error_samples[:3],
        }

    async def measure(self, seconds: float) -> dict[str, Any]:
        """Count ``data_update`` frames and their latencies for ``seconds``."""
        stats = self.stats
        stats.latencies = []
        stats.messages = 0
        stats.measuring = True
        started = time.perf_counter()
        await asyncio.sleep(seconds)
        stats.measuring = False
        elapsed = time.perf_counter() - started
        messages = stats.messages
        latencies = [1000 * x for x in stats.latencies]
        stats.latencies = []
        return {
            "messages": messages,
            "elapsed": elapsed,
            "per_s": messages / elapsed,
            **summary(latencies),
            "open": sum(not c.closed for c in self.clients),
        }

    async def quiet(self, idle: float = 0.3, timeout: float = 15.0) -> dict[str, Any]:
        """Wait until no ``data_update`` arrived for ``idle`` seconds."""
        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            before = self.stats.messages
            await asyncio.sleep(idle)
            if self.stats.messages == before:
                return {"quiet": True, "seconds": round(time.perf_counter() - started, 2)}
        return {"quiet": False, "seconds": round(time.perf_counter() - started, 2)}

    async def close(self) -> dict[str, Any]:
        for client in self.clients:
            client.close()
        closed = len(self.clients)
        self.clients = []
        self.stats = Stats()
        await asyncio.sleep(0.5)
        return {"closed": closed}

    async def rpc(self, index: int, payloads: list[bytes], expect: bytes = INIT) -> dict[str, Any]:
        """Send each payload on connection ``index`` in turn, waiting for its reply; the
        latencies (ms) and the number of bars in each reply."""
        import orjson

        client = self.clients[index]
        latencies, bars = [], []
        for payload in payloads:
            started = time.perf_counter()
            frame = client_frame(payload)
            arrived, reply = await asyncio.wait_for(client.request(frame, expect), 120)
            latencies.append(1000 * (arrived - started))
            bars.append(len(orjson.loads(reply).get("data") or ()))
        return {"latencies_ms": latencies, "bars": bars}

    async def rpc_loop(
        self, payloads: list[bytes], seconds: float, expect: bytes = INIT
    ) -> dict[str, Any]:
        """Every connection ``i`` repeats ``payloads[i]`` back to back for ``seconds``."""
        deadline = time.perf_counter() + seconds
        latencies: list[float] = []

        async def loop(client: WsClient, frame: bytes) -> int:
            answers = 0
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                arrived, _ = await asyncio.wait_for(client.request(frame, expect), 120)
                latencies.append(1000 * (arrived - started))
                answers += 1
            return answers

        started = time.perf_counter()
        frames = [client_frame(p) for p in payloads]
        pairs = zip(self.clients, frames, strict=False)  # as many as there are payloads
        counts = await asyncio.gather(*(loop(c, f) for c, f in pairs))
        elapsed = time.perf_counter() - started
        return {"answers": sum(counts), "per_s": sum(counts) / elapsed, **summary(latencies)}


def loadgen_main(conn: Any, core: int | None, factory: Callable[[], Any] | None = None) -> None:
    """The load generator process: run the commands received on ``conn`` until ``stop`` on
    a ``Generator`` (or what ``factory`` makes: another benchmark's generator)."""
    if core is not None:
        os.sched_setaffinity(0, {core})
    raise_nofile()
    run_loop(_serve(conn, factory or Generator))


def run_loop(main: Any, loop: str = "uvloop") -> None:
    """Run a coroutine on uvloop when it is installed (and wanted), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    if loop == "uvloop":
        uvloop.run(main)
    else:
        asyncio.run(main)


async def _serve(conn: Any, factory: Callable[[], Any]) -> None:
    loop = asyncio.get_running_loop()
    generator = factory()
    while True:
        # A blocking read in a helper thread: the pipe stays blocking (uvloop's add_reader
        # would make it non-blocking, and a large command would then be read in part).
        command, kwargs = await loop.run_in_executor(None, conn.recv)
        if command == "stop":
            await generator.close()
            conn.send({})
            return
        try:
            result = await getattr(generator, command)(**kwargs)
        except Exception as exc:  # reported to the caller, which raises it
            result = {"failure": f"{command}: {exc!r}"}
        if command == "connect":
            # The clients (and everything before them) are frozen out of garbage collection:
            # a full collection of the load generator would hold every frame arriving
            # meanwhile, and its pause would be counted as the server's latency.
            gc.freeze()
        conn.send(result)


class LoadGen:
    """The parent's handle of the load generator process (pinned to the client core)."""

    def __init__(self, factory: Callable[[], Any] | None = None) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.proc = context.Process(
            target=loadgen_main, args=(child, CLIENT_CORE, factory), daemon=True
        )
        self.proc.start()
        child.close()
        assert self.proc.pid is not None
        self.pid = self.proc.pid
        self.pinned = pin_tree(self.pid, CLIENT_CORE)

    def call(self, command: str, timeout: float = 600, **kwargs: Any) -> dict[str, Any]:
        self.conn.send((command, kwargs))
        if not self.conn.poll(timeout):
            raise TimeoutError(f"load generator: {command} took over {timeout} s")
        result: dict[str, Any] = self.conn.recv()
        if "failure" in result:
            raise RuntimeError(f"load generator failed: {result['failure']}")
        return result

    def cpu(self) -> float:
        t = tree_cpu(self.pid)
        return t["main"] + t["children"]

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call("stop", timeout=30)
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()

    def __enter__(self) -> LoadGen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------- the servers


class Target:
    """A server under test: its process, URL and rate file."""

    label = "?"
    pid: int
    ws_url: str
    pinned: bool
    rate_file: str

    def set_rate(self, rate: float) -> None:
        RateFile.write(self.rate_file, rate)

    def cpu(self) -> dict[str, float]:
        return tree_cpu(self.pid)

    def rss(self) -> int:
        return rss(self.pid)

    def loop_stalls(self) -> dict[str, float] | None:
        """The hub's event-loop stall counters (``candlewire_loop_stalls_total`` by
        ``over_ms``); None for a server without them."""
        return None


class OurServer(Target):
    """``populate.py`` then the real ``server.py`` (tests/harness.py), on the server core."""

    label = "candlewire"

    def __init__(self, providers: str = "synthetic", **env: str) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="candlewire-bench-")
        self.tmp = Path(self._tmp.name)
        self.rate_file = str(self.tmp / "rate")
        RateFile.write(self.rate_file, 0)
        from tests.harness import base_env

        self.env = base_env(
            self.tmp,
            PROVIDERS=providers,
            LOG_LEVEL="WARNING",
            EXTRA_PROVIDERS="synthetic=bench.synthetic:SyntheticProvider,"
            "history=bench.synthetic:HistoryProvider",
            BENCH_RATE_FILE=self.rate_file,
            **env,
        )
        self.server: Any = None

    def __enter__(self) -> Self:
        from tests.harness import populate

        raise_nofile()  # inherited by the server
        done = populate(self.env)
        if done.returncode != 0:
            raise RuntimeError(f"populate failed:\n{done.stderr}")
        self.start()
        return self

    def start(self) -> None:
        from tests.harness import ServerProcess

        with affinity(SERVER_CORE):
            self.server = ServerProcess(self.env, self.tmp / "server.log").start(timeout=60)
        self.pid = self.server.proc.pid
        self.ws_url = self.server.ws_url
        self.pinned = pin_tree(self.pid, SERVER_CORE)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self.server.get("/health")
        return result

    def loop_stalls(self) -> dict[str, float] | None:
        prefix = 'candlewire_loop_stalls_total{over_ms="'
        counts = {}
        for line in str(self.server.get("/metrics")).splitlines():
            if line.startswith(prefix):
                over, _, value = line[len(prefix) :].partition('"} ')
                counts[over] = float(value)
        return counts

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._tmp.cleanup()


class CeilingServer(Target):
    """``bench/ceiling.py`` in a process on the server core: ``broadcast`` or ``blast``;
    ``reuse_port``: listening with ``SO_REUSEPORT`` (several on one ``port``)."""

    def __init__(
        self,
        mode: str = "broadcast",
        keys: int = 100,
        loop: str = "uvloop",
        port: int = 0,
        reuse_port: bool = False,
        ping_interval: float = 20.0,
    ) -> None:
        self.mode = mode
        self.ping_interval = ping_interval  # seconds between keep-alive pings; 0: none
        self.loop = loop
        self.port = port  # 0: any free port; with ``reuse_port``, another ceiling's port
        self.reuse_port = reuse_port
        self.label = "ceiling" if mode == "broadcast" else "blaster"
        self._tmp = tempfile.TemporaryDirectory(prefix="candlewire-ceiling-")
        self.rate_file = str(Path(self._tmp.name) / "rate")
        RateFile.write(self.rate_file, 0)
        self.keys = keys
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Self:
        raise_nofile()
        command = [
            sys.executable,
            str(ROOT / "bench" / "ceiling.py"),
            "--mode",
            self.mode,
            "--keys",
            str(self.keys),
            "--rate-file",
            self.rate_file,
            "--loop",
            self.loop,
            "--port",
            str(self.port),
            *(["--reuse-port"] if self.reuse_port else []),
            "--ping-interval",
            str(self.ping_interval),
        ]
        with affinity(SERVER_CORE):
            self.proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.__exit__()
            raise RuntimeError(f"ceiling server did not start: {line!r}")
        self.ws_url = line.split()[-1]
        self.pid = self.proc.pid
        self.pinned = pin_tree(self.pid, SERVER_CORE)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self._tmp.cleanup()


# ---------------------------------------------------------------------------- measuring


def window(target: Target, gen: LoadGen, seconds: float) -> dict[str, Any]:
    """One measurement window, with the CPU used meanwhile by server and client."""
    s0, c0, t0 = target.cpu(), gen.cpu(), time.perf_counter()
    result = gen.call("measure", seconds=seconds)
    s1, c1, elapsed = target.cpu(), gen.cpu(), time.perf_counter() - t0
    result["server_cpu"] = round((s1["main"] - s0["main"]) / elapsed, 2)
    result["provider_cpu"] = round((s1["children"] - s0["children"]) / elapsed, 2)
    result["client_cpu"] = round((c1 - c0) / elapsed, 2)
    return result


def drain(target: Target, gen: LoadGen, timeout: float = 30.0) -> float:
    """Stop the source and wait until the server is idle again: no message for 0.3 s and the
    server's processes under 20% of a core (a backlog inside the server shows as CPU, not as
    messages). Returns the seconds it took."""
    target.set_rate(0)
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before, t0 = target.cpu(), time.monotonic()
        quiet = gen.call("quiet", idle=0.3, timeout=5)
        after, elapsed = target.cpu(), time.monotonic() - t0
        busy = (sum(after.values()) - sum(before.values())) / elapsed
        if quiet["quiet"] and busy < 0.2:
            break
    return time.monotonic() - started


class Search:
    """The saturation search of one server, one step at a time (see :func:`interleave`).

    Raise the rate (updates/s per key) by ``factor`` until delivered/ideal < ``min_ratio``
    or p99 > ``max_p99_ms``, then bisect (geometrically) until the best passing rate and the
    lowest failing one are within ``precision`` of each other. ``ideal_per_rate`` is the
    number of subscriptions: ideal messages/s = rate x subscriptions. With ``confirm``, a
    failing window is measured once more and the second one counts if it passes (the machine
    is shared: one stall of another process must not end the search). Each step ends with
    the source stopped and the server drained, so the next step (of this server or of
    another) starts from an idle server.
    """

    def __init__(
        self,
        target: Target,
        ideal_per_rate: float,
        start_rate: float,
        *,
        seconds: float = 3.0,
        settle: float = 1.0,
        factor: float = 2.0,
        precision: float = 1.2,
        max_steps: int = 9,
        min_ratio: float = 0.95,
        max_p99_ms: float = 100.0,
        confirm: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.target = target
        self.ideal_per_rate = ideal_per_rate
        self.rate = start_rate
        self.seconds, self.settle, self.factor = seconds, settle, factor
        self.precision, self.max_steps = precision, max_steps
        self.min_ratio, self.max_p99_ms = min_ratio, max_p99_ms
        self.confirm, self.log = confirm, log
        self.steps: list[dict[str, Any]] = []
        self.good: dict[str, Any] | None = None
        self.bad: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        if len(self.steps) >= self.max_steps:
            return True
        return bool(
            self.good and self.bad and self.bad["rate"] / self.good["rate"] <= self.precision
        )

    def step(self, gen: LoadGen) -> dict[str, Any]:
        target, rate = self.target, self.rate
        ideal = self.ideal_per_rate * rate
        target.set_rate(rate)
        time.sleep(self.settle)
        m = window(target, gen, self.seconds)
        if self.confirm and not _passes(m, ideal, self.min_ratio, self.max_p99_ms):
            again = window(target, gen, self.seconds)  # a stall of another process, or real?
            if _passes(again, ideal, self.min_ratio, self.max_p99_ms):
                m = again
        drained = drain(target, gen)
        step = {
            "rate": round(rate, 4),
            "ideal_per_s": round(ideal),
            "delivered_per_s": round(m["per_s"]),
            "ratio": round(m["per_s"] / ideal, 3),
            "p50_ms": m["p50_ms"],
            "p99_ms": m["p99_ms"],
            "max_ms": m["max_ms"],
            "server_cpu": m["server_cpu"],
            "provider_cpu": m["provider_cpu"],
            "client_cpu": m["client_cpu"],
            "open": m["open"],
            "drain_s": round(drained, 1),
            "ok": _passes(m, ideal, self.min_ratio, self.max_p99_ms),
        }
        self.steps.append(step)
        if self.log:
            self.log(
                f"  {target.label:<10} rate {rate:9.3f}/s/key ideal {ideal:9.0f} delivered "
                f"{m['per_s']:9.0f} ({step['ratio']:.3f}) p99 {m['p99_ms']} ms  cpu server "
                f"{m['server_cpu']} provider {m['provider_cpu']} client {m['client_cpu']}"
                f"  {'ok' if step['ok'] else 'FAIL'} (drained in {drained:.1f} s)"
            )
        if step["ok"]:
            if self.good is None or rate > self.good["rate"]:
                self.good = step
            self.rate = (
                rate * self.factor if self.bad is None else math.sqrt(rate * self.bad["rate"])
            )
        else:
            if self.bad is None or rate < self.bad["rate"]:
                self.bad = step
            self.rate = (
                rate / self.factor if self.good is None else math.sqrt(self.good["rate"] * rate)
            )
        return step

    def result(self) -> dict[str, Any]:
        return {
            "saturation_per_s": self.good["delivered_per_s"] if self.good else 0,
            "best": self.good,
            "first_failure": self.bad,
            "limited_by": limited_by(self.bad),
            "steps": self.steps,
        }


def interleave(searches: list[Search], gen: LoadGen) -> list[dict[str, Any]]:
    """Run several searches step by step in turn, so that the servers compared meet the same
    background load of the (shared) machine; only one server has a source running at a time."""
    while not all(s.done for s in searches):
        for search in searches:
            if not search.done:
                search.step(gen)
    return [s.result() for s in searches]


def saturation(
    target: Target, gen: LoadGen, ideal_per_rate: float, start_rate: float, **options: Any
) -> dict[str, Any]:
    """One server's saturation search on its own (see :class:`Search`)."""
    return interleave([Search(target, ideal_per_rate, start_rate, **options)], gen)[0]


def _passes(m: dict[str, Any], ideal: float, min_ratio: float, max_p99_ms: float) -> bool:
    p99 = m["p99_ms"]
    return bool(m["per_s"] / ideal >= min_ratio and p99 is not None and p99 <= max_p99_ms)


def limited_by(step: dict[str, Any] | None) -> str:
    """What ran out at a failing step, from the CPU each side used (the server core is shared
    with whatever else runs on the machine, so < 100% can still be a full core)."""
    if step is None:
        return "not reached"
    if step["client_cpu"] >= 0.9:
        return "client"
    if step["server_cpu"] + step["provider_cpu"] >= 0.8:
        return "server CPU"
    return "latency (server core < 80% ours)"


# ---------------------------------------------------------------------------- output


def table(columns: list[tuple[str, str, str]], rows: list[dict[str, Any]]) -> str:
    """A plain text table; ``columns`` are (header, key, format spec)."""

    def cell(row: dict[str, Any], key: str, spec: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        if isinstance(value, str):
            return value
        return format(value, spec)

    cells = [[cell(r, k, s) for _, k, s in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (h, _, _) in enumerate(columns)]
    lines = [" ".join(h.rjust(w) for (h, _, _), w in zip(columns, widths, strict=True))]
    lines += [" ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def emit(name: str, figures: dict[str, Any]) -> None:
    """The one JSON line of a script (its last line of output)."""
    print(json.dumps({"bench": name, **figures}, default=str), flush=True)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
