"""Idle connections: how many subscribed, idle WebSocket connections one hub holds, at what
cost each, how fast it accepts them and how fast one update reaches all of them.

    python bench/connections.py [--connections 10000] [--keys 1] [--sources 4]
                                [--per-process 10000] [--breakdown 2000] [--no-ceiling]
                                [--workers 1] [--redis redis://127.0.0.1:6379/0]
                                [--ping-interval 20]

**Limits first.** The open-file limit of every process is raised to its hard limit
(``resource.setrlimit``; a process can go no higher without ``CAP_SYS_RESOURCE``). One
server process needs a descriptor per connection, so it holds at most the hard limit minus
what it uses itself (``SERVER_RESERVE_FDS``): a request above that is cut to it, and the
benchmark prints the limit and why; ``--workers N`` gets past it (below). The load generator
is split over processes of at most
``--per-process`` connections each (also under the hard limit), and spreads its connections
over ``--sources`` loopback source addresses ``127.0.0.1``, ``127.0.0.2``, ... (more when one
address's ephemeral ports, ``/proc/sys/net/ipv4/ip_local_port_range``, would not do); an
address other than ``127.0.0.1`` is a remote client to the server, so the bench raises the
per-address limits of the server under test (``MAX_CONNECTIONS_PER_ADDRESS``, the request
rate, ``MAX_SUBSCRIPTIONS_PER_CALLER``). It prints the kernel settings that bound the run
(``net.core.somaxconn``, ``net.ipv4.tcp_max_syn_backlog``, ``ip_local_port_range``,
``fs.file-max``, ``fs.nr_open``) and changes none of them.

**Keep-alive pings**: both servers ping every socket every ``--ping-interval`` seconds (20,
both servers' default; 0: none), the Candlewire server through ``WS_PING_INTERVAL``. At
100,000 sockets the default is 5,000 pings and pongs a second, on a server core that the
machine's other work shares: in a first run at 100,000 they took most of what the six
workers got of the core, and the accept rate fell from about 280 to about 10 connections a
second. A run at that scale turns them off (``--ping-interval 0``) and says so.

**``--workers N``**: one server of N hub processes on one port, because one process may open
no more files than the hard limit: ``server.py --role hub --workers N`` (``SO_REUSEPORT``;
the kernel spreads the connections over the workers) fed by a provider node
(``--role providers``) through the Redis bus at ``--redis`` (its own ``BUS_PREFIX``, whose
keys are deleted afterwards), both on the server core. Its memory is the RSS summed over
every process (workers, node, provider process); the ceiling is N ``bench/ceiling.py``
processes sharing a port the same way (``--reuse-port``), each with its own source. Before
measuring, a few connections per worker check that every worker accepts and answers. After
the connections are open, each is traced to the worker holding its socket (the worker's
``/proc`` descriptors and TCP table, through ``psutil``), so every figure is also given per
worker.

**Then, per server** (Candlewire, then the ``websockets`` ceiling of ``bench/ceiling.py``):

* *accept*: every load generator process opens its connections at once (200 handshakes in
  flight per process); each connection sends one ``data`` request (``count`` 1, streamed)
  for one of ``--keys`` keys and waits for its ``data_init``. Times: until every socket was
  upgraded, and until every subscription was answered, from one start time.
* *memory*: the server's RSS before and after, divided by the number of connections; the
  kernel's slab memory before and after (``/proc/slabinfo``, the whole machine: it holds
  the client's sockets too, so a server's share is about half).
* *fan-out*: the source publishes one update per key (every client gets exactly one frame)
  every ``fanout_period`` seconds (2 s, longer for more than 20,000 connections so that one
  update has reached everybody before the next); the figure is the time from its
  publication (the bar's volume) until the last client has it, the median of
  ``FANOUT_ROUNDS`` updates. Per worker: until its last client has it. With several
  ceiling processes, each publishes its own updates: the r-th update of each is one round,
  whose figure is the longest of theirs.

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
from typing import Any, cast
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from bench.bus import BusServer
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
    loadavg,
    log,
    machine,
    pin_tree,
    raise_nofile,
    ratio,
    rss,
    table,
    tree_cpu,
)
from bench.synthetic import symbol_names

TARGET_KB = 16.0  # the bare websockets server's figure on this machine (issue 17)
SERVER_RESERVE_FDS = 300  # the server's own descriptors: listener, provider pipes, SQLite, logs
CLIENT_RESERVE_FDS = 100
PORT_MARGIN = 0.9  # of one source address's ephemeral ports, at most this share is used
CONCURRENCY = 200  # handshakes in flight per load generator process
FANOUT_ROUNDS = 3
FANOUT_PERIOD = 2.0  # seconds between two updates of a key while measuring fan-out, at least
FANOUT_PERIOD_PER_CONNECTION = 1e-4  # and this much per connection (10 s for 100,000)
REUSEPORT_MARGIN = 0.95  # of N workers' room: SO_REUSEPORT hashes, it does not balance
WARM_UP_PER_WORKER = 20  # connections per worker that check every worker answers
WARM_UP_ATTEMPTS = 3
WARM_UP_TIMEOUT = 15.0  # seconds a warm-up connection may take to be upgraded and answered
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
        "tcp_max_syn_backlog": read_text("/proc/sys/net/ipv4/tcp_max_syn_backlog"),
        "tcp_mem": read_text("/proc/sys/net/ipv4/tcp_mem"),
        "file_max": read_text("/proc/sys/fs/file-max"),
        "nr_open": read_text("/proc/sys/fs/nr_open"),
    }


def kernel_line(limits: dict[str, Any]) -> str:
    return (
        f"open files soft/hard {limits['nofile_soft']:,}/{limits['nofile_hard']:,} per "
        f"process; fs.file-max {limits['file_max']}, fs.nr_open {limits['nr_open']}; ephemeral "
        f"ports {limits['port_range'][0]}-{limits['port_range'][1]} "
        f"({limits['ports_per_address']:,} per source address and destination); somaxconn "
        f"{limits['somaxconn']}, tcp_max_syn_backlog {limits['tcp_max_syn_backlog']}; tcp_mem "
        f"{limits['tcp_mem']} pages"
    )


def plan(
    requested: int, sources: int, per_process: int, workers: int, limits: dict[str, Any]
) -> dict[str, Any]:
    """How many connections this machine allows one server of ``workers`` processes, and how
    to spread them."""
    per_worker = max(1, limits["nofile_soft"] - SERVER_RESERVE_FDS)
    server_cap = per_worker if workers == 1 else int(per_worker * workers * REUSEPORT_MARGIN)
    count = min(requested, server_cap)
    reason = ""
    if count < requested:
        reason = (
            f"the open-file limit: hard limit {limits['nofile_hard']:,} (ulimit -Hn), which "
            f"this process cannot raise; one server process holds at most {per_worker:,} "
            f"connections ({SERVER_RESERVE_FDS} descriptors kept for its own files)"
        )
        if workers > 1:
            reason += (
                f", and {workers} workers {server_cap:,} (the kernel spreads connections over "
                f"them unevenly: {REUSEPORT_MARGIN:.0%} of their room is used)"
            )
        else:
            reason += "; --workers N runs N such processes on one port"
    per_address = int(limits["ports_per_address"] * PORT_MARGIN)
    addresses = max(sources, math.ceil(count / per_address))
    per_process = min(per_process, limits["nofile_soft"] - CLIENT_RESERVE_FDS)
    processes = max(1, math.ceil(count / per_process))
    return {
        "requested": requested,
        "connections": count,
        "workers": workers,
        "per_worker_room": per_worker,
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
    """Per update and worker (keyed by the update's publication time and the index of the
    worker holding the client's socket): clients that got it, the last time, and the key."""

    def __init__(self) -> None:
        self.by_update: dict[tuple[float, int], list[float]] = {}
        self.recording = False
        self.inits = 0
        self.errors = 0
        self.error_sample = ""

    def update(self, published: float, now: float, worker: int, key: int) -> None:
        seen = self.by_update.get((published, worker))
        if seen is None:
            self.by_update[published, worker] = [1.0, now, float(key)]
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
        "key",
        "opened",
        "subscribed",
        "transport",
        "upgraded",
        "worker",
    )

    def __init__(self, arrivals: Arrivals, handshake: bytes, key: int) -> None:
        self.arrivals = arrivals
        self.key = key  # the index of the key it subscribes to
        self.worker = 0  # the index of the server process holding its socket
        self.buf = b""
        self.upgraded = False
        self.closed = False
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[float] = loop.create_future()
        self.subscribed: asyncio.Future[float] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._handshake = handshake

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = cast(asyncio.Transport, transport)
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
                arrivals.update(float(buf[i + 1 : stop - 2]), time.time(), self.worker, self.key)
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
        self.by_index: dict[int, IdleClient] = {}

    async def connect(
        self,
        url: str,
        indices: list[int],
        sources: list[str],
        names: list[str],
        started: float,
        timeout: float = 120.0,
    ) -> dict[str, Any]:
        """Open connection ``i`` for each of ``indices`` from ``sources[i % len(sources)]``,
        subscribed to ``names[i % len(names)]``. Times are seconds since ``started`` (wall);
        per connection, in the order of ``indices``: its local address (``None`` if it
        failed) and when it was upgraded."""
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
        opened: dict[int, float] = {}
        subscribed: dict[int, float] = {}

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
                key = i % len(names)
                _, client = await loop.create_connection(
                    lambda: IdleClient(self.seen, handshake, key), sock=sock
                )
                self.clients.append(client)
                opened[i] = await asyncio.wait_for(client.opened, timeout)
                assert client.transport is not None
                client.transport.write(requests[names[key]])
                subscribed[i] = await asyncio.wait_for(client.subscribed, timeout)
                self.by_index[i] = client
                return client

        results = await asyncio.gather(*(one(i) for i in indices), return_exceptions=True)
        failed = [r for r in results if not isinstance(r, IdleClient)]
        return {
            "connected": len(results) - len(failed),
            "failed": len(failed),
            "first_failure": repr(failed[0]) if failed else None,
            "opened_s": round(max(opened.values()) - started, 3) if opened else None,
            "subscribed_s": round(max(subscribed.values()) - started, 3) if subscribed else None,
            "errors": self.seen.errors,
            "error_sample": self.seen.error_sample,
            "socknames": [self._sockname(i) for i in indices],
            "opened": [round(opened[i] - started, 3) if i in opened else None for i in indices],
        }

    def _sockname(self, index: int) -> tuple[str, int] | None:
        client = self.by_index.get(index)
        if client is None or client.transport is None or client.closed:
            return None
        host, port = client.transport.get_extra_info("sockname")[:2]
        return host, port

    async def assign(self, indices: list[int], workers: list[int]) -> dict[str, Any]:
        """Tell connection ``indices[j]`` that it is held by server process ``workers[j]``."""
        for index, worker in zip(indices, workers, strict=True):
            client = self.by_index.get(index)
            if client is not None:
                client.worker = worker
        return {}

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
        self.by_index = {}
        await asyncio.sleep(0.5)
        return {"closed": closed}


