"""What ``server.py`` runs: the provider processes and the FastAPI WebSocket hub (uvicorn).

``server.py`` is only the command (and re-exports these names): the provider processes are
started with ``spawn``, which imports the script that started the server in every one of
them, and this module's imports (uvicorn, the hub's front door, the workers) cost each
provider process about 0.2 s of CPU it never used.

The command line is server.py's. ``--workers N`` (``--role hub``): this process is worker
1 and forks the others, starts again one that exits, and stops them when it stops; they
stop when it dies (``backend.workers``).

It also owns the hub's garbage-collection policy (:func:`tune_gc`, :class:`Collector`,
:class:`GcPauses`): rare young collections; a collection of the objects made since the
last one shortly after clients left, so what departed clients leave in reference cycles is
freed, with survivors frozen so that no collection walks the bar cache; and a full
collection every few minutes. Every pause is recorded; the figures are logged at shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from typing import TYPE_CHECKING, NoReturn

import uvicorn

from backend import logs
from backend.access.frontdoor import AcceptErrors, guarded_http
from backend.errors import ConfigError
from backend.settings import Settings, load_settings
from backend.workers import (
    WorkerKeeper,
    follow_parent,
    fork_workers,
    hub_run,
    stop_workers,
    worker_of,
)
from backend.ws import reading
from backend.ws.writers import drop_open_sockets

if TYPE_CHECKING:
    from types import FrameType

    from backend.ws.entrance import Entrance

logger = logging.getLogger("candlewire.server")

STARTUP_FAILED = 3  # the exit code of a server whose app did not start
HELD: list[object] = []  # open for the process's life: the DB's lock file (lock_database)
GC_YOUNG_THRESHOLD = 20_000
GC_CHECK_SECONDS = 1.0
# What survives a collection is frozen (gc.freeze) out of later ones: the bar cache alone is
# hundreds of thousands of tuples that every collection including it would visit (~50-300 ms
# for 500,000 bars). After clients left, a collection of what is not frozen runs, at most
# every FULL_GC_MIN_SECONDS; every FULL_GC_MAX_SECONDS everything is unfrozen and collected,
# for cycles that were frozen while still alive.
FULL_GC_MIN_SECONDS = 5.0
FULL_GC_MAX_SECONDS = 600.0
GC_PAUSES_KEPT = 10_000  # per generation, for the percentiles logged at shutdown


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the Candlewire market-data server.")
    parser.add_argument("--host", help="interface to listen on (default: HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: PORT or 8000; 0 = any free)")
    parser.add_argument("--ssl-certfile", help="serve TLS with this certificate chain (PEM)")
    parser.add_argument("--ssl-keyfile", help="the certificate's private key (PEM)")
    parser.add_argument(
        "--role",
        choices=("all", "hub", "providers"),
        default="all",
        help="all (default): hub and providers; hub or providers need BUS_URL (Scale-out)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="hub processes sharing the port (--role hub)"
    )
    # A worker started again by worker 1 (backend.workers.WorkerKeeper): PARENT:INDEX.
    parser.add_argument("--worker-of", type=worker_of, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """The hub's listening socket. It names its protocol (TCP): asyncio disables Nagle's
    algorithm (``TCP_NODELAY``) only on sockets whose ``proto`` is ``IPPROTO_TCP``, and an
    accepted socket inherits it. Without it every client socket kept Nagle on, and a frame
    written while an earlier one was unacknowledged waited for the client's delayed ACK:
    up to 40 ms, the latency floor of issue 17."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # hub workers share the port; the kernel spreads connections
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def uvicorn_config(
    settings: Settings, entrance: Entrance | None = None, **tls: str | None
) -> uvicorn.Config:
    """uvicorn's configuration of the hub; ``entrance``: the ASGI app (``Entrance``) to serve,
    made here when not given; ``tls``: uvicorn's ``ssl_certfile`` / ``ssl_keyfile``."""
    if entrance is None:
        entrance = make_entrance(settings)
    config = uvicorn.Config(
        entrance,
        loop="auto",
        # uvicorn's websockets-sansio protocol (backend/ws/writers.py writes to it directly),
        # reading on while each connection's reader keeps up (backend/ws/reading.py)
        ws=reading.protocol_class() or "websockets-sansio",
        ws_max_size=settings.MAX_FRAME_BYTES,
        # Keep-alive pings cost the hub CPU per socket: at 100,000 sockets the 20 s default
        # is 5,000 pings (and pongs) a second (README, "Connections per hub").
        ws_ping_interval=settings.WS_PING_INTERVAL or None,
        ws_ping_timeout=settings.WS_PING_TIMEOUT or None,
        # The front door (README, "Security"): heads complete within a timeout and below a
        # size (frontdoor.GuardedHttp, what uvicorn lacks), idle keep-alives closed, and at
        # most so many connections and tasks at once (503 beyond).
        http=guarded_http(settings.HTTP_HEADER_TIMEOUT, settings.HTTP_MAX_HEADER_BYTES),
        h11_max_incomplete_event_size=settings.HTTP_MAX_HEADER_BYTES,
        timeout_keep_alive=settings.HTTP_KEEP_ALIVE_SECONDS,
        limit_concurrency=settings.HTTP_LIMIT_CONCURRENCY or settings.MAX_CLIENTS + 2_000,
        lifespan="on",
        log_level=settings.LOG_LEVEL.lower(),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        # X-Forwarded-* from FORWARDED_ALLOW_IPS (uvicorn's default: 127.0.0.1) are applied
        # by the entrance, with uvicorn's own code but no coroutine kept per connection.
        proxy_headers=False,
        forwarded_allow_ips=settings.FORWARDED_ALLOW_IPS or None,
        **tls,  # type: ignore[arg-type]
    )
    entrance.trust_proxies(config.forwarded_allow_ips)
    return config


