"""A fake Web Push service and webhook receiver on loopback.

:class:`BrowserKeys` is what a browser makes for ``pushManager.subscribe``: a P-256 key pair
and a 16-byte auth secret; :meth:`FakePush.subscription` gives the ``PushSubscription.toJSON()``
for it. The service checks every push as a real one would (RFC 8292: the ``vapid t=..., k=...``
``Authorization`` header, an ES256 JWT whose ``aud`` is our origin, ``exp`` in the future and
``sub`` set) and decrypts the RFC 8291 ``aes128gcm`` body with the subscription's private key
(``http_ece``, as ``pywebpush`` encrypts). Decrypted payloads land in :attr:`FakePush.pushes`;
refused ones in :attr:`FakePush.refused`. ``/hook/<name>`` records webhook JSON bodies.
Answers can be scripted per path: ``fake.script("/hook/a", [503, 503])`` answers those
statuses first, then 201/200 (an entry may be ``(status, headers)``, e.g. a ``Retry-After``
or a redirect's ``Location``); ``fake.gone(token)`` answers 410 to every push to ``token``;
``fake.endless(path, status)`` answers that status with a body that never ends;
``fake.hang(path)`` never answers; ``fake.constrained(token)`` refuses a push to ``token``
larger than :data:`CONSTRAINED_BODY` with Mozilla's 413, as autopush does for Firefox for
Android. :attr:`FakePush.times` has the monotonic time of every request by path.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import http_ece
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from tests.fakes.loopback import LoopbackServer

Answer = int | tuple[int, dict[str, str]]  # a scripted status, or a status and headers


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class BrowserKeys:
    private_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    auth: bytes = field(default_factory=lambda: os.urandom(16))

    def p256dh(self) -> str:
        point = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return b64url(point)


MAX_BODY = 4096  # a push service need take no larger body
# Mozilla's push service relays a push for Firefox for Android through FCM and takes no
# more than this (413, errno 104: "intended for a constrained device"; webpush-go#23)
CONSTRAINED_BODY = 3070


@dataclass
class Push:
    token: str
    payload: dict[str, Any]
    vapid_key: str  # the server's public key from the Authorization header
    claims: dict[str, Any]
    urgency: str | None = None  # the Urgency header (RFC 8030 section 5.3), if sent


class FakePush:
    """``with FakePush() as fake:`` a push service at ``fake.url``."""

    def __init__(self) -> None:
        self.keys: dict[str, BrowserKeys] = {}
        self.pushes: list[Push] = []
        self.refused: list[str] = []
        self.hooks: list[tuple[str, dict[str, Any]]] = []
        self.attempts: list[tuple[str, int]] = []  # (path, status answered)
        self.times: list[tuple[str, float]] = []  # (path, time.monotonic() of the request)
        self.streamed: dict[str, int] = {}  # path -> bytes of an endless body written
        self._scripts: dict[str, list[Answer]] = {}
        self._endless: dict[str, int] = {}
        self._hanging: set[str] = set()
        self._gone: set[str] = set()
        self._constrained: set[str] = set()
        self._lock = threading.Lock()
        app = web.Application()
        app.router.add_post("/push/{token}", self._push)
        app.router.add_post("/hook/{name}", self._hook)
        self._server = LoopbackServer(app)

    def __enter__(self) -> FakePush:
        self._server.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.__exit__(*exc)

    @property
    def url(self) -> str:
        return self._server.url

    def subscription(self, token: str) -> dict[str, Any]:
        """A new browser subscription at ``/push/<token>`` (keys made as a browser does)."""
        keys = self.keys[token] = BrowserKeys()
        return {
            "endpoint": f"{self.url}/push/{token}",
            "expirationTime": None,
            "keys": {"p256dh": keys.p256dh(), "auth": b64url(keys.auth)},
        }

    def script(self, path: str, statuses: list[Answer]) -> None:
        with self._lock:
            self._scripts[path] = list(statuses)

    def endless(self, path: str, status: int) -> None:
        with self._lock:
            self._endless[path] = status

    def hang(self, path: str) -> None:
        with self._lock:
            self._hanging.add(path)

    def gone(self, token: str) -> None:
        with self._lock:
            self._gone.add(token)

    def constrained(self, token: str) -> None:
        with self._lock:
            self._constrained.add(token)

    def titles(self, token: str) -> list[str]:
        with self._lock:
            return [p.payload["notification"]["title"] for p in self.pushes if p.token == token]

    def hook_bodies(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [body for hook, body in self.hooks if hook == name]

    def _scripted(self, path: str) -> tuple[int, dict[str, str]] | None:
        with self._lock:
            self.times.append((path, time.monotonic()))
            queue = self._scripts.get(path)
            found = queue.pop(0) if queue else None
        return (found, {}) if isinstance(found, int) else found

    async def _special(self, request: web.Request) -> web.StreamResponse | None:
        """The endless or hanging answer of this path, if it has one."""
        if request.path in self._hanging:
            self.attempts.append((request.path, 0))
            await asyncio.Event().wait()
        status = self._endless.get(request.path)
        if status is None:
            return None
        self.attempts.append((request.path, status))
        response = web.StreamResponse(status=status)
        await response.prepare(request)
        chunk = b"x" * 65536
        while True:  # until the client goes away
            await response.write(chunk)
            self.streamed[request.path] = self.streamed.get(request.path, 0) + len(chunk)

    async def _push(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        body = await request.read()
        scripted = self._scripted(request.path)
        special = await self._special(request)
        if special is not None:
            return special
        if scripted is None and token in self._gone:
            scripted = (410, {})
        if scripted is not None:
            self.attempts.append((request.path, scripted[0]))
            return web.Response(status=scripted[0], headers=scripted[1])
        if len(body) > MAX_BODY:  # as real push services do (RFC 8030 section 7.2)
            self.attempts.append((request.path, 413))
            return web.Response(status=413, text=f"payload of {len(body)} bytes")
        if token in self._constrained and len(body) > CONSTRAINED_BODY:
            self.attempts.append((request.path, 413))
            too_long = f"too long by {len(body) - CONSTRAINED_BODY} bytes"
            message = f"This message is intended for a constrained device and is {too_long}"
            answer = {"code": 413, "errno": 104, "error": "Payload Too Large", "message": message}
            return web.json_response(answer, status=413)
        try:
            vapid_key, claims = self._check_vapid(request)
            keys = self.keys[token]
            if request.headers.get("Content-Encoding") != "aes128gcm":
                raise ValueError("Content-Encoding is not aes128gcm")
            urgency = request.headers.get("Urgency")
            if urgency not in (None, "very-low", "low", "normal", "high"):
                raise ValueError(f"BadUrgency: {urgency!r}")  # as Apple's service says
            plain = http_ece.decrypt(
                body, private_key=keys.private_key, auth_secret=keys.auth, version="aes128gcm"
            )
            payload = json.loads(plain)
        except (KeyError, ValueError) as exc:
            with self._lock:
                self.refused.append(f"{token}: {exc}")
            self.attempts.append((request.path, 400))
            return web.Response(status=400, text=str(exc))
        with self._lock:
            self.pushes.append(Push(token, payload, vapid_key, claims, urgency))
        self.attempts.append((request.path, 201))
        return web.Response(status=201)

    def _check_vapid(self, request: web.Request) -> tuple[str, dict[str, Any]]:
        """Verify RFC 8292's ``Authorization: vapid t=<jwt>, k=<key>``."""
        header = request.headers.get("Authorization", "")
        scheme, _, params = header.partition(" ")
        if scheme.lower() != "vapid":
            raise ValueError(f"Authorization scheme {scheme!r} is not vapid")
        parts = dict(part.strip().split("=", 1) for part in params.split(","))
        token, key = parts["t"], parts["k"]
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(key))
        head, claims_text, signature = token.split(".")
        raw = unb64url(signature)
        der = encode_dss_signature(int.from_bytes(raw[:32]), int.from_bytes(raw[32:]))
        try:
            public.verify(der, f"{head}.{claims_text}".encode(), ec.ECDSA(hashes.SHA256()))
        except Exception as exc:  # cryptography's InvalidSignature
            raise ValueError("bad VAPID signature") from exc
        claims = json.loads(unb64url(claims_text))
        if claims.get("aud") != self.url:
            raise ValueError(f"aud {claims.get('aud')!r} is not {self.url}")
        if not claims.get("sub") or int(claims.get("exp", 0)) < time.time():
            raise ValueError("VAPID claims lack sub or are expired")
        return key, claims

    async def _hook(self, request: web.Request) -> web.StreamResponse:
        scripted = self._scripted(request.path)
        special = await self._special(request)
        if special is not None:
            return special
        if scripted is not None:
            self.attempts.append((request.path, scripted[0]))
            return web.Response(status=scripted[0], headers=scripted[1])
        body = await request.json()
        with self._lock:
            self.hooks.append((request.match_info["name"], body))
        self.attempts.append((request.path, 200))
        return web.Response(status=200)
