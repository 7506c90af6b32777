"""Credentials: find the token a caller sent and turn it into an :class:`Identity`.

``AUTH=none``: everyone is an anonymous caller keyed by address. ``AUTH=token``: a key of
``API_KEYS`` / ``API_KEYS_FILE`` (read again when it changes), compared in constant time
with every key. ``AUTH=jwt``: a token signed with ``JWT_SECRET`` (HMAC) or
``JWT_PUBLIC_KEY`` (a PEM, or a JWKS file picked by ``kid``, every key tried for a token
naming none), with expiry (``nbf`` / ``iat`` allowed ``JWT_LEEWAY_SECONDS`` of clock skew),
and audience / issuer when set (PyJWT). Claims: ``sub`` (the client), ``sources`` and
``symbols`` (lists: what it may read), ``tier`` (its quota tier).

A token comes as ``Authorization: Bearer``, an ``X-API-Key`` header (OpenBB Workspace), or
a ``token`` query parameter (browsers cannot set headers on a WebSocket). Tokens are never
logged; errors say what is wrong, not the token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt

from backend.access.identity import Identity
from backend.access.jwks import FetchWanted, JwksKeys
from backend.errors import AccessDenied
from backend.settings import Settings, jwks_url, jwt_public_keys

logger = logging.getLogger(__name__)

UNAUTHORIZED = 401
UNAVAILABLE = 503  # the identity provider's keys could not be fetched (a JWKS URL)


def token_of(headers: Iterable[tuple[bytes, bytes]], query_string: bytes) -> str | None:
    """The token of an ASGI request: the Authorization bearer, X-API-Key, or ``?token=``."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credential = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credential.strip():
                return credential.strip()
        elif name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    if b"token=" in query_string:
        # "+" is a plus: keys in base64 (``openssl rand -base64``) are pasted into URLs as
        # they are, and no key has a space (form decoding made each "+" one: a 401)
        query = query_string.decode("latin-1").replace("+", "%2B")
        values = parse_qs(query).get("token")
        if values and values[0]:
            return values[0]
    return None


class Authenticator:
    """Checks a token according to ``AUTH``."""

    def __init__(self, settings: Settings) -> None:
        self.mode = settings.AUTH
        self._settings = settings
        self._keys_file = settings.API_KEYS_FILE if self.mode == "token" else None
        self._keys_stamp = _stamp(self._keys_file)
        self._keys = [key.encode() for key in settings.api_keys()]
        self._clients: tuple[list[bytes], frozenset[str]] = ([], frozenset())  # of _keys
        self._jwt = JwtVerifier(settings) if self.mode == "jwt" else None

    @property
    def required(self) -> bool:
        return self.mode != "none"

    def identify(self, token: str | None, address: str) -> Identity:
        """The caller with ``token`` from ``address``; raise ``AccessDenied`` (401)."""
        if self.mode == "none":
            return Identity(client=address, address=address, authenticated=True)
        if not token:
            raise AccessDenied(UNAUTHORIZED, "authentication required: send a bearer token")
        if self._jwt is not None:
            return self._jwt.identify(token, address)
        return self._key_identity(token, address)

    def _key_identity(self, token: str, address: str) -> Identity:
        given = token.encode()
        matched = b""
        for key in self._current_keys():  # every key is compared: the time says nothing about which
            if hmac.compare_digest(given, key):
                matched = key
        if not matched:
            raise AccessDenied(UNAUTHORIZED, "invalid API key")
        return Identity(client=_key_client(matched), address=address, authenticated=True)

    async def fetch_keys(self, wanted: FetchWanted) -> None:
        """Wait for the identity provider's keys a token asked for."""
        if self._jwt is not None:
            await self._jwt.fetch_keys(wanted)

    @property
    def revocable(self) -> bool:
        """Whether a key may be revoked while the server runs (``API_KEYS_FILE``)."""
        return self._keys_file is not None

    def revoked(self, identity: Identity) -> bool:
        """Whether ``identity``'s API key is no longer listed (``API_KEYS_FILE`` changed)."""
        if not self.revocable or not identity.client.startswith("key-"):
            return False
        keys = self._current_keys()
        if self._clients[0] is not keys:
            self._clients = (keys, frozenset(_key_client(key) for key in keys))
        return identity.client not in self._clients[1]

    def _current_keys(self) -> list[bytes]:
        """The keys, ``API_KEYS_FILE`` read again once it changed (a key added or revoked
        while the server runs); a file that cannot be read keeps the keys read before, and
        so does an empty one (an editor saving in place truncates it first)."""
        stamp = _stamp(self._keys_file)
        if stamp is None or stamp == self._keys_stamp or stamp[1] == 0:
            return self._keys
        self._keys_stamp = stamp
        try:
            self._keys = [key.encode() for key in self._settings.api_keys()]
        except ValueError as exc:
            logger.warning("%s; the keys read before stay in use", exc)
        else:
            logger.info("API_KEYS_FILE changed: %d keys in use", len(self._keys))
        return self._keys