def make_entrance(
    settings: Settings,
    role: str = "all",
    worker: int = 1,
    workers: int = 1,
    run: str | None = None,
) -> Entrance:
    """The hub's ASGI app; ``worker`` of ``workers``: which hub process of ``--workers`` this
    is (each evaluates its share of the stored alerts), in ``run`` (``hub_run``)."""
    from backend.app import create_app
    from backend.hub.alerting import Worker
    from backend.ws.entrance import Entrance

    which = Worker(worker, workers) if run is None else Worker(worker, workers, run)
    return Entrance(create_app(settings, role, which))


def tune_gc() -> None:
    """Fewer, cheaper garbage collections in the hub: a full collection of a process holding
    a large bar cache took 25-70 ms of CPU, stalling every client at once (the p99 latency).
    Objects that exist at startup (modules, the app) are frozen out of collections, and
    young collections run every 20,000 net allocations instead of 700. With these
    thresholds an old-generation collection almost never comes by itself:
    :class:`Collector` runs them, after clients left (whose objects uvicorn and asyncio
    keep in reference cycles) and every few minutes."""
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)
    gc.freeze()


class GcPauses:
    """The pause of every collection, by generation (a ``gc.callbacks`` entry); with
    ``log_over`` > 0 (``LOOP_STALL_LOG_MS``), each pause that long is logged, so that a stall
    the loop-stall probe logs can be told from a collection."""

    def __init__(self, log_over: float = 0.0) -> None:
        self.pauses: dict[int, deque[float]] = {g: deque(maxlen=GC_PAUSES_KEPT) for g in range(3)}
        self.counts = dict.fromkeys(range(3), 0)
        self.log_over = log_over
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        pause = time.perf_counter() - self._started
        self.pauses[generation].append(pause)
        self.counts[generation] += 1
        if self.log_over and pause >= self.log_over:
            logger.warning(
                "gc: a generation %d collection paused the hub %.1f ms (%d unreachable)",
                generation,
                pause * 1000,
                info.get("collected", 0),
            )

    def summary(self) -> str:
        """``gen0 n=.. p50=..ms max=..ms; ...`` (p50 and max of the last pauses kept)."""
        parts = []
        for generation, kept in self.pauses.items():
            if not kept:
                parts.append(f"gen{generation} n=0")
                continue
            ordered = sorted(kept)
            p50, top = ordered[(len(ordered) - 1) // 2] * 1000, ordered[-1] * 1000
            parts.append(
                f"gen{generation} n={self.counts[generation]} p50={p50:.2f}ms max={top:.2f}ms"
            )
        return "; ".join(parts)


class Collector:
    """The hub's old-generation collections, each timed and logged at DEBUG: what is not
    frozen, ``FULL_GC_MIN_SECONDS`` after clients left (at most that often); everything,
    every ``FULL_GC_MAX_SECONDS``. Survivors are frozen each time."""

    def __init__(self, entrance: Entrance) -> None:
        self.entrance = entrance  # counts the WebSocket clients that left (``departures``)
        self.seen = 0
        self.last = self.last_full = time.monotonic()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(GC_CHECK_SECONDS)
            self.check(time.monotonic())

    def check(self, now: float) -> None:
        departures = self.entrance.departures
        full = now - self.last_full >= FULL_GC_MAX_SECONDS
        if not full and (departures == self.seen or now - self.last < FULL_GC_MIN_SECONDS):
            return
        started = time.perf_counter()
        if full:
            gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        logger.debug(
            "gc: %s collection (%d clients left since the last): %d unreachable, %.1f ms",
            "full" if full else "unfrozen objects'",
            departures - self.seen,
            found,
            (time.perf_counter() - started) * 1000,
        )
        self.seen = departures
        self.last = time.monotonic()
        if full:
            self.last_full = self.last


class HubServer(uvicorn.Server):
    """uvicorn's server with the hub's collector running beside it; it logs the collection
    pauses as it shuts down (uvicorn then re-raises the signal that stopped it, so nothing
    after ``serve()`` runs)."""

    def __init__(
        self,
        config: uvicorn.Config,
        collector: Collector,
        pauses: GcPauses,
        keeper: WorkerKeeper | None = None,
    ) -> None:
        super().__init__(config)
        self.collector = collector
        self.pauses = pauses
        self.keeper = keeper  # the other hub workers (--workers): kept running, stopped with us
        self._collecting: asyncio.Task[None] | None = None
        self.interrupted = False  # stopped by SIGINT (Ctrl+C)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGINT:
            self.interrupted = True
        super().handle_exit(sig, frame)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(AcceptErrors())  # out of descriptors: one line, not a flood
        await super().startup(sockets)
        self._collecting = asyncio.get_running_loop().create_task(self.collector.run())
        self._collecting.add_done_callback(_log_failure)
        if self.keeper is not None:
            self.keeper.run()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        dropped = drop_open_sockets(list(self.server_state.connections))
        if dropped:
            logger.info("dropped %d WebSocket connections for their clients to reconnect", dropped)
        if self._collecting is not None:
            self._collecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collecting
        await super().shutdown(sockets)
        if self.keeper is not None:
            await asyncio.to_thread(stop_workers, self.keeper.stop())
        logger.info("gc pauses: %s", self.pauses.summary())


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("the garbage collector task failed", exc_info=task.exception())


def serve_node(settings: Settings, sock: socket.socket) -> int:
    """``--role providers``: the provider node's small app (``/health``, ``/metrics``), behind
    the same access rules and front door as the hub."""
    from backend.app import create_node_app

    config = uvicorn.Config(
        create_node_app(settings),
        loop="asyncio",
        # The hub's front door (README, "Security"): heads in time and below a size.
        http=guarded_http(settings.HTTP_HEADER_TIMEOUT, settings.HTTP_MAX_HEADER_BYTES),
        h11_max_incomplete_event_size=settings.HTTP_MAX_HEADER_BYTES,
        timeout_keep_alive=settings.HTTP_KEEP_ALIVE_SECONDS,
        lifespan="on",
        log_level=settings.LOG_LEVEL.lower(),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {k: v for k, v in (("HOST", args.host), ("PORT", args.port)) if v is not None}
    try:
        settings = load_settings(**overrides)
        from backend.app import (
            check_access,
            check_database,
            check_plugins,
            check_role,
            lock_database,
        )

        check_role(settings, args.role)
        check_access(settings)
        check_database(settings, args.role)
        check_plugins(settings, args.role, args.workers)
        if args.worker_of is None:  # a worker started again alone is of the run holding it
            HELD.append(lock_database(settings, args.role))
    except ConfigError as exc:  # before logging is set up: redact here
        redact = logs.RedactSecrets(logs.environment_secrets()).redact
        print(f"candlewire: {redact(str(exc))}", file=sys.stderr)
        return 2
    if args.workers < 1 or (args.workers > 1 and args.role != "hub"):
        print("candlewire: --workers N (N >= 1) is for --role hub", file=sys.stderr)
        return 2
    secrets = [*logs.secrets_of(settings), *settings.api_keys()]
    logs.configure(settings.LOG_LEVEL, secrets=secrets)
    try:
        sock = bind(settings.HOST, settings.PORT, reuse_port=args.role == "hub")
    except OSError as exc:
        print(
            f"candlewire: cannot listen on {settings.HOST}:{settings.PORT}: {exc}", file=sys.stderr
        )
        return 2
    host, port = sock.getsockname()[:2]
    if args.worker_of is not None:  # a hub worker started again by worker 1
        parent, index = args.worker_of
        follow_parent(parent)
        return serve_hub(settings, args, sock, index, None, hub_run(parent))
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if args.ssl_certfile else "http"
    print(f"Candlewire listening on {scheme}://{shown}:{port}", flush=True)
    if args.role == "providers":
        return serve_node(settings, sock)
    parent, workers, index = fork_workers(args.workers) if args.workers > 1 else (None, [], 1)
    if parent is not None:  # a worker: its own socket on the same port
        sock.close()
        sock = bind(settings.HOST, port, reuse_port=True)
        follow_parent(parent)
    keeper = None
    if workers:
        keeper = WorkerKeeper(workers, port, sys.argv[1:] if argv is None else argv)
    return serve_hub(settings, args, sock, index, keeper, hub_run(parent or os.getpid()))


def serve_hub(
    settings: Settings,
    args: argparse.Namespace,
    sock: socket.socket,
    index: int,
    keeper: WorkerKeeper | None,
    run: str,
) -> int:
    """Hub worker ``index`` (1 when there is one) of the hub's ``run`` on ``sock``; worker
    1 keeps the others running with ``keeper``."""
    entrance = make_entrance(settings, args.role, index, args.workers, run)
    pauses = GcPauses(settings.LOOP_STALL_LOG_MS / 1000)
    tls = {"ssl_certfile": args.ssl_certfile, "ssl_keyfile": args.ssl_keyfile}
    config = uvicorn_config(settings, entrance, **tls)
    server = HubServer(config, Collector(entrance), pauses, keeper)
    tune_gc()
    gc.callbacks.append(pauses)
    # The standard asyncio loop, deliberately: under uvloop the provider pipes read with
    # add_reader stalled now and then (a provider killed for "no heartbeat").
    try:
        asyncio.run(server.serve(sockets=[sock]))
    except SystemExit:  # uvicorn's way to say the app's startup failed
        if server.started:
            raise
        startup_failed(sock, keeper.stop() if keeper is not None else [])
    # uvicorn re-raises the SIGINT that stopped it (KeyboardInterrupt: 130 from run()), but
    # through the handler it found at its start: one that does not raise (a SIGINT ignored
    # since the process started) left a Ctrl+C'd server exiting 0 (seen once in a test run)
    return 130 if server.interrupted else 0


def startup_failed(sock: socket.socket, workers: list[int]) -> NoReturn:
    """The app's startup failed (uvicorn logged why): exit now, non-zero. Leaving it to the
    interpreter would keep the process running, held by threads the startup had opened (the
    database's), and a hub worker would keep its listening socket, so the kernel would go on
    giving it its share of new connections, which nobody answers. The provider processes it
    started exit with it (they follow their parent)."""
    logger.error("the hub did not start; exiting")
    sock.close()
    stop_workers(workers)
    logging.shutdown()
    os._exit(STARTUP_FAILED)


def run() -> int:
    """``python server.py``: :func:`main`, and 130 after Ctrl+C."""
    try:
        return main()
    except KeyboardInterrupt:  # Ctrl+C: the shutdown ran; uvicorn re-raises the signal after
        return 130  # it (128 + SIGINT, as a shell reports it), without a traceback