class Generators:
    """Several load generator processes driven together."""

    def __init__(self, count: int) -> None:
        self.gens = [LoadGen(IdleGenerator) for _ in range(count)]

    def call_all(
        self, command: str, each: list[dict[str, Any]], timeout: float = 900
    ) -> list[dict[str, Any]]:
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

    def share(self, count: int) -> list[list[int]]:
        """Which of connections ``0..count-1`` each generator opens (round robin)."""
        return [list(range(g, count, len(self.gens))) for g in range(len(self.gens))]

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


# ---------------------------------------------------------------------------- the servers


def serving_pids(target: Target) -> list[int]:
    """The processes holding the target's client sockets (its workers), in worker order."""
    if isinstance(target, (WorkersServer, CeilingGroup)):
        return target.workers()
    return [target.pid]


class WorkersServer(BusServer):
    """One server of ``workers`` hub processes on one port (``server.py --role hub --workers
    N``) fed by a provider node through Redis, all on the server core."""

    label = "candlewire"

    def __init__(self, redis_url: str, workers: int, **env: str) -> None:
        super().__init__(redis_url, SERVER_CORE, **env)
        self.redis_url = redis_url
        self.count = workers
        self._workers: list[int] = []

    def start(self) -> None:
        from tests.harness import ServerProcess

        with affinity(SERVER_CORE):
            self.node = ServerProcess(
                self.env, self.tmp / "node.log", args=("--role", "providers")
            ).start(timeout=60)
            self.server = ServerProcess(
                self.env,
                self.tmp / "server.log",
                args=("--role", "hub", "--workers", str(self.count)),
            ).start(timeout=120)
        self.pid = self.server.proc.pid
        self.ws_url = self.server.ws_url
        deadline = time.monotonic() + 60
        while len(self.workers()) < self.count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(self.workers())} of {self.count} hub workers started")
            time.sleep(0.1)
        self.pinned = pin_tree(self.pid, SERVER_CORE) and pin_tree(self.node.proc.pid, SERVER_CORE)

    def workers(self) -> list[int]:
        """Worker 1 (the process started) and the workers it forked, by pid."""
        if len(self._workers) < self.count:
            children = psutil.Process(self.pid).children()
            self._workers = [self.pid, *sorted(c.pid for c in children)]
        return self._workers

    def rss(self) -> int:
        """RSS summed over every process: the hub workers, the node and its provider."""
        node = psutil.Process(self.node.proc.pid)
        pids = [*self.workers(), node.pid, *(c.pid for c in node.children(recursive=True))]
        return sum(rss(pid) for pid in pids)

    def cpu(self) -> dict[str, float]:
        """The hub workers' CPU ("main"); the node and its provider process ("children")."""
        hub = sum(tree_cpu(pid)["main"] for pid in self.workers())
        node = tree_cpu(self.node.proc.pid)
        return {"main": hub, "children": node["main"] + node["children"]}

    def stop(self) -> None:
        super().stop()
        self._forget_bus_keys()

    def _forget_bus_keys(self) -> None:
        """Delete this run's keys (its own ``BUS_PREFIX``) from the shared Redis."""
        import redis

        prefix = self.env["BUS_PREFIX"]
        try:
            client = redis.Redis.from_url(self.redis_url)
            try:
                keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
                if keys:
                    client.delete(*keys)
            finally:
                client.close()
        except redis.RedisError as exc:
            log(f"  could not delete the bus keys {prefix}:*: {exc!r}")


