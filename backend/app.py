"""The FastAPI application: ``create_app(settings)`` and its lifespan.

The lifespan owns all state: it opens the symbol index and the bar store, builds the
indicator registry (built-ins, ``INDICATOR_REGISTRY`` and ``EXTRA_INDICATORS``: a broken
entry stops the start-up), starts the hub (and with it the provider processes), and stops
them in order on shutdown.

Access control (``backend.access``) wraps every route: :class:`AccessMiddleware` inside the
CORS policy (so a refusal still carries CORS headers), the hub's hooks charge upstream
history calls to their caller and check what a caller may read. Large answers are gzipped
for clients that accept it (:mod:`backend.api.compression`). FastAPI's validation
errors get the documented shape (400 ``{"error", "message"}``); ``API_DOCS=false`` turns
off ``/docs``, ``/redoc`` and ``/openapi.json``.

Roles (``server.py --role``, README "Scale-out"): ``all`` without ``BUS_URL`` is one process
tree (the hub supervises the provider processes); with ``BUS_URL`` the hub reaches its
providers over Redis (``backend.bus.hubside``) and, for ``all``, a provider node
(``backend.bus.node``) runs beside it. ``hub`` is the hub alone; ``providers`` is
:func:`create_node_app`: a provider node serving ``/health`` and ``/metrics`` only, behind the
same access rules as the hub's (``AUTH``, ``METRICS_PUBLIC``, the request rate).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import WebSocketRoute

from backend import __version__
from backend.access.guard import Access, AccessMiddleware
from backend.access.identity import current_client, may_read
from backend.api.compression import Compression
from backend.api.cors import add_cors
from backend.api.head import HeadAsGet
from backend.api.openbb import router as openbb_router
from backend.api.page_files import PageFiles
from backend.api.rest import router
from backend.api.udf import router as udf_router
from backend.api.udf_quotes import router as udf_quotes_router
from backend.errors import ConfigError, StorageError
from backend.history.store import BarStore, check_openable, hold_exclusive
from backend.hub.alerting import Worker
from backend.hub.handles import ProviderSetFactory
from backend.hub.hub import Hub
from backend.hub.metrics import CONTENT_TYPE as METRICS_TYPE
from backend.hub.metrics import Metrics
from backend.indicators.registry import build_indicators
from backend.plugins import locate_class
from backend.runtime.supervisor import Supervisor
from backend.settings import Settings, jwks_url
from backend.symbols.index import SymbolIndex
from backend.ws import reading
from backend.ws.endpoint import serve_connection

if TYPE_CHECKING:  # the bus (and redis-py) is imported only by a server that uses it
    from backend.bus.node import ProviderNode

logger = logging.getLogger(__name__)


def _project_root() -> Path:
    """The folder holding ``frontend/``: the source tree, or the working folder when the
    package was installed (``pip install .``) and is run from a checkout."""
    source_tree = Path(__file__).resolve().parent.parent
    return source_tree if (source_tree / "frontend").is_dir() else Path.cwd()


ROOT = _project_root()
FRONTEND = ROOT / "frontend"
CHARTS_DIST = ROOT / "node_modules" / "lightweight-charts" / "dist"


ROLES = ("all", "hub", "providers")


def check_role(settings: Settings, role: str) -> None:
    """``ConfigError`` for a role that cannot run with these settings."""
    if role not in ROLES:
        raise ConfigError(f"--role {role!r}: must be one of {', '.join(ROLES)}")
    if role != "all" and not settings.BUS_URL:
        raise ConfigError(f"--role {role} needs BUS_URL (redis://host:port/db)")
    if role in ("all", "providers"):  # the providers run in this process tree
        settings.check_csv_folder()
    runs_providers = role == "providers" or (role == "all" and bool(settings.BUS_URL))
    no_key = not settings.POLYGON_API_KEY.get_secret_value()
    if runs_providers and "polygon" in settings.PROVIDERS and no_key:
        raise ConfigError("POLYGON_API_KEY is required when the polygon provider is enabled")


def check_access(settings: Settings) -> None:
    """``ConfigError`` naming ``JWT_PUBLIC_KEY`` when it is a JWKS URL that gives no key
    now (cannot be reached, an HTTP error, not a JWKS): found at the start, not at the first
    login. The app fetches again when a token needs it (``backend.access.jwks``)."""
    url = jwks_url(settings.JWT_PUBLIC_KEY)
    if settings.AUTH != "jwt" or not url:
        return
    from backend.access.jwks import fetch_keys

    try:
        fetch_keys(url)
    except ValueError as exc:
        raise ConfigError(f"JWT_PUBLIC_KEY: {exc}") from None


def check_database(settings: Settings, role: str) -> None:
    """``ConfigError`` naming ``DB`` when a role that runs a hub cannot open it (a folder, a
    file that is not SQLite, a folder that cannot be made): the start stops with that line
    instead of a traceback from the app's startup."""
    if role == "providers":
        return  # a provider node keeps no bars
    try:
        check_openable(settings.DB)
    except StorageError as exc:
        raise ConfigError(f"DB: {exc}") from None