def _key_client(key: bytes) -> str:
    """The client a key names: a digest, as a key must not show up in logs or metrics."""
    return "key-" + hashlib.sha256(key).hexdigest()[:12]


def _stamp(path: Path | None) -> tuple[int, int, int] | None:
    """What tells that a file changed (modified, size, replaced), or None."""
    if path is None:
        return None
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_mtime_ns, found.st_size, found.st_ino


class JwtVerifier:
    """JWT checks with PyJWT: signature, ``exp`` (required), ``aud`` and ``iss`` when set.

    Only the algorithms of ``JWT_ALGORITHMS`` that fit the configured key are accepted: the
    HMAC ones (``HS*``) with ``JWT_SECRET``, the others with ``JWT_PUBLIC_KEY``. A token is
    the caller's text, and its header names the algorithm: PyJWT, given the secret for an
    ``ES256`` header (the default list has it), tries to load the secret as a PEM key and
    raises ``ValueError``; given a JWKS key object for an ``HS256`` header (the algorithm
    confusion attack) or a key of another type, ``TypeError``. Those are not PyJWT errors:
    every route answered 500 (``/health`` too) with a traceback in the log, to anyone."""

    def __init__(self, settings: Settings) -> None:
        self.audience = settings.JWT_AUDIENCE or None
        self.issuer = _issuers(settings.JWT_ISSUER)
        self.leeway = settings.JWT_LEEWAY_SECONDS
        self.secret = settings.JWT_SECRET.get_secret_value()
        self.public_key = settings.JWT_PUBLIC_KEY
        # a JWKS URL: its keys fetched when needed (backend.access.jwks)
        url = jwks_url(self.public_key)
        self.jwks = JwksKeys(url, settings.JWKS_REFRESH_SECONDS) if url else None
        self.keys = jwt_public_keys(self.public_key) if self.public_key and not url else []
        # a PEM or JWKS file, read again when it changes (a key rotation copied to it)
        self.key_file = _key_file(self.public_key)
        self.key_stamp = _stamp(self.key_file)
        hmac_family = [name for name in settings.JWT_ALGORITHMS if name.startswith("HS")]
        key_family = [name for name in settings.JWT_ALGORITHMS if not name.startswith("HS")]
        self.algorithms = key_family if self.keys or self.jwks else hmac_family

    def identify(self, token: str, address: str) -> Identity:
        if not self.algorithms:
            raise AccessDenied(UNAUTHORIZED, "invalid token (no algorithm fits the key)")
        refusal = "token signed with an unknown key id"
        for key in self._keys_for(token):
            claims = self._decode(token, key)
            if isinstance(claims, str):
                refusal = claims  # a token without kid: the next key of the JWKS may be its
                continue
            identity = identity_of(claims, address)
            # The leeway is for an issuer's clock ahead of ours (nbf, iat "in the future");
            # exp stays exact: an open socket has TOKEN_EXPIRY_GRACE_SECONDS after it.
            if expired(identity, 0.0):
                raise AccessDenied(UNAUTHORIZED, "token expired")
            return identity
        raise AccessDenied(UNAUTHORIZED, refusal)

    def _decode(self, token: str, key: Any) -> dict[str, Any] | str:
        """The claims of ``token`` checked with ``key``, or the refusal when ``key`` does not
        fit it (another key may); raise ``AccessDenied`` for any other fault."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                # a numeric sub or jti (a user id) is common: identity_of checks sub
                options={"require": ["exp"], "verify_sub": False, "verify_jti": False},
            )
        except jwt.ExpiredSignatureError:
            raise AccessDenied(UNAUTHORIZED, "token expired") from None
        except jwt.InvalidSignatureError:
            return "invalid token (InvalidSignatureError)"
        except jwt.PyJWTError as exc:
            raise AccessDenied(UNAUTHORIZED, f"invalid token ({type(exc).__name__})") from None
        except (ValueError, TypeError):
            # the header's algorithm does not fit the key (a JWKS of RSA and EC keys)
            return "invalid token (its algorithm fits no key)"
        return claims

    def _keys_for(self, token: str) -> list[Any]:
        """The keys that may have signed ``token``: the secret; the JWKS key its ``kid``
        names (else a key without ``kid``); every key when it names none (a rotation's old
        and new key, and issuers that leave ``kid`` out)."""
        if not self.keys and self.jwks is None:
            return [self.secret]
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise AccessDenied(UNAUTHORIZED, f"invalid token ({type(exc).__name__})") from None
        keys = self._fetched_keys(kid) if self.jwks is not None else self._reload_keys()
        if kid is None:
            return [key for _, key in keys]
        named = [key for key_id, key in keys if key_id == kid]
        return named or [key for key_id, key in keys if key_id is None]

    def _fetched_keys(self, kid: object) -> list[tuple[str | None, Any]]:
        """The JWKS URL's keys for a token naming ``kid``; raise ``FetchWanted`` when the
        token should wait for a fetch (a ``kid`` not known yet), ``AccessDenied`` (503) while
        no fetch has given keys."""
        jwks = self.jwks
        assert jwks is not None
        named = kid if isinstance(kid, str) else None
        if jwks.wants_fetch(named):
            raise FetchWanted(named)
        if jwks.stale() and jwks.keys:
            jwks.refresh()  # in the background: this request goes on with the keys it has
        if not jwks.keys:
            raise AccessDenied(UNAVAILABLE, f"the identity provider's keys: {jwks.failure}")
        return jwks.keys

    async def fetch_keys(self, wanted: FetchWanted) -> None:
        """Wait for a fetch of the JWKS URL's keys a token asked for."""
        if self.jwks is not None:
            await self.jwks.fetch(wanted.kid)

    def _reload_keys(self) -> list[tuple[str | None, Any]]:
        """The keys, ``JWT_PUBLIC_KEY``'s file read again once it changed; a file that
        cannot be read or is no key (half written) keeps the keys read before."""
        stamp = _stamp(self.key_file)
        if stamp is None or stamp == self.key_stamp:
            return self.keys
        self.key_stamp = stamp
        try:
            self.keys = jwt_public_keys(self.public_key)
        except ValueError as exc:
            logger.warning("JWT_PUBLIC_KEY: %s; the keys read before stay in use", exc)
        else:
            logger.info("JWT_PUBLIC_KEY changed: %d keys in use", len(self.keys))
        return self.keys


