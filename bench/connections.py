"""Idle connections: how many subscribed, idle WebSocket connections one hub holds, at what
cost each, how fast it accepts them and how fast one update reaches all of them.

    python bench/connections.py [--connections 10000] [--keys 1] [--sources 4]
                                [--per-process 10000] [--breakdown 2000] [--no-ceiling]

**Limits first.** The open-file limit of every process is raised to its hard limit
(``resource.setrlimit``; a process can go no higher without ``CAP_SYS_RESOURCE``). One
server process needs a descriptor per connection, so it holds at most the hard limit minus
what it uses itself (``SERVER_RESERVE_FDS``): a request above that is cut to it, and the
benchmark prints the limit and why. The load generator is split over processes of at most
``--per-process`` connections each (also under the hard limit), and spreads its connections
over ``--sources`` loopback source addresses ``127.0.0.1``, ``127.0.0.2``, ... (more when one
address's ephemeral ports, ``/proc/sys/net/ipv4/ip_local_port_range``, would not do); an
address other than ``127.0.0.1`` is a remote client to the server, so the bench raises the
per-address limits of the server under test (``MAX_CONNECTIONS_PER_ADDRESS``, the request
rate, ``MAX_SUBSCRIPTIONS_PER_CALLER``). It reads ``net.core.somaxconn`` and changes no
system setting.

**Then, per server** (Candlewire, then the ``websockets`` ceiling of ``bench/ceiling.py``):

* *accept*: every load generator process opens its connections at once (200 handshakes in
  flight per process); each connection sends one ``data`` request (``count`` 1, streamed)
  for one of ``--keys`` keys and waits for its ``data_init``. Times: until every socket was
  upgraded, and until every subscription was answered, from one start time.
* *memory*: the server's RSS before and after, divided by the number of connections; the
  kernel's slab memory before and after (``/proc/slabinfo``, the whole machine: it holds
  the client's sockets too, so a server's share is about half).
* *fan-out*: the source publishes one update per key (every client gets exactly one frame);
  the figure is the time from its publication (the bar's volume) until the last client has
  it, over ``FANOUT_ROUNDS`` updates.

``--breakdown N``: one more Candlewire server, started with ``tracemalloc`` (through a
``sitecustomize`` module that only this benchmark puts on its path) and given N
connections: the Python heap per connection, by module and by allocating line.

Prints tables, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import resource
import socket
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    INIT,
    SERVER_CORE,
    UPDATE,
    CeilingServer,
    LoadGen,
    OurServer,
    Target,
    affinity,
    client_frame,
    data_requests,
    emit,
    log,
    machine,
    pin_tree,
    raise_nofile,
    ratio,
    table,
)
from bench.synthetic import symbol_names

TARGET_KB = 16.0  # the bare websockets server's figure on this machine (issue 17)
SERVER_RESERVE_FDS = 300  # the server's own descriptors: listener, provider pipes, SQLite, logs
CLIENT_RESERVE_FDS = 100
PORT_MARGIN = 0.9  # of one source address's ephemeral ports, at most this share is used
CONCURRENCY = 200  # handshakes in flight per load generator process
FANOUT_ROUNDS = 3
FANOUT_RATE = 0.5  # updates per second per key while measuring fan-out
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
PROJECTED = 100_000

# ---------------------------------------------------------------------------- the machine


def read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii").strip()
    except OSError:
        return "?"


def os_limits() -> dict[str, Any]:
    """What bounds the number of connections here: descriptors, ports, listen backlog."""
    soft = raise_nofile()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    ports = read_text("/proc/sys/net/ipv4/ip_local_port_range").split()
    low, high = (int(ports[0]), int(ports[1])) if len(ports) == 2 else (32768, 60999)
    return {
        "nofile_soft": soft,
        "nofile_hard": hard,
        "port_range": [low, high],
        "ports_per_address": high - low + 1,
        "somaxconn": read_text("/proc/sys/net/core/somaxconn"),
        "tcp_mem": read_text("/proc/sys/net/ipv4/tcp_mem"),
    }


def plan(requested: int, sources: int, per_process: int, limits: dict[str, Any]) -> dict[str, Any]:
    """How many connections this machine allows one server, and how to spread them."""
    server_cap = max(1, limits["nofile_soft"] - SERVER_RESERVE_FDS)
    count = min(requested, server_cap)
    reason = ""
    if count < requested:
        reason = (
            f"the open-file limit: hard limit {limits['nofile_hard']:,} (ulimit -Hn), which "
            f"this process cannot raise; one server process holds at most {server_cap:,} "
            f"connections ({SERVER_RESERVE_FDS} descriptors kept for its own files)"
        )
    per_address = int(limits["ports_per_address"] * PORT_MARGIN)
    addresses = max(sources, math.ceil(count / per_address))
    per_process = min(per_process, limits["nofile_soft"] - CLIENT_RESERVE_FDS)
    processes = max(1, math.ceil(count / per_process))
    return {
        "requested": requested,
        "connections": count,
        "short_because": reason,
        "sources": [f"127.0.0.{i + 1}" for i in range(addresses)],
        "processes": processes,
    }


def slab_bytes() -> dict[str, int]:
    """Bytes in each kernel slab cache (active objects x object size); empty if unreadable."""
    out: dict[str, int] = {}
    try:
        lines = Path("/proc/slabinfo").read_text(encoding="ascii").splitlines()[2:]
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        if len(fields) > 3:
            out[fields[0]] = int(fields[1]) * int(fields[3])
    return out


def tcp_buffer_pages() -> int:
    """Pages of TCP socket buffers in use on the machine (``/proc/net/sockstat``)."""
    for line in read_text("/proc/net/sockstat").splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1])
    return 0


# ---------------------------------------------------------------------------- the clients


class Arrivals:
    """Per update (keyed by its publication time): clients that got it, and the last time."""

    def __init__(self) -> None:
        self.by_update: dict[float, list[float]] = {}
        self.recording = False
        self.inits = 0
        self.errors = 0
        self.error_sample = ""

    def update(self, published: float, now: float) -> None:
        seen = self.by_update.get(published)
        if seen is None:
            self.by_update[published] = [1.0, now]
        else:
            seen[0] += 1
            seen[1] = now


class IdleClient(asyncio.Protocol):
    """A lean WebSocket client: handshake, one subscription, then it only listens."""

    __slots__ = (
        "_handshake",
        "arrivals",
        "buf",
        "closed",
        "opened",
        "subscribed",
        "transport",
        "upgraded",
    )

    def __init__(self, arrivals: Arrivals, handshake: bytes) -> None:
        self.arrivals = arrivals
        self.buf = b""
        self.upgraded = False
        self.closed = False
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[float] = loop.create_future()
        self.subscribed: asyncio.Future[float] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._handshake = handshake

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self._handshake)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for future in (self.opened, self.subscribed):
            if not future.done():
                future.set_exception(ConnectionError(f"connection lost: {exc!r}"))
                future.exception()  # one failure is reported (by ``opened``), not two

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(buf.split(b"\r\n", 1)[0].decode()))
                assert self.transport is not None
                self.transport.close()
                return
            buf = buf[end + 4 :]
            self.upgraded = True
            self.opened.set_result(time.time())
        pos, size = 0, len(buf)
        while size - pos >= 2:
            n = buf[pos + 1] & 0x7F
            start = pos + 2
            if n == 126:
                if size - pos < 4:
                    break
                n, start = int.from_bytes(buf[pos + 2 : pos + 4], "big"), pos + 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, start = int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + 10
            stop = start + n
            if stop > size:
                break
            self._frame(buf[pos] & 0x0F, buf, start, stop)
            pos = stop
        self.buf = buf[pos:] if pos < size else b""

    def _frame(self, opcode: int, buf: bytes, start: int, stop: int) -> None:
        arrivals = self.arrivals
        if buf.startswith(UPDATE, start):
            if arrivals.recording:
                i = buf.rfind(b":", start, stop)
                arrivals.update(float(buf[i + 1 : stop - 2]), time.time())
        elif buf.startswith(INIT, start):
            arrivals.inits += 1
            if not self.subscribed.done():
                self.subscribed.set_result(time.time())
        elif opcode == 1:
            arrivals.errors += 1
            arrivals.error_sample = buf[start : min(stop, start + 200)].decode(errors="replace")
        elif opcode == 9 and self.transport is not None:  # ping -> pong
            self.transport.write(client_frame(buf[start:stop], opcode=10))
        elif opcode == 8 and self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(client_frame(b"\x03\xe8", opcode=8))
            self.transport.close()


class IdleGenerator:
    """One load generator process's connections (the commands of ``LoadGen.call``)."""

    def __init__(self) -> None:
        self.seen = Arrivals()
        self.clients: list[IdleClient] = []

    async def connect(
        self,
        url: str,
        indices: list[int],
        sources: list[str],
        names: list[str],
        started: float,
    ) -> dict[str, Any]:
        """Open connection ``i`` for each of ``indices`` from ``sources[i % len(sources)]``,
        subscribed to ``names[i % len(names)]``. Times are seconds since ``started`` (wall)."""
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        handshake = (
            f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        requests = {n: data_requests([n], "synthetic", 1, True)[0] for n in set(names)}
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(CONCURRENCY)
        opened: list[float] = []
        subscribed: list[float] = []

        async def one(i: int) -> IdleClient:
            async with gate:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                    sock.bind((sources[i % len(sources)], 0))
                    sock.setblocking(False)
                    await loop.sock_connect(sock, (host, port))
                except OSError:
                    sock.close()
                    raise
                _, client = await loop.create_connection(
                    lambda: IdleClient(self.seen, handshake), sock=sock
                )
                self.clients.append(client)
                opened.append(await asyncio.wait_for(client.opened, 120))
                assert client.transport is not None
                client.transport.write(requests[names[i % len(names)]])
                subscribed.append(await asyncio.wait_for(client.subscribed, 120))
                return client

        results = await asyncio.gather(*(one(i) for i in indices), return_exceptions=True)
        failed = [r for r in results if not isinstance(r, IdleClient)]
        return {
            "connected": len(results) - len(failed),
            "failed": len(failed),
            "first_failure": repr(failed[0]) if failed else None,
            "opened_s": round(max(opened) - started, 3) if opened else None,
            "subscribed_s": round(max(subscribed) - started, 3) if subscribed else None,
            "errors": self.seen.errors,
            "error_sample": self.seen.error_sample,
        }

    async def record(self, on: bool) -> dict[str, Any]:
        """Start (clearing what was recorded) or stop recording update arrivals."""
        if on:
            self.seen.by_update = {}
        self.seen.recording = on
        return {"open": self.open_count()}

    async def arrivals(self) -> dict[str, Any]:
        """What was recorded so far: per update, clients reached and the last arrival."""
        return {"by_update": self.seen.by_update}

    async def open_now(self) -> dict[str, Any]:
        return {"open": self.open_count()}

    def open_count(self) -> int:
        return sum(not c.closed for c in self.clients)

    async def close(self) -> dict[str, Any]:
        for client in self.clients:
            client.close()
        closed = len(self.clients)
        self.clients = []
        await asyncio.sleep(0.5)
        return {"closed": closed}


class Generators:
    """Several load generator processes driven together."""

    def __init__(self, count: int) -> None:
        self.gens = [LoadGen(IdleGenerator) for _ in range(count)]

    def call_all(self, command: str, each: list[dict[str, Any]], timeout: float = 900):
        for gen, kwargs in zip(self.gens, each, strict=True):
            gen.conn.send((command, kwargs))
        results = []
        for gen in self.gens:
            if not gen.conn.poll(timeout):
                raise TimeoutError(f"load generator: {command} took over {timeout} s")
            result: dict[str, Any] = gen.conn.recv()
            if "failure" in result:
                raise RuntimeError(f"load generator failed: {result['failure']}")
            results.append(result)
        return results

    def same(self, command: str, **kwargs: Any) -> list[dict[str, Any]]:
        return self.call_all(command, [kwargs] * len(self.gens))

    def stop(self) -> None:
        for gen in self.gens:
            gen.stop()


@contextlib.contextmanager
def generators(count: int) -> Iterator[Generators]:
    gens = Generators(count)
    try:
        yield gens
    finally:
        gens.stop()


# ---------------------------------------------------------------------------- measuring


def connect(gens: Generators, target: Target, count: int, sources: list[str], names: list[str]):
    """Open ``count`` connections over every generator; accept times and failures."""
    started = time.time()
    share = [list(range(g, count, len(gens.gens))) for g in range(len(gens.gens))]
    results = gens.call_all(
        "connect",
        [
            {
                "url": target.ws_url,
                "indices": s,
                "sources": sources,
                "names": names,
                "started": started,
            }
            for s in share
        ],
    )
    connected = sum(r["connected"] for r in results)
    failures = [r["first_failure"] for r in results if r["first_failure"]]
    errors = [r["error_sample"] for r in results if r["error_sample"]]
    out = {
        "connected": connected,
        "failed": sum(r["failed"] for r in results),
        "first_failure": failures[0] if failures else None,
        "error_frames": sum(r["errors"] for r in results),
        "error_sample": errors[0] if errors else None,
        "opened_s": max((r["opened_s"] or 0) for r in results),
        "subscribed_s": max((r["subscribed_s"] or 0) for r in results),
    }
    out["accepted_per_s"] = round(connected / out["opened_s"]) if out["opened_s"] else None
    return out


def merged_arrivals(gens: Generators) -> dict[float, list[float]]:
    """Every generator's arrivals per update: clients reached (summed), last time (max)."""
    merged: dict[float, list[float]] = {}
    for result in gens.same("arrivals"):
        for published, (got, last) in result["by_update"].items():
            seen = merged.setdefault(published, [0.0, 0.0])
            seen[0] += got
            seen[1] = max(seen[1], last)
    return merged


def fanout(gens: Generators, target: Target, keys: int, count: int) -> dict[str, Any]:
    """Publish updates at ``FANOUT_RATE`` per key until ``FANOUT_ROUNDS`` per key reached
    every subscriber of their key; per update, the time from publication to the last client."""
    subscribers = count // keys  # the smallest group (client i -> key i % keys)
    gens.same("record", on=True)
    target.set_rate(FANOUT_RATE)
    deadline = time.monotonic() + FANOUT_ROUNDS / FANOUT_RATE + 30
    merged: dict[float, list[float]] = {}
    while time.monotonic() < deadline:
        time.sleep(0.5)
        merged = merged_arrivals(gens)
        if sum(got >= subscribers for got, _ in merged.values()) >= FANOUT_ROUNDS * keys:
            break
    target.set_rate(0)
    gens.same("record", on=False)
    complete = sorted(
        1000 * (last - published) for published, (got, last) in merged.items() if got >= subscribers
    )
    return {
        "updates": len(merged),
        "complete": len(complete),
        "subscribers_per_update": subscribers,
        "last_client_ms": [round(t, 1) for t in complete],
        "last_client_ms_median": round(complete[len(complete) // 2], 1) if complete else None,
    }


def measure(
    gens: Generators, target: Target, count: int, sources: list[str], names: list[str]
) -> dict[str, Any]:
    time.sleep(1.0)
    rss_before, slab_before, tcp_before = target.rss(), slab_bytes(), tcp_buffer_pages()
    accepted = connect(gens, target, count, sources, names)
    log(
        f"  {target.label}: {accepted['connected']:,} connected, upgraded in "
        f"{accepted['opened_s']} s, subscribed in {accepted['subscribed_s']} s "
        f"({accepted['failed']} failed {accepted['first_failure'] or ''})"
    )
    time.sleep(2.0)
    rss_after, slab_after, tcp_after = target.rss(), slab_bytes(), tcp_buffer_pages()
    connected = max(1, accepted["connected"])
    slab = {
        name: slab_after.get(name, 0) - slab_before.get(name, 0)
        for name in set(slab_after) | set(slab_before)
    }
    slab_top = sorted(((v, k) for k, v in slab.items() if v > 0), reverse=True)[:6]
    spread = fanout(gens, target, len(names), accepted["connected"])
    log(f"  {target.label}: fan-out to the last client {spread['last_client_ms']} ms")
    gens.same("close")
    return {
        **accepted,
        "rss_before_mb": round(rss_before / 2**20, 1),
        "rss_after_mb": round(rss_after / 2**20, 1),
        "kb_per_connection": round((rss_after - rss_before) / connected / 1024, 2),
        "kernel_slab_kb_per_connection": round(sum(slab.values()) / connected / 1024, 2),
        "kernel_slab_top": {k: round(v / connected) for v, k in slab_top},
        "tcp_buffer_pages": tcp_after - tcp_before,
        "fanout": spread,
    }


# ---------------------------------------------------------------------------- the heap

TRACE_ENV = "CANDLEWIRE_BENCH_TRACEMALLOC"
SITECUSTOMIZE = f"""
# Written by bench/connections.py: trace the server's Python heap (tracemalloc) and dump a
# snapshot when asked (a file NAME.want in the directory named by {TRACE_ENV}; one that
# says "collect": after a full garbage collection).
import gc, os, threading, time, tracemalloc

_where = os.environ.pop("{TRACE_ENV}", "")  # popped: the server's children do not trace
if _where:
    tracemalloc.start(1)

    def _watch():
        while True:
            for name in os.listdir(_where):
                if name.endswith(".want"):
                    with open(os.path.join(_where, name)) as want:
                        if want.read() == "collect":
                            gc.collect()
                    path = os.path.join(_where, name[:-5] + ".snapshot")
                    tracemalloc.take_snapshot().dump(path + ".tmp")
                    os.replace(path + ".tmp", path)
                    os.remove(os.path.join(_where, name))
            time.sleep(0.1)

    threading.Thread(target=_watch, name="bench-tracemalloc", daemon=True).start()
"""


class SlowStartServer(OurServer):
    """``OurServer`` given longer to start: under tracemalloc everything runs slower."""

    def start(self) -> None:
        from tests.harness import ServerProcess

        with affinity(SERVER_CORE):
            self.server = ServerProcess(self.env, self.tmp / "server.log").start(timeout=300)
        self.pid = self.server.proc.pid
        self.ws_url = self.server.ws_url
        self.pinned = pin_tree(self.pid, SERVER_CORE)


def snapshot(
    where: Path, name: str, collect: bool = False, timeout: float = 120.0
) -> tracemalloc.Snapshot:
    """Ask the traced server for a snapshot of its heap (after a full garbage collection
    if ``collect``) and load it."""
    (where / f"{name}.want").write_text("collect" if collect else "", encoding="ascii")
    path = where / f"{name}.snapshot"
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the traced server wrote no {name} snapshot")
        time.sleep(0.1)
    return tracemalloc.Snapshot.load(str(path))


def short(filename: str) -> str:
    """A traced file as a module path: within the project, site-packages or the stdlib."""
    for marker in ("site-packages/", f"{Path(sys.executable).parent.parent}/", "/lib/python3"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    root = str(Path(__file__).resolve().parent.parent) + "/"
    return filename.removeprefix(root)


def heap_breakdown(
    gens: Generators, count: int, env: dict[str, str], sources: list[str], names: list[str]
) -> dict[str, Any]:
    """Python heap per connection in a traced server: by file and by allocating line."""
    with tempfile.TemporaryDirectory(prefix="candlewire-trace-") as tmp:
        where = Path(tmp)
        (where / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
        path = os.pathsep.join(filter(None, [tmp, os.environ.get("PYTHONPATH", "")]))
        traced = {**env, "PYTHONPATH": path, TRACE_ENV: tmp}
        with SlowStartServer(**traced) as server:
            connect(gens, server, 1, sources, names)  # warm up what the first one imports
            gens.same("close")
            time.sleep(1.0)
            before = snapshot(where, "before")
            accepted = connect(gens, server, count, sources, names)
            time.sleep(2.0)
            after = snapshot(where, "after")
            collected = snapshot(where, "collected", collect=True)
            gens.same("close")
    connected = max(1, accepted["connected"])
    ignore = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
        tracemalloc.Filter(False, "<unknown>"),
    ]
    after, before = after.filter_traces(ignore), before.filter_traces(ignore)
    by_file = after.compare_to(before, "filename")
    by_line = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in by_file)
    live = sum(s.size_diff for s in collected.filter_traces(ignore).compare_to(before, "filename"))
    return {
        "connections": accepted["connected"],
        "python_heap_bytes_per_connection": round(total / connected),
        "after_full_collection_bytes_per_connection": round(live / connected),
        "by_file": [
            {
                "file": short(s.traceback[0].filename),
                "bytes": round(s.size_diff / connected),
                "objects": round(s.count_diff / connected, 2),
            }
            for s in by_file[:12]
            if s.size_diff > 0
        ],
        "by_line": [
            {
                "line": f"{short(s.traceback[0].filename)}:{s.traceback[0].lineno}",
                "bytes": round(s.size_diff / connected),
                "objects": round(s.count_diff / connected, 2),
            }
            for s in by_line[:40]
            if s.size_diff > 0
        ],
    }


# ---------------------------------------------------------------------------- the run


def server_env(keys: int, count: int) -> dict[str, str]:
    """The server under test: room for ``count`` connections from a few addresses, which
    to it are a few remote clients holding thousands of sockets each (a NAT)."""
    room = str(count + 1_000)
    return {
        "BENCH_KEYS": str(keys),
        "MAX_CLIENTS": room,
        "MAX_CONNECTIONS_PER_ADDRESS": room,
        "MAX_SUBSCRIPTIONS_PER_CALLER": room,
        "REQUESTS_PER_SECOND": "1000000",
        "REQUESTS_BURST": "1000000",
    }


def projection(ours: dict[str, Any], count: int) -> dict[str, Any]:
    """The 100,000-connection figures from the measured slopes (not measured at 100,000)."""
    connected = max(1, ours["connected"])
    scale = PROJECTED / connected
    fan = ours["fanout"]["last_client_ms_median"]
    return {
        "connections": PROJECTED,
        "from": connected,
        "rss_mb": round(ours["rss_before_mb"] + ours["kb_per_connection"] * PROJECTED / 1024),
        "kernel_slab_mb": round(ours["kernel_slab_kb_per_connection"] * PROJECTED / 1024),
        "accept_s": round(ours["opened_s"] * scale, 1) if ours["opened_s"] else None,
        "subscribe_s": round(ours["subscribed_s"] * scale, 1) if ours["subscribed_s"] else None,
        "fanout_ms": round(fan * scale) if fan is not None else None,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    limits = os_limits()
    layout = plan(args.connections, args.sources, args.per_process, limits)
    count, sources = layout["connections"], layout["sources"]
    names = symbol_names(args.keys)
    log(
        f"connections: {count:,} idle subscribed connections of {args.connections:,} requested, "
        f"from {len(sources)} source addresses in {layout['processes']} load generator "
        f"processes; open files soft/hard {limits['nofile_soft']:,}/{limits['nofile_hard']:,}, "
        f"ports per address {limits['ports_per_address']:,}, somaxconn {limits['somaxconn']}"
    )
    if layout["short_because"]:
        log(f"  fewer than requested because of {layout['short_because']}")
    env = server_env(args.keys, count)
    ceiling = None
    breakdown = None
    with generators(layout["processes"]) as gens:
        with OurServer(**env) as server:
            ours = measure(gens, server, count, sources, names)
        if not args.no_ceiling:
            with CeilingServer("broadcast", args.keys) as c:
                ceiling = measure(gens, c, count, sources, names)
        if args.breakdown:
            try:
                breakdown = heap_breakdown(gens, min(args.breakdown, count), env, sources, names)
            except (RuntimeError, TimeoutError) as exc:  # the figures above still count
                log(f"  the traced run failed: {exc!r}"[:2000])
                breakdown = {"failed": repr(exc)[:2000]}
    row = {
        "connections": count,
        "requested": args.connections,
        "ours_connected": ours["connected"],
        "ours_kb": ours["kb_per_connection"],
        "ours_rss_mb": ours["rss_after_mb"],
        "ours_connect_s": ours["opened_s"],
        "ours_subscribed_s": ours["subscribed_s"],
        "ours_fanout_ms": ours["fanout"]["last_client_ms_median"],
        "kernel_kb": ours["kernel_slab_kb_per_connection"],
        "ceiling_kb": ceiling["kb_per_connection"] if ceiling else None,
        "ceiling_rss_mb": ceiling["rss_after_mb"] if ceiling else None,
        "ceiling_connect_s": ceiling["opened_s"] if ceiling else None,
        "ceiling_fanout_ms": ceiling["fanout"]["last_client_ms_median"] if ceiling else None,
        "ratio": ratio(ours["kb_per_connection"], ceiling["kb_per_connection"])
        if ceiling
        else None,
        "target_met": ours["connected"] == count and ours["kb_per_connection"] <= TARGET_KB,
    }
    return {
        "row": row,
        "limits": limits,
        "plan": layout,
        "ours": ours,
        "ceiling": ceiling,
        "projection": projection(ours, count),
        "breakdown": breakdown,
        "machine": machine(),
    }


COLUMNS = [
    ("connections", "connections", ",d"),
    ("ours connected", "ours_connected", ",d"),
    ("ours KB/conn", "ours_kb", ".1f"),
    ("ceiling KB/conn", "ceiling_kb", ".1f"),
    ("ours/ceiling", "ratio", ".2f"),
    ("ours RSS MB", "ours_rss_mb", ".0f"),
    ("ceiling RSS MB", "ceiling_rss_mb", ".0f"),
    ("kernel KB/conn", "kernel_kb", ".1f"),
    ("ours accept s", "ours_connect_s", ".1f"),
    ("ceiling accept s", "ceiling_connect_s", ".1f"),
    ("ours fan-out ms", "ours_fanout_ms", ".0f"),
    ("ceiling fan-out ms", "ceiling_fanout_ms", ".0f"),
]


def report(figures: dict[str, Any]) -> None:
    row, layout, limits = figures["row"], figures["plan"], figures["limits"]
    print(
        f"idle subscribed connections: server RSS per connection (target <= {TARGET_KB:g} KB), "
        "time until all were upgraded, one update to all of them (publication to last client)"
    )
    print(table(COLUMNS, [row]))
    print(
        f"open files: soft {limits['nofile_soft']:,} / hard {limits['nofile_hard']:,}; "
        f"ephemeral ports {limits['port_range'][0]}-{limits['port_range'][1]} "
        f"({limits['ports_per_address']:,} per source address); somaxconn {limits['somaxconn']}"
    )
    if layout["short_because"]:
        print(
            f"ran {layout['connections']:,} of {layout['requested']:,}: {layout['short_because']}"
        )
    ours = figures["ours"]
    print(
        "kernel slab growth per connection (both ends of each loopback connection; the "
        f"server's share is about half): {ours['kernel_slab_kb_per_connection']} KB, top "
        + ", ".join(f"{k} {v} B" for k, v in ours["kernel_slab_top"].items())
    )
    p = figures["projection"]
    if p["from"] < PROJECTED:
        print(
            f"PROJECTED to {PROJECTED:,} from the slopes measured at {p['from']:,} (not "
            f"measured): server RSS {p['rss_mb']:,} MB, kernel slab {p['kernel_slab_mb']:,} MB, "
            f"accept {p['accept_s']} s, subscribe {p['subscribe_s']} s, one update to all "
            f"{p['fanout_ms']} ms"
        )
    breakdown = figures["breakdown"]
    if breakdown and "failed" in breakdown:
        print(f"no heap breakdown: the traced run failed ({breakdown['failed'][:200]})")
    elif breakdown:
        print(
            f"Python heap per connection (tracemalloc, {breakdown['connections']:,} "
            f"connections): {breakdown['python_heap_bytes_per_connection']} B, "
            f"{breakdown['after_full_collection_bytes_per_connection']} B after a full "
            "garbage collection"
        )
        print(
            table(
                [
                    ("file", "file", ""),
                    ("B/conn", "bytes", ",d"),
                    ("objects/conn", "objects", ".2f"),
                ],
                breakdown["by_file"],
            )
        )
        print(
            table(
                [
                    ("line", "line", ""),
                    ("B/conn", "bytes", ",d"),
                    ("objects/conn", "objects", ".2f"),
                ],
                breakdown["by_line"],
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=1, help="keys the clients spread over")
    parser.add_argument("--sources", type=int, default=4, help="loopback source addresses")
    parser.add_argument("--per-process", type=int, default=10_000, help="per load generator")
    parser.add_argument(
        "--breakdown", type=int, default=0, help="connections of a tracemalloc run (0: none)"
    )
    parser.add_argument("--no-ceiling", action="store_true")
    args = parser.parse_args()
    figures = run(args)
    report(figures)
    emit("connections", figures)


if __name__ == "__main__":
    main()