DAMAGED_ADVICE = (
    "stop the server and restore the file from a backup, or rescue what can be read"
    " (sqlite3 OLD '.recover' | sqlite3 NEW, then DB=NEW), or move it away and run"
    " populate.py (the stored bars and alerts are then lost)"
)


async def _open_database(settings: Settings) -> tuple[SymbolIndex, BarStore]:
    """The symbol index and the bar store of ``DB``; ``ConfigError`` naming ``DB`` and what
    to do when it opens but cannot be read (a damaged file, "database disk image is
    malformed", found by the first reads: :func:`check_database` only opens it), so the
    start stops with that line (``backend.logs.StartupRefusals``), not a traceback."""
    try:
        symbols = await SymbolIndex.open(settings.DB, sources=settings.PROVIDERS)
    except StorageError as exc:
        raise _unreadable(settings, exc) from None
    try:
        store = await BarStore.open(settings.DB, max_queued=settings.CACHE_MAX_BARS)
    except StorageError as exc:
        await symbols.close()
        raise _unreadable(settings, exc) from None
    return symbols, store


def _unreadable(settings: Settings, exc: StorageError) -> ConfigError:
    return ConfigError(
        f"DB: {settings.DB} cannot be read ({exc.__cause__ or exc}): {DAMAGED_ADVICE}"
    )


# A server stopped a moment ago may still hold the DB: its hub workers stop within a poll
# and a graceful shutdown (5 s) of their parent's death.
LOCK_WAIT_SECONDS = 10.0


def lock_database(settings: Settings, role: str) -> TextIO | None:
    """Hold ``DB`` for this server's hub (``<DB>.lock``, see
    :func:`~backend.history.store.hold_exclusive`); ``ConfigError`` naming ``DB`` when
    another server holds it. Two servers on one file each evaluated every stored alert (a
    crossing fired twice: two webhook calls, two pushes) and each resumed the other's
    pending deliveries. A provider node keeps no bars, and the hubs of a deployment over
    the bus (``BUS_URL``) are left as they were (several on one machine may have been
    started on one file): None. Keep the file open."""
    if role == "providers" or settings.BUS_URL:
        return None
    try:
        return hold_exclusive(settings.DB, LOCK_WAIT_SECONDS)
    except StorageError as exc:
        raise ConfigError(f"DB: {exc}") from None