class CeilingGroup(Target):
    """``count`` ceiling servers (``bench/ceiling.py --reuse-port``) sharing one port."""

    label = "ceiling"

    def __init__(self, count: int, keys: int, ping_interval: float) -> None:
        self.count = count
        self.keys = keys
        self.ping_interval = ping_interval
        self.members: list[CeilingServer] = []
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> CeilingGroup:
        with self._stack as stack:
            pings = self.ping_interval
            first = stack.enter_context(
                CeilingServer("broadcast", self.keys, reuse_port=True, ping_interval=pings)
            )
            port = urlsplit(first.ws_url).port or 0
            self.members = [first]
            for _ in range(self.count - 1):
                member = CeilingServer(
                    "broadcast", self.keys, port=port, reuse_port=True, ping_interval=pings
                )
                self.members.append(stack.enter_context(member))
            self._stack = stack.pop_all()
        self.ws_url, self.pid, self.rate_file = first.ws_url, first.pid, first.rate_file
        self.pinned = all(m.pinned for m in self.members)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def workers(self) -> list[int]:
        return [m.pid for m in self.members]

    def set_rate(self, rate: float) -> None:
        for member in self.members:
            member.set_rate(rate)

    def rss(self) -> int:
        return sum(m.rss() for m in self.members)

    def cpu(self) -> dict[str, float]:
        return {"main": sum(m.cpu()["main"] for m in self.members), "children": 0.0}


