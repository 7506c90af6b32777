"""The CORS policy of the whole app: OpenBB Workspace everywhere, the UDF datafeed open.

Workspace (DESIGN 5.2) calls the widget endpoints from its own origins with credentials; a
TradingView Charting Library page (DESIGN 5.3) may be served from anywhere and calls
``/udf`` without credentials. :func:`add_cors` installs :class:`ScopedCORS`, which applies
the one policy or the other per request. WebSocket routes are not covered here.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.api.udf import PREFIX as UDF_PREFIX

if TYPE_CHECKING:
    from backend.settings import Settings


def origins_of(value: object) -> tuple[str, ...]:
    """An origin list from a setting: a comma-separated string or a sequence of strings,
    each as a browser writes it in ``Origin`` (lower case, no trailing slash), which the
    CORS middleware compares it with as it is."""
    if isinstance(value, str):
        items: Iterable[object] = value.split(",")
    elif isinstance(value, Iterable):
        items = value
    else:
        return ()
    return tuple(str(item).strip().rstrip("/").lower() for item in items if str(item).strip())


class ScopedCORS:
    """CORS for Workspace everywhere, plus open CORS for the UDF datafeed.

    Every path allows the Workspace origins (``CORS_ORIGINS``) with credentials, any method
    and any header, and answers preflights, also Chrome's private-network ones. Under
    ``/udf``, a request from another origin is answered by a second policy,
    ``UDF_CORS_ORIGINS`` (default ``*``) without credentials, since a Charting Library page
    may be served from anywhere and its adapter sends no credentials cross-origin.
    """

    def __init__(
        self, app: ASGIApp, origins: Collection[str], udf_origins: Collection[str]
    ) -> None:
        self.origins = frozenset(origins)
        self.workspace = CORSMiddleware(
            app,
            allow_origins=list(origins),
            allow_methods=["*"],
            allow_headers=["*"],
            allow_credentials=True,
            allow_private_network=True,
        )
        self.udf = CORSMiddleware(
            app,
            allow_origins=list(udf_origins),
            allow_methods=["GET", "HEAD", "OPTIONS"],
            allow_headers=["*"],
            allow_credentials=False,
            allow_private_network=True,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _is_udf(scope.get("path", "")):
            origin = _header(scope, b"origin")
            if origin is not None and origin not in self.origins and "*" not in self.origins:
                await self.udf(scope, receive, send)
                return
        await self.workspace(scope, receive, send)


def add_cors(app: FastAPI, settings: Settings) -> None:
    """Install :class:`ScopedCORS` on ``app`` (call before the app starts)."""
    origins = origins_of(settings.CORS_ORIGINS)
    udf_origins = origins_of(settings.UDF_CORS_ORIGINS)
    app.add_middleware(ScopedCORS, origins=origins, udf_origins=udf_origins)


def _is_udf(path: str) -> bool:
    return path == UDF_PREFIX or path.startswith(UDF_PREFIX + "/")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None