def check_plugins(settings: Settings, role: str, workers: int = 1) -> None:
    """``ConfigError`` naming the variable when an ``EXTRA_PROVIDERS`` entry of an enabled
    provider, or an ``EXTRA_INDICATORS`` entry (for a role that runs a hub), cannot be
    loaded: the start stops with that message, instead of a provider process that fails and
    restarts for ever, or a hub whose start-up fails with a traceback.

    Provider modules run in their own processes, never in this one: they are only located
    (the module exists and defines the class; :func:`~backend.plugins.locate_class`).
    Indicators are loaded here when this process is the hub; before ``--workers N`` forks
    them they are only located too (each worker imports them itself)."""
    registry = settings.provider_registry()
    extra = {entry.partition("=")[0].strip() for entry in settings.EXTRA_PROVIDERS}
    for key in settings.PROVIDERS if role in ("providers", "all") else ():
        if key in extra:
            try:
                locate_class(registry[key], "provider")
            except ConfigError as exc:
                raise ConfigError(f"EXTRA_PROVIDERS: {key}: {exc}") from None
    if role == "providers":
        return
    try:
        if workers > 1:
            for entry in settings.EXTRA_INDICATORS:
                locate_class(entry.partition("=")[2].strip(), "indicator")
        else:
            build_indicators(settings.EXTRA_INDICATORS)
    except ConfigError as exc:
        message = str(exc)
        if not message.startswith("EXTRA_INDICATORS"):
            message = f"EXTRA_INDICATORS: {message}"
        raise ConfigError(message) from None


def _guard(hub: Hub, access: Access, settings: Settings) -> None:
    """Connect the hub to access control (``backend.access``): budgets, limits, identity."""
    hub.admit_fetch = access.fair.admit_fetch
    hub.may_read = may_read
    hub.admit_frame = access.fair.frame_wait
    hub.admit_subscription = access.subscriptions.admit
    hub.subscription_limit = access.subscriptions.limit
    hub.credential_client = current_client if settings.AUTH != "none" else None
    access.subscriptions.count = lambda connection: len(hub.subs.keys_of(connection))
    hub.metrics.counter(
        "candlewire_upstream_refusals_total",
        lambda: access.fair.refused,
        "history calls refused by the fair-use budget since the start",
    )
    hub.metrics.gauge(
        "candlewire_rate_limited_clients",
        access.fair.memory.keys,
        "clients with requests or upstream calls inside their rate-limit window",
    )


