"""The FastAPI application: ``create_app(settings)`` and its lifespan.

The lifespan owns all state: it opens the symbol index, starts the hub (and with it the
provider processes), and stops them in order on shutdown.
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
from backend.connection import serve_connection
from backend.hub import Hub
from backend.metrics import Metrics
from backend.openbb import add_cors
from backend.openbb import router as openbb_router
from backend.rest import router
from backend.store import BarStore
from backend.symbols import SymbolIndex
from backend.udf import router as udf_router
from config import Settings

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
FRONTEND = ROOT / "frontend"
CHARTS_DIST = ROOT / "node_modules" / "lightweight-charts" / "dist"


def create_app(settings: Settings) -> FastAPI:
    """Build the app; nothing starts until the lifespan runs."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        symbols = await SymbolIndex.open(settings.DB)
        store = await BarStore.open(settings.DB)
        hub = Hub(settings, symbols, Metrics(), store)
        app.state.hub = hub
        await hub.start()
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