# ---------------------------------------------------------------------------- measuring


def connect(
    gens: Generators,
    target: Target,
    count: int,
    sources: list[str],
    names: list[str],
    timeout: float = 120.0,
) -> tuple[dict[str, Any], list[tuple[str, int] | None], list[float | None]]:
    """Open ``count`` connections over every generator; accept times and failures; per
    connection index, its local address (``None``: failed) and when it was upgraded."""
    started = time.time()
    share = gens.share(count)
    results = gens.call_all(
        "connect",
        [
            {
                "url": target.ws_url,
                "indices": s,
                "sources": sources,
                "names": names,
                "started": started,
                "timeout": timeout,
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
    socknames: list[tuple[str, int] | None] = [None] * count
    opened: list[float | None] = [None] * count
    for indices, result in zip(share, results, strict=True):
        for j, i in enumerate(indices):
            name = result["socknames"][j]
            socknames[i] = tuple(name) if name else None
            opened[i] = result["opened"][j]
    return out, socknames, opened


def locate(gens: Generators, target: Target, socknames: list[tuple[str, int] | None]) -> list[int]:
    """Which server process holds each connection (-1: none): every worker's established
    TCP sockets, by their remote address, matched with the clients' local addresses; each
    client is told its worker (so the arrivals it records are kept per worker)."""
    pids = serving_pids(target)
    held: dict[tuple[str, int], int] = {}
    if len(pids) > 1:
        for worker, pid in enumerate(pids):
            for conn in psutil.Process(pid).net_connections(kind="tcp4"):
                if conn.raddr and conn.status == psutil.CONN_ESTABLISHED:
                    held[conn.raddr.ip, conn.raddr.port] = worker
    where = [
        -1 if name is None else (held.get(name, -1) if len(pids) > 1 else 0) for name in socknames
    ]
    share = gens.share(len(socknames))
    gens.call_all("assign", [{"indices": s, "workers": [where[i] for i in s]} for s in share])
    return where


def warm_up(gens: Generators, target: Target, sources: list[str], names: list[str]) -> None:
    """A few connections per worker until every worker holds some and answered them: a
    worker still starting gets no connection from the kernel (or queues them unanswered),
    and the others would then take its share."""
    pids = serving_pids(target)
    count = WARM_UP_PER_WORKER * len(pids)
    held: list[int] = []
    for attempt in range(WARM_UP_ATTEMPTS):
        accepted, socknames, _ = connect(gens, target, count, sources, names, WARM_UP_TIMEOUT)
        where = locate(gens, target, socknames)
        gens.same("close")
        held = [where.count(w) for w in range(len(pids))]
        if accepted["connected"] == count and min(held) > 0:
            log(f"  {target.label}: warm-up, connections per worker {held}")
            return
        log(f"  {target.label}: warm-up {attempt + 1}: per worker {held}, {accepted}")
        time.sleep(2.0)
    raise RuntimeError(
        f"{target.label}: a worker got no warm-up connection or did not answer them (per "
        f"worker {held}, pids {pids}); one that failed to start may still hold its listening "
        "socket, and the kernel gives it its share of the connections"
    )


def merged_arrivals(gens: Generators) -> dict[tuple[float, int], list[float]]:
    """Every generator's arrivals per update and worker: clients reached (summed), last time
    (max), key."""
    merged: dict[tuple[float, int], list[float]] = {}
    for result in gens.same("arrivals"):
        for entry, (got, last, key) in result["by_update"].items():
            seen = merged.setdefault(entry, [0.0, 0.0, key])
            seen[0] += got
            seen[1] = max(seen[1], last)
    return merged


def fanout_period(count: int) -> float:
    return max(FANOUT_PERIOD, count * FANOUT_PERIOD_PER_CONNECTION)


def fanout(gens: Generators, target: Target, keys: int, where: list[int]) -> dict[str, Any]:
    """Publish one update per key every ``fanout_period`` until ``FANOUT_ROUNDS`` per key
    reached every subscriber of their key on every worker; per update and worker, the time
    from its publication to the worker's last client; per round (the r-th complete update
    of each worker), the longest of the workers'."""
    subscribers: dict[tuple[int, int], int] = {}
    for i, worker in enumerate(where):
        if worker >= 0:
            subscribers[worker, i % keys] = subscribers.get((worker, i % keys), 0) + 1
    serving = sorted({w for w, _ in subscribers})
    period = fanout_period(len(where))
    gens.same("record", on=True)
    target.set_rate(1 / period)
    deadline = time.monotonic() + (FANOUT_ROUNDS + 1) * period + 30
    complete: dict[int, list[tuple[float, float]]] = {}
    merged: dict[tuple[float, int], list[float]] = {}
    while time.monotonic() < deadline:
        time.sleep(0.5)
        merged = merged_arrivals(gens)
        complete = {w: [] for w in serving}
        for (published, worker), (got, last, key) in merged.items():
            if got >= subscribers.get((worker, int(key)), 1):
                complete[worker].append((published, 1000 * (last - published)))
        if all(len(c) >= FANOUT_ROUNDS * keys for c in complete.values()):
            break
    target.set_rate(0)
    gens.same("record", on=False)
    per_worker: dict[int, list[float]] = {}
    for worker, updates in complete.items():
        per_worker[worker] = [round(ms, 1) for _, ms in sorted(updates)][: FANOUT_ROUNDS * keys]
    rounds = min((len(t) for t in per_worker.values()), default=0)
    overall = [max(t[r] for t in per_worker.values()) for r in range(rounds)]
    return {
        "period_s": period,
        "updates": len({published for published, _ in merged}),
        "complete": rounds,
        "last_client_ms": overall,
        "last_client_ms_median": median(overall),
        "per_worker_ms": {w: t for w, t in per_worker.items()},
        "per_worker_ms_median": {w: median(t) for w, t in per_worker.items()},
    }


def median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def measure(
    gens: Generators, target: Target, count: int, sources: list[str], names: list[str]
) -> dict[str, Any]:
    pids = serving_pids(target)
    if len(pids) > 1:
        warm_up(gens, target, sources, names)
    time.sleep(1.0)
    rss_before, slab_before, tcp_before = target.rss(), slab_bytes(), tcp_buffer_pages()
    worker_rss_before = [rss(pid) for pid in pids]
    accepted, socknames, opened = connect(gens, target, count, sources, names)
    log(
        f"  {target.label}: {accepted['connected']:,} connected, upgraded in "
        f"{accepted['opened_s']} s, subscribed in {accepted['subscribed_s']} s "
        f"({accepted['failed']} failed {accepted['first_failure'] or ''})"
    )
    where = locate(gens, target, socknames)
    time.sleep(2.0)
    rss_after, slab_after, tcp_after = target.rss(), slab_bytes(), tcp_buffer_pages()
    worker_rss_after = [rss(pid) for pid in pids]
    connected = max(1, accepted["connected"])
    slab = {
        name: slab_after.get(name, 0) - slab_before.get(name, 0)
        for name in set(slab_after) | set(slab_before)
    }
    slab_top = sorted(((v, k) for k, v in slab.items() if v > 0), reverse=True)[:6]
    spread = fanout(gens, target, len(names), where)
    log(f"  {target.label}: fan-out to the last client {spread['last_client_ms']} ms")
    gens.same("close")
    workers = []
    for w, pid in enumerate(pids):
        held = where.count(w)
        upgraded = [t for t, at in zip(opened, where, strict=True) if at == w and t is not None]
        grown = worker_rss_after[w] - worker_rss_before[w]
        workers.append(
            {
                "worker": w + 1,
                "pid": pid,
                "connections": held,
                "rss_before_mb": round(worker_rss_before[w] / 2**20, 1),
                "rss_after_mb": round(worker_rss_after[w] / 2**20, 1),
                "kb_per_connection": round(grown / max(1, held) / 1024, 2),
                "upgraded_s": max(upgraded) if upgraded else None,
                "fanout_ms_median": spread["per_worker_ms_median"].get(w),
            }
        )
    return {
        **accepted,
        "processes": len(pids),
        "unlocated": where.count(-1) - accepted["failed"],
        "rss_before_mb": round(rss_before / 2**20, 1),
        "rss_after_mb": round(rss_after / 2**20, 1),
        "kb_per_connection": round((rss_after - rss_before) / connected / 1024, 2),
        "kernel_slab_kb_per_connection": round(sum(slab.values()) / connected / 1024, 2),
        "kernel_slab_top": {k: round(v / connected) for v, k in slab_top},
        "tcp_buffer_pages": tcp_after - tcp_before,
        "fanout": spread,
        "workers": workers,
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
            accepted, _, _ = connect(gens, server, count, sources, names)
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
    layout = plan(args.connections, args.sources, args.per_process, args.workers, limits)
    count, sources = layout["connections"], layout["sources"]
    names = symbol_names(args.keys)
    processes = "one server process" if args.workers == 1 else f"{args.workers} worker processes"
    log(
        f"connections: {count:,} idle subscribed connections of {args.connections:,} requested, "
        f"on {processes}, from {len(sources)} source addresses in {layout['processes']} load "
        f"generator processes"
    )
    log(f"  {kernel_line(limits)}")
    if layout["short_because"]:
        log(f"  fewer than requested because of {layout['short_because']}")
    env = {**server_env(args.keys, count), "WS_PING_INTERVAL": str(args.ping_interval)}
    ceiling = None
    breakdown = None
    load = {"start": loadavg()}
    ours_target: OurServer = (
        OurServer(**env) if args.workers == 1 else WorkersServer(args.redis, args.workers, **env)
    )
    with generators(layout["processes"]) as gens:
        with ours_target as server:
            ours = measure(gens, server, count, sources, names)
        load["after_ours"] = loadavg()
        if not args.no_ceiling:
            with ceiling_target(args.workers, args.keys, args.ping_interval) as c:
                ceiling = measure(gens, c, count, sources, names)
            load["after_ceiling"] = loadavg()
        if args.breakdown:
            try:
                breakdown = heap_breakdown(gens, min(args.breakdown, count), env, sources, names)
            except (RuntimeError, TimeoutError) as exc:  # the figures above still count
                log(f"  the traced run failed: {exc!r}"[:2000])
                breakdown = {"failed": repr(exc)[:2000]}
    row = {
        "connections": count,
        "workers": args.workers,
        "ping_interval_s": args.ping_interval,
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
        "loadavg": load,
        "limits": limits,
        "plan": layout,
        "ours": ours,
        "ceiling": ceiling,
        "projection": projection(ours, count),
        "breakdown": breakdown,
        "machine": machine(),
    }


def ceiling_target(workers: int, keys: int, pings: float) -> CeilingServer | CeilingGroup:
    if workers == 1:
        return CeilingServer("broadcast", keys, ping_interval=pings)
    return CeilingGroup(workers, keys, pings)


COLUMNS = [
    ("connections", "connections", ",d"),
    ("processes", "workers", "d"),
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


WORKER_COLUMNS = [
    ("worker", "worker", "d"),
    ("pid", "pid", "d"),
    ("connections", "connections", ",d"),
    ("RSS before MB", "rss_before_mb", ".0f"),
    ("RSS after MB", "rss_after_mb", ".0f"),
    ("KB/conn", "kb_per_connection", ".1f"),
    ("all upgraded s", "upgraded_s", ".1f"),
    ("fan-out ms (median)", "fanout_ms_median", ".0f"),
]


def report(figures: dict[str, Any]) -> None:
    row, layout, limits = figures["row"], figures["plan"], figures["limits"]
    print(
        f"idle subscribed connections: server RSS per connection (target <= {TARGET_KB:g} KB), "
        "time until all were upgraded, one update to all of them (publication to last client)"
    )
    print(table(COLUMNS, [row]))
    print(kernel_line(limits))
    print(
        f"from {len(layout['sources'])} source addresses ({', '.join(layout['sources'])}) in "
        f"{layout['processes']} load generator processes; keep-alive pings "
        + (f"every {row['ping_interval_s']:g} s" if row["ping_interval_s"] else "off")
        + "; load average "
        + ", ".join(f"{k} {' '.join(map(str, v))}" for k, v in figures["loadavg"].items())
    )
    if row["workers"] > 1:
        print(
            f"{row['workers']} worker processes of one server on one port (SO_REUSEPORT): one "
            f"process may hold at most {layout['per_worker_room']:,} connections (the open-file "
            "limit). Candlewire: its hub workers, fed by a provider node through Redis (RSS "
            "summed over every process); ceiling: as many bench/ceiling.py processes, each with "
            "its own source. Per worker:"
        )
        for label, measured in (("candlewire", figures["ours"]), ("ceiling", figures["ceiling"])):
            if measured:
                print(f"{label}:")
                print(table(WORKER_COLUMNS, measured["workers"]))
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
    if row["ours_connected"] < PROJECTED:
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
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes on one port (SO_REUSEPORT; > 1: hub workers fed through Redis)",
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="with --workers > 1")
    parser.add_argument(
        "--ping-interval",
        type=float,
        default=20.0,
        help="keep-alive ping to every socket every this many seconds, both servers; 0: none",
    )
    args = parser.parse_args()
    figures = run(args)
    report(figures)
    emit("connections", figures)


if __name__ == "__main__":
    main()