def create_app(settings: Settings, role: str = "all", worker: Worker | None = None) -> FastAPI:
    """Build the hub's app (``role`` ``all`` or ``hub``; ``worker``: which of the hub
    workers of ``--workers N`` this is, for the alerts); nothing starts until the lifespan
    runs."""
    check_role(settings, role)
    bus = bool(settings.BUS_URL)  # the hub reaches its providers over Redis

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        node = await _start_node(settings) if bus and role == "all" else None
        symbols, store = await _open_database(settings)
        indicators = build_indicators(settings.EXTRA_INDICATORS)
        logger.info("%d indicators", len(indicators))
        providers = _bus_providers() if bus else Supervisor
        hub = Hub(settings, symbols, Metrics(), store, indicators, providers=providers)
        _guard(hub, access, settings)
        hub.metrics.counter(
            "candlewire_read_pauses_total",
            lambda: reading.pauses.pauses,
            "times a client's socket stopped being read until its reader caught up "
            "(a message waiting and another arriving, or a large one)",
        )
        if isinstance(hub.supervisor, Supervisor):  # the provider processes are this hub's
            _process_metrics(hub.metrics, hub.supervisor)
        app.state.hub = hub
        await hub.start()
        await hub.alerting.open(settings.DB, worker)
        logger.info("hub started with providers: %s", ", ".join(settings.PROVIDERS))
        try:
            yield
        finally:
            await hub.stop()
            await store.close()
            await symbols.close()
            if node is not None:
                await node.stop()
            logger.info("hub stopped")

    access = Access(settings)
    docs = settings.API_DOCS
    app = FastAPI(
        title="Candlewire",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.access = access
    app.include_router(router)
    app.include_router(openbb_router)
    app.include_router(udf_router)
    app.include_router(udf_quotes_router)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    _add_middleware(app, access, settings)
    _warn_if_open(settings)

    async def websocket_endpoint(websocket: WebSocket) -> None:
        await serve_connection(websocket, websocket.app.state.hub)

    # Plain Starlette routes: FastAPI's websocket wrapper keeps two exit stacks and a scope
    # copy alive for the whole connection (about 4 KB per idle client) for dependencies we
    # do not use.
    for path in ("/websocket/", "/websocket"):
        app.router.routes.append(WebSocketRoute(path, websocket_endpoint))
    if CHARTS_DIST.is_dir():
        app.mount(
            "/vendor/lightweight-charts",
            PageFiles(directory=CHARTS_DIST),
            name="lightweight-charts",
        )
    if (FRONTEND / "index.html").exists():
        app.mount("/", PageFiles(directory=FRONTEND, html=True), name="frontend")
    return app


def _add_middleware(app: FastAPI, access: Access, settings: Settings) -> None:
    """The hub app's middleware, from the routes out: gzip (inside HEAD-as-GET, so a HEAD
    gets the headers of its GET), HEAD as GET (the routes see a GET), access control, CORS
    (outermost, so a refusal still carries CORS headers)."""
    app.add_middleware(Compression)
    app.add_middleware(HeadAsGet)
    app.add_middleware(AccessMiddleware, access=access)
    add_cors(app, settings)


def _bus_providers() -> ProviderSetFactory:
    """The hub's providers over Redis (``BUS_URL``): :func:`backend.bus.hubside.factory`.
    Imported here, with the bus and redis-py, only by a server that uses them."""
    from backend.bus.hubside import factory

    return factory


async def _start_node(settings: Settings) -> ProviderNode:
    """The provider node of ``--role all`` with ``BUS_URL``: it runs beside the hub."""
    from backend.bus.node import ProviderNode

    node = ProviderNode(settings)
    await node.start()
    return node


def create_node_app(settings: Settings) -> FastAPI:
    """A provider node (``--role providers``): its lifespan runs :class:`ProviderNode`; it
    serves ``/health`` (leases, streamed keys, processes) and ``/metrics`` only."""
    check_role(settings, "providers")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from backend.bus.node import ProviderNode

        node = ProviderNode(settings)
        app.state.node = node
        app.state.metrics = _node_metrics(node)
        await node.start()
        logger.info("provider node started with providers: %s", ", ".join(settings.PROVIDERS))
        try:
            yield
        finally:
            await node.stop()
            logger.info("provider node stopped")

    app = FastAPI(
        title="Candlewire provider node",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    # The hub's rules (README "Security"): /health is a public liveness answer whose
    # details need a key, /metrics needs one unless METRICS_PUBLIC, requests are rate-limited.
    app.add_middleware(HeadAsGet)
    app.add_middleware(AccessMiddleware, access=Access(settings))
    _warn_if_open(settings)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        node: ProviderNode = request.app.state.node
        detail = {"version": __version__, **node.health()}
        return detail if _authenticated(request) else _liveness(detail)

    @app.get("/metrics")
    async def metrics(request: Request) -> PlainTextResponse:
        metrics: Metrics = request.app.state.metrics
        return PlainTextResponse(metrics.render(), media_type=METRICS_TYPE)

    return app


_NODE_COUNTERS = {
    "batches_published": "messages of provider events published to the bus",
    "batches_dropped": "messages of provider events lost because the bus was down",
    "events_dropped": "provider events shed because the bus was not keeping up",
    "history_requests": "history requests the node took from the bus",
    "history_calls": "get_history calls made to the node's providers",
    "leases_acquired": "provider leases this node acquired",
    "leases_lost": "provider leases this node lost",
}


def _process_metrics(metrics: Metrics, supervisor: Supervisor) -> None:
    """Each provider process's resident memory and threads (its own leaks and thread
    pools, which the hub process's figures do not show), and the bar states it merged
    while its reader was behind."""
    metrics.gauge_by(
        "candlewire_provider_memory_bytes",
        "source",
        lambda: {key: float(rss) for key, (rss, _) in supervisor.resources().items()},
        "resident memory of each provider process",
    )
    metrics.gauge_by(
        "candlewire_provider_threads",
        "source",
        lambda: {key: float(n) for key, (_, n) in supervisor.resources().items()},
        "threads of each provider process",
    )
    metrics.counter_by(
        "candlewire_provider_updates_merged_total",
        "source",
        lambda: {key: float(n) for key, n in supervisor.merged().items()},
        "superseded forming-bar states a provider process merged before sending: the process"
        " reading its events was behind",
    )


def _node_metrics(node: ProviderNode) -> Metrics:
    """A provider node's figures: its counters, the bus state, each provider's lease and
    streamed keys."""
    metrics = Metrics()
    for name, help_text in _NODE_COUNTERS.items():
        metrics.counter(
            f"candlewire_bus_{name}_total", partial(node.counters.__getitem__, name), help_text
        )
    metrics.gauge("candlewire_bus_up", lambda: float(node.up), "1 while the bus is reachable")
    metrics.gauge_by(
        "candlewire_bus_lease_held",
        "source",
        lambda: {key: float(lease.active) for key, lease in node.leases.items()},
        "1 while this node holds the provider's lease",
    )
    metrics.gauge_by(
        "candlewire_bus_streams",
        "source",
        lambda: {key: float(len(lease.streaming)) for key, lease in node.leases.items()},
        "keys the provider streams for the hubs",
    )
    _process_metrics(metrics, node.supervisor)
    return metrics


def _authenticated(request: Request) -> bool:
    """Whether the caller showed a valid key (anyone does with ``AUTH=none``)."""
    identity = getattr(request.state, "identity", None)
    return identity is not None and bool(identity.authenticated)


def _liveness(detail: dict[str, Any]) -> dict[str, Any]:
    """What ``/health`` tells a caller without a key: no pids, hosts or node ids."""
    return {"status": detail.get("status"), "version": detail.get("version")}


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 as the documented error: 400 ``{"error", "message"}``, no echo of the
    input."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    problems = [
        f"{'.'.join(str(part) for part in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
        for e in errors[:5]
    ]
    message = "; ".join(problems) or "invalid request"
    return JSONResponse({"error": "invalid_field", "message": message}, status_code=400)


HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (an unknown path, a wrong method) as the documented error,
    ``{"error", "message"}`` (and FastAPI's ``detail``, which some clients read)."""
    if not isinstance(exc, StarletteHTTPException):
        raise exc
    message = str(exc.detail)
    body = {"error": HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")}
    body |= {"message": message, "detail": message}
    if request.url.path.startswith("/udf/"):  # the datafeed adapter reads errmsg, not status
        body |= {"s": "error", "errmsg": f"{message}: {request.url.path}"}
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


INTERNAL = "internal error; the server's log has the details"


async def _internal_error(request: Request, exc: Exception) -> Response:
    """A bug in a route answers as every other error does, ``{"error", "message"}`` (and the
    datafeed's ``s``/``errmsg`` under ``/udf/``), not a bare text 500 that clients cannot
    read. Starlette sends this, then raises ``exc`` on: the server logs its traceback."""
    body = {"error": "internal_error", "message": INTERNAL, "detail": INTERNAL}
    if request.url.path.startswith("/udf/"):
        body |= {"s": "error", "errmsg": INTERNAL}
    return JSONResponse(body, status_code=500)


def _warn_if_open(settings: Settings) -> None:
    if settings.AUTH == "none" and settings.HOST not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "AUTH=none while listening on %s: anyone who can reach it may use it "
            "(README, Security)",
            settings.HOST,
        )
