"""The FastAPI application: ``create_app(settings)`` and its lifespan.

The lifespan owns all state: it opens the symbol index and the bar store, builds the
indicator registry (built-ins, ``INDICATOR_REGISTRY`` and ``EXTRA_INDICATORS``: a broken
entry stops the start-up), starts the hub (and with it the provider processes), and stops
them in order on shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, WebSocket
from fastapi.staticfiles import StaticFiles
from starlette.routing import WebSocketRoute

from backend import __version__
from backend.api.cors import add_cors
from backend.api.openbb import router as openbb_router
from backend.api.rest import router
from backend.api.udf import router as udf_router
from backend.history.store import BarStore
from backend.hub.hub import Hub
from backend.hub.metrics import Metrics
from backend.indicators.registry import build_indicators
from backend.settings import Settings
from backend.symbols.index import SymbolIndex
from backend.ws.endpoint import serve_connection

logger = logging.getLogger(__name__)


def _project_root() -> Path:
    """The folder holding ``frontend/``: the source tree, or the working folder when the
    package was installed (``pip install .``) and is run from a checkout."""
    source_tree = Path(__file__).resolve().parent.parent
    return source_tree if (source_tree / "frontend").is_dir() else Path.cwd()


ROOT = _project_root()
FRONTEND = ROOT / "frontend"
CHARTS_DIST = ROOT / "node_modules" / "lightweight-charts" / "dist"


def create_app(settings: Settings) -> FastAPI:
    """Build the app; nothing starts until the lifespan runs."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        symbols = await SymbolIndex.open(settings.DB)
        store = await BarStore.open(settings.DB)
        indicators = build_indicators(settings.EXTRA_INDICATORS)
        logger.info("%d indicators", len(indicators))
        hub = Hub(settings, symbols, Metrics(), store, indicators)
        app.state.hub = hub
        await hub.start()
        await hub.alerting.open(settings.DB)
        logger.info("hub started with providers: %s", ", ".join(settings.PROVIDERS))
        try:
            yield
        finally:
            await hub.stop()
            await store.close()
            await symbols.close()
            logger.info("hub stopped")

    app = FastAPI(title="Candlewire", version=__version__, lifespan=lifespan)
    app.include_router(router)
    app.include_router(openbb_router)
    app.include_router(udf_router)
    add_cors(app, settings)

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
            StaticFiles(directory=CHARTS_DIST),
            name="lightweight-charts",
        )
    if (FRONTEND / "index.html").exists():
        app.mount("/", StaticFiles(directory=FRONTEND, html=True), name="frontend")
    return app