def _issuers(issuer: str) -> frozenset[str] | None:
    """The ``iss`` values ``JWT_ISSUER`` accepts: itself, with or without one trailing
    slash (Auth0 issues ``https://tenant.auth0.com/`` and its dashboard shows no slash)."""
    if not issuer:
        return None
    bare = issuer[:-1] if issuer.endswith("/") else issuer
    return frozenset({bare, bare + "/"})


def _key_file(public_key: str) -> Path | None:
    """The file ``JWT_PUBLIC_KEY`` names, or None for a PEM text, a URL or no key."""
    if not public_key or public_key.lstrip().startswith("-----") or jwks_url(public_key):
        return None
    return Path(public_key.strip())


def identity_of(claims: Mapping[str, Any], address: str) -> Identity:
    """The identity a verified token's claims describe; raise ``AccessDenied`` (401) for a
    claim of a shape it cannot have (``sources: 5``, ``symbols: true``, an ``exp`` beyond
    any date, a ``sub`` neither a string nor a whole number). A token is signed by the
    identity provider, but a mistake there must cost the request a documented refusal, not
    a 500 and a traceback on every route. A numeric ``sub`` (a user id) names its client as
    the same text would (PyJWT 2.10 refuses it: its check is off)."""
    subject = claims.get("sub", "anonymous")
    if not isinstance(subject, str | int) or isinstance(subject, bool):
        raise AccessDenied(UNAUTHORIZED, "invalid token (claim 'sub' is not a string)")
    return Identity(
        client=f"sub-{subject}",
        address=address,
        tier=str(claims.get("tier", "default")),
        sources=_claim_set(claims, "sources"),
        symbols=_claim_set(claims, "symbols"),
        expires_at=_expiry(claims),
        authenticated=True,
    )


def _claim_set(claims: Mapping[str, Any], name: str) -> frozenset[str] | None:
    """A list claim: a list of names (strings or numbers), or one comma-separated string."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(_is_name(item) for item in value):
        raise AccessDenied(UNAUTHORIZED, f"invalid token (claim {name!r} is not a list of names)")
    return frozenset(str(item).strip() for item in value if str(item).strip())


def _is_name(item: object) -> bool:
    return isinstance(item, str | int | float) and not isinstance(item, bool)


def _expiry(claims: Mapping[str, Any]) -> float:
    """``exp`` as seconds (PyJWT checked that it is a number of some size)."""
    try:
        expires = float(claims["exp"])
    except (TypeError, ValueError, OverflowError):
        raise AccessDenied(UNAUTHORIZED, "invalid token (claim 'exp' is out of range)") from None
    if not math.isfinite(expires):
        raise AccessDenied(UNAUTHORIZED, "invalid token (claim 'exp' is out of range)")
    return expires


def expired(identity: Identity, grace: float, now: float | None = None) -> bool:
    """Whether ``identity``'s token ran out more than ``grace`` seconds ago."""
    if identity.expires_at is None:
        return False
    return (time.time() if now is None else now) > identity.expires_at + grace
