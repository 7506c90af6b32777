"""A minimal Web Push receiver written from the RFCs alone, independent of ``http_ece`` and
``py_vapid`` (which the server uses): it decrypts RFC 8291 ``aes128gcm`` bodies (RFC 8188,
one record, the 0x02 delimiter) with ``cryptography`` and verifies RFC 8292's
``Authorization: vapid t=<JWT>, k=<key>`` (ES256 signature by ``k``, ``aud`` the origin the
receiver listens at, ``exp`` within 24 hours). It listens on any loopback address, IPv6
included (``http.server`` in a thread); each push lands in :attr:`RfcPush.pushes`, each
refusal (with the reason) in :attr:`RfcPush.refused`. While :attr:`RfcPush.unavailable` is
set it answers every push 503 Service Unavailable without looking at it (a service down
for a while; the sender retries), counted in :attr:`RfcPush.turned_away`. With
:attr:`RfcPush.apple` set it also refuses as Apple's push service does a token whose ``sub``
is at ``localhost``: 403 ``{"reason":"BadJwtToken"}`` (web-push-libs/web-push#947).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def b64url_decode(text: str) -> bytes:
    text = text.strip().rstrip("=")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


@dataclass
class Browser:
    """What ``pushManager.subscribe`` makes: a P-256 key pair and a 16-byte auth secret."""

    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    auth: bytes = field(default_factory=lambda: os.urandom(16))

    @property
    def public(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    def decrypt(self, body: bytes) -> bytes:
        """RFC 8291 section 3.4 on the RFC 8188 header: one record, delimiter 0x02."""
        salt, (rs,), idlen = body[:16], struct.unpack(">I", body[16:20]), body[20]
        as_public, record = body[21 : 21 + idlen], body[21 + idlen :]
        if idlen != 65 or len(record) >= rs:
            raise ValueError(f"keyid of {idlen} bytes or more than one record (rs {rs})")
        server = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), as_public)
        secret = self.key.exchange(ec.ECDH(), server)
        ikm = _hmac(
            _hmac(self.auth, secret), b"WebPush: info\x00" + self.public + as_public + b"\x01"
        )
        prk = _hmac(salt, ikm)
        cek = _hmac(prk, b"Content-Encoding: aes128gcm\x00\x01")[:16]
        nonce = _hmac(prk, b"Content-Encoding: nonce\x00\x01")[:12]
        padded = AESGCM(cek).decrypt(nonce, record, None).rstrip(b"\x00")
        if not padded.endswith(b"\x02"):
            raise ValueError("the last record's delimiter is not 0x02")
        return padded[:-1]


def verify_vapid(header: str, audience: str, now: float) -> tuple[str, dict[str, Any]]:
    """The key ``k`` and the claims of a valid RFC 8292 header, else ``ValueError``."""
    scheme, _, rest = header.partition(" ")
    if scheme.lower() != "vapid":
        raise ValueError(f"scheme {scheme!r}")
    params = {}
    for part in rest.split(","):  # RFC 7235 auth-params: OWS around the commas
        name, _, value = part.strip().partition("=")
        params[name.strip().lower()] = value.strip()
    point = b64url_decode(params["k"])
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    head, claims_part, signature_part = params["t"].split(".")
    if json.loads(b64url_decode(head)).get("alg") != "ES256":
        raise ValueError("not ES256")
    signature = b64url_decode(signature_part)
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    key.verify(
        encode_dss_signature(r, s), f"{head}.{claims_part}".encode(), ec.ECDSA(hashes.SHA256())
    )
    claims: dict[str, Any] = json.loads(b64url_decode(claims_part))
    if claims.get("aud") != audience:
        raise ValueError(f"aud {claims.get('aud')!r} is not {audience!r}")
    if not now < claims["exp"] <= now + 24 * 3600:
        raise ValueError(f"exp {claims['exp']} is not within 24 h")
    if not str(claims.get("sub", "")).startswith(("mailto:", "https:")):
        raise ValueError(f"sub {claims.get('sub')!r}")
    return params["k"], claims


@dataclass
class Received:
    token: str
    payload: Any
    key: str
    claims: dict[str, Any]


class RfcPush:
    """``with RfcPush("::1") as push:`` a push service at ``push.url`` (``/push/<token>``)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.browsers: dict[str, Browser] = {}
        self.pushes: list[Received] = []
        self.refused: list[str] = []
        self.unavailable = False
        self.turned_away = 0
        self.apple = False
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = receiver.take(self.path, dict(self.headers.items()), body)
                answer = b'{"reason":"BadJwtToken"}' if status == 403 else b""
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("Server", (ThreadingHTTPServer,), {"address_family": family})
        self._server = server_class((host, 0), Handler)
        bracketed = f"[{host}]" if ":" in host else host
        self.url = f"http://{bracketed}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> RfcPush:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def subscription(self, token: str) -> dict[str, Any]:
        browser = self.browsers[token] = Browser()
        return {
            "endpoint": f"{self.url}/push/{token}",
            "expirationTime": None,
            "keys": {"p256dh": b64url(browser.public), "auth": b64url(browser.auth)},
        }

    def take(self, path: str, headers: dict[str, str], body: bytes) -> int:
        if self.unavailable:
            self.turned_away += 1
            return 503
        token = path.rsplit("/", 1)[-1]
        try:
            if "TTL" not in headers or headers.get("Content-Encoding") != "aes128gcm":
                raise ValueError("no TTL, or not aes128gcm")
            key, claims = verify_vapid(headers.get("Authorization", ""), self.url, time.time())
            if self.apple and str(claims["sub"]).split("@")[-1].split("/")[-1] == "localhost":
                self.refused.append(f"BadJwtToken: sub {claims['sub']!r}")
                return 403
            payload = json.loads(self.browsers[token].decrypt(body))
        except (ValueError, KeyError, InvalidSignature, InvalidTag) as exc:
            self.refused.append(f"{type(exc).__name__}: {exc}")
            return 400
        self.pushes.append(Received(token, payload, key, claims))
        return 201
