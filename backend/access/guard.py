"""Where access control is applied: :class:`Access` (the checks, built once per app) and
:class:`AccessMiddleware` (every HTTP request and socket route of the FastAPI app).

Every request and socket upgrade whose ``Host`` is not this server's gets 403 where that
is checked (``AUTH=none`` or ``ALLOWED_HOSTS``: :mod:`.hosts`, DNS rebinding). A socket
upgrade is checked before the WebSocket opens: a foreign ``Origin`` gets 403, a missing or
bad token 401, a client over its connection limit 429 (ASGI's WebSocket denial response).
A token signed with a key of a JWKS URL not fetched yet waits for the fetch
(:mod:`.jwks`). Refusals for credentials, of upgrades and HTTP requests alike, count against the
caller's address (loopback exempt): past the request rate they are 429 with ``Retry-After``.
An accepted socket whose token expires is closed with 1008 (policy violation)
``TOKEN_EXPIRY_GRACE_SECONDS`` after it ran out, one whose API key was removed from
``API_KEYS_FILE`` within ``KEY_RECHECK_SECONDS``; over the request rate, its frames are
answered ``error rate_limited`` (the Tradiny socket, by the hub) or read more slowly (the
others). An HTTP request is authenticated unless it is public (the web
page's static files, ``/health`` liveness, CORS preflights) and counted against the request
rate. The caller becomes :data:`~backend.access.identity.current` for the request or the
connection (and the reply jobs it starts), and ``scope["state"]["identity"]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NamedTuple

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.access.credentials import Authenticator, token_of
from backend.access.fairuse import FairUse
from backend.access.hosts import HostPolicy, refused_host
from backend.access.identity import ANONYMOUS, Identity, current
from backend.access.jwks import FetchWanted
from backend.access.origins import OriginPolicy, origin_of
from backend.access.subscriptions import SubscriptionQuota
from backend.errors import AccessDenied
from backend.settings import Settings

logger = logging.getLogger(__name__)

CLOSE_POLICY_VIOLATION = 1008
KEY_RECHECK_SECONDS = 2.0  # how soon an open socket of a revoked API key is closed
UNAUTHORIZED = 401
FORBIDDEN = 403
TOO_MANY = 429
STATIC_SUFFIXES = (".html", ".js", ".mjs", ".css", ".png", ".svg", ".ico", ".map", ".woff2")
ERROR_CODES = {401: "unauthorized", 403: "forbidden", 429: "rate_limited", 503: "unavailable"}


class Admitted(NamedTuple):
    """An accepted socket's caller, what restores the caller before it, its expiry, and
    how to close it (when its API key is revoked)."""

    identity: Identity
    token: contextvars.Token[Identity]
    expiry: asyncio.Task[None] | None
    send: Send | None = None


class Access:
    """The access checks of one app (state of its lifespan's settings)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.auth = Authenticator(settings)
        # the page at PUBLIC_URL is the server's own, whatever Host a proxy sends
        trusted = [*settings.CORS_ORIGINS, *origin_of(settings.PUBLIC_URL)]
        self.origins = OriginPolicy(settings.WS_ALLOWED_ORIGINS, trusted)
        open_to_all = settings.AUTH == "none"  # where credentials do not stop a rebound page
        self.hosts = HostPolicy(settings.ALLOWED_HOSTS, settings.PUBLIC_URL, open_to_all)
        self.fair = FairUse(settings)
        self.subscriptions = SubscriptionQuota(self.fair.tiers)
        self.grace = settings.TOKEN_EXPIRY_GRACE_SECONDS
        self.sockets = 0  # sockets accepted so far (names each one's upstream budget)
        # Open sockets of API keys, and the task closing those whose key is revoked.
        self.keyed: dict[Send, Identity] = {}
        self._revocations: asyncio.Task[None] | None = None

    def identify(self, scope: Scope) -> Identity:
        """The caller of ``scope``; raise ``AccessDenied`` (401) without valid credentials."""
        address = scope["client"][0] if scope.get("client") else "?"
        token = token_of(scope.get("headers", ()), scope.get("query_string", b""))
        return self.auth.identify(token, address)

    def check_socket(self, scope: Scope) -> Identity:
        """Origin, credentials and connection limits of a socket upgrade (counted: call
        ``socket_closed`` when it ends)."""
        headers = dict(scope.get("headers", ()))
        origin = headers.get(b"origin")
        host = _host(scope)
        self.check_host(host)
        sent = None if origin is None else origin.decode("latin-1")
        if not self.origins.allows(sent, host):
            raise AccessDenied(FORBIDDEN, _refused_origin(sent))
        identity = self.identify(scope)
        self.fair.connections.open(identity)
        return identity

    async def authenticate(
        self, scope: Scope, check: Callable[[Scope], Identity] | None = None
    ) -> Identity:
        """``check`` (:meth:`identify` when None; :meth:`check_socket` for an upgrade) after
        fetching the identity provider's keys when the token names one not fetched yet
        (``JWT_PUBLIC_KEY`` a JWKS URL: a key rotation)."""
        check = check or self.identify
        try:
            return check(scope)
        except FetchWanted as wanted:
            await self.auth.fetch_keys(wanted)
        return check(scope)

    def check_host(self, host: str | None) -> None:
        """Raise ``AccessDenied`` (403) for a ``Host`` that is not this server's
        (:class:`~backend.access.hosts.HostPolicy`)."""
        if not self.hosts.allows(host):
            raise AccessDenied(FORBIDDEN, refused_host(host or ""))

    def socket_closed(self, identity: Identity) -> None:
        self.fair.connections.close(identity)

    def counted(self, scope: Scope, denied: AccessDenied) -> tuple[AccessDenied, float]:
        """A refusal for credentials (401), counted against the caller's address as every
        request is with ``AUTH=none`` (loopback exempt): past the request rate it becomes
        429 and the seconds to wait, so keys cannot be guessed, nor 401s flooded, at full
        speed over HTTP or socket upgrades (one budget per address for both). Other
        refusals are returned as they are, with no wait."""
        if denied.status != UNAUTHORIZED:
            return denied, 0.0
        address = _address(scope)
        wait = self.fair.request_wait(Identity(client=address, address=address))
        if wait <= 0:
            return denied, 0.0
        return AccessDenied(TOO_MANY, f"too many requests; retry after {wait:.1f} s"), wait

    def public(self, scope: Scope) -> bool:
        path: str = scope["path"]
        if scope.get("method") == "OPTIONS" or path in {"/health", "/"}:
            return True
        if path == "/metrics":
            return self.settings.METRICS_PUBLIC
        return path.startswith("/vendor/") or path.endswith(STATIC_SUFFIXES)

    async def serve_socket(
        self, scope: Scope, receive: Receive, send: Send, app: ASGIApp, paced: bool = True
    ) -> None:
        """Check a socket upgrade, then run ``app`` as the caller, with expiry, its frames
        paced to the request rate unless ``app`` answers over-limit frames itself (the
        Tradiny socket: ``error rate_limited``, :meth:`FairUse.frame_wait`)."""
        admitted = await self.admit_socket(scope, send)
        if admitted is None:
            return
        try:
            await app(scope, self._paced(admitted.identity, receive) if paced else receive, send)
        finally:
            self.release_socket(admitted)

    async def admit_socket(self, scope: Scope, send: Send) -> Admitted | None:
        """Check a socket upgrade: ``None`` once it was refused (the refusal is sent), else
        the socket runs as its caller (:data:`current`, in the calling task) until
        :meth:`release_socket`, and is closed when its token expires. The Tradiny socket's
        entrance calls this pair itself, so that no coroutine of the guard stays
        suspended for the connection's life (one frame per idle connection)."""
        try:
            identity = await self.authenticate(scope, self.check_socket)
        except AccessDenied as denied:
            refusal, wait = self.counted(scope, denied)
            self.fair.log.report(
                "denied:" + _address(scope), "socket from %s refused: %s", _address(scope), refusal
            )
            await deny_socket(scope, send, refusal, wait)
            return None
        self.sockets += 1
        token = current.set(replace(identity, connection=f"{identity.address}/{self.sockets}"))
        if not self.auth.revocable:
            return Admitted(identity, token, self._watch_expiry(identity, send))
        self.keyed[send] = identity
        if self._revocations is None or self._revocations.done():
            self._revocations = asyncio.get_running_loop().create_task(self._close_revoked())
            self._revocations.add_done_callback(_log_failure)
        return Admitted(identity, token, None, send)

    def release_socket(self, admitted: Admitted) -> None:
        """The socket of :meth:`admit_socket` ended (call it in the task that admitted it)."""
        if admitted.expiry is not None:
            admitted.expiry.cancel()
        if admitted.send is not None:
            self.keyed.pop(admitted.send, None)
        current.reset(admitted.token)
        self.socket_closed(admitted.identity)

    async def _close_revoked(self) -> None:
        """While API-key sockets are open, every ``KEY_RECHECK_SECONDS``: close with 1008
        those whose key ``API_KEYS_FILE`` no longer lists (a leaked key, revoked, must not
        keep streaming to whoever holds it)."""
        while self.keyed:
            await asyncio.sleep(KEY_RECHECK_SECONDS)
            for send, identity in list(self.keyed.items()):
                if self.keyed.get(send) is identity and self.auth.revoked(identity):
                    del self.keyed[send]
                    logger.info("closing a socket whose API key was revoked")
                    await _close(send, "API key revoked")

    def _paced(self, identity: Identity, receive: Receive) -> Receive:
        async def paced() -> Message:
            message = await receive()
            if message["type"] == "websocket.receive":
                await self.fair.pace(identity)
            return message

        return paced

    def _watch_expiry(self, identity: Identity, send: Send) -> asyncio.Task[None] | None:
        if identity.expires_at is None:
            return None
        delay = identity.expires_at + self.grace - time.time()
        task = asyncio.get_running_loop().create_task(_close_later(max(0.0, delay), send))
        task.add_done_callback(_log_failure)
        return task


async def _close_later(delay: float, send: Send) -> None:
    await asyncio.sleep(delay)
    logger.info("closing a socket whose token expired")
    await _close(send, "token expired")


async def _close(send: Send, reason: str) -> None:
    """Close an accepted socket with 1008 and ``reason`` (it may be closing already)."""
    with contextlib.suppress(RuntimeError, OSError):
        await send({"type": "websocket.close", "code": CLOSE_POLICY_VIOLATION, "reason": reason})


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("closing an expired socket failed", exc_info=task.exception())


def _host(scope: Scope) -> str | None:
    """The request's ``Host`` header, as sent; ``None`` without one."""
    for name, value in scope.get("headers", ()):
        if name == b"host":
            return bytes(value).decode("latin-1")
    return None


def _address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "?"


def error_body(status: int, message: str, **extra: Any) -> bytes:
    """The documented error shape: ``{"error": code, "message": text}``, plus ``detail``
    (the same text), which OpenBB Workspace shows in a widget whose request failed, as on
    the app's other errors."""
    body = {"error": ERROR_CODES.get(status, "error"), "message": message, "detail": message}
    return orjson.dumps(body | extra)


async def deny_socket(
    scope: Scope, send: Send, denied: AccessDenied, retry_after: float = 0.0
) -> None:
    """Refuse an upgrade with ``denied.status`` (and ``Retry-After`` when ``retry_after``)
    before the WebSocket opens (or 403 where the server lacks ASGI's denial-response
    extension)."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": CLOSE_POLICY_VIOLATION})
        return
    extra: dict[str, Any] = {"retry_after": retry_after} if retry_after else {}
    body = error_body(denied.status, denied.message, **extra)
    await send(
        {
            "type": "websocket.http.response.start",
            "status": denied.status,
            "headers": _error_headers(denied.status, len(body), retry_after),
        }
    )
    await send({"type": "websocket.http.response.body", "body": body})


UDF_PATH = "/udf"  # backend.api.udf.PREFIX (the access layer does not import the routes)
# What a refused ``/udf/config`` adds so that the adapter can still get ready (see deny_http).
UDF_REFUSED_CONFIG: dict[str, Any] = {"supports_search": True, "supports_group_request": False}


async def deny_http(
    send: Send, status: int, message: str, retry_after: float = 0.0, path: str = ""
) -> None:
    """The refusal of an HTTP request. Under ``/udf`` the body also carries the datafeed's
    error shape, ``"s": "error"`` and ``"errmsg"``: the Charting Library's adapter reads
    bodies, not status codes, and would take any other JSON for an answer.

    The adapter takes the body of ``/udf/config`` for its configuration, whatever it is, and
    throws (its ``onReady`` never calls back: a blank chart, no error) unless it names search
    or group requests. So that refusal also says ``supports_search`` and nothing else about
    the server: the chart gets ready, and the refusals of ``symbols`` and ``history`` then
    reach the library as errors ("unknown_symbol", the ``errmsg``)."""
    extra: dict[str, Any] = {"retry_after": retry_after} if retry_after else {}
    if path == UDF_PATH or path.startswith(UDF_PATH + "/"):
        extra.update(s="error", errmsg=message)
        if path.rstrip("/") == UDF_PATH + "/config":
            extra.update(UDF_REFUSED_CONFIG)
    body = error_body(status, message, **extra)
    headers = _error_headers(status, len(body), retry_after)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _error_headers(status: int, length: int, retry_after: float = 0.0) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(length).encode())]
    if status == UNAUTHORIZED:
        headers.append((b"www-authenticate", b'Bearer realm="candlewire"'))
    if retry_after:
        headers.append((b"retry-after", str(max(1, round(retry_after))).encode()))
    return headers


class AccessMiddleware:
    """Applies :class:`Access` to every request of the wrapped app."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self.access.serve_socket(scope, receive, send, self.app)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        access = self.access
        try:
            access.check_host(_host(scope))
        except AccessDenied as denied:
            access.fair.log.report(
                "host:" + _address(scope), "request from %s refused: %s", _address(scope), denied
            )
            await deny_http(send, denied.status, denied.message, 0.0, scope["path"])
            return
        try:
            identity = await access.authenticate(scope)
        except AccessDenied as denied:
            if not access.public(scope):
                refusal, wait = access.counted(scope, denied)
                await deny_http(send, refusal.status, refusal.message, wait, scope["path"])
                return
            identity = ANONYMOUS
        wait = access.fair.request_wait(identity)
        if wait > 0 and not access.public(scope):
            await deny_http(
                send, TOO_MANY, f"too many requests; retry after {wait:.1f} s", wait, scope["path"]
            )
            return
        scope.setdefault("state", {})["identity"] = identity
        token = current.set(identity)
        try:
            await self.app(scope, receive, send)
        finally:
            current.reset(token)


def _refused_origin(origin: str | None) -> str:
    """The refusal of a socket's ``Origin``, naming it (cut to 100 characters) and the
    setting that allows it; ``null`` is a page opened from a ``file://`` URL."""
    shown = repr(origin[:100]) if origin is not None else "(none)"
    why = f"the Origin {shown} may not open sockets here (WS_ALLOWED_ORIGINS)"
    if origin == "null":
        why += "; 'null' is a page opened from a file:// URL or a sandboxed frame"
    return why
