"""``JWT_PUBLIC_KEY`` as a JWKS URL: an identity provider's signing keys, fetched.

Identity providers (Auth0, Keycloak, Okta, Cognito, Entra ID) publish their public keys at
a ``.../.well-known/jwks.json`` URL and rotate them: a new key is listed there, tokens are
signed with it (their header names it by ``kid``), and the old key is removed later, which
is also how a leaked key is revoked.

:class:`JwksKeys` keeps the keys of the last good fetch (PyJWT's ``PyJWKClient`` fetches and
parses, in a worker thread, never on the event loop):

- a token whose ``kid`` none of them has asks for a fetch (:meth:`JwksKeys.wants_fetch`)
  and waits for it: a rotation is picked up by the first token signed with the new key. A
  fetch that did not bring the ``kid`` asked for starts a cooldown of
  :data:`REFETCH_COOLDOWN` seconds (``JWKS_REFRESH_SECONDS`` when shorter) in which unknown
  ``kid`` values are refused without a fetch: a stream of made-up ones costs the identity
  provider one request per cooldown, no more;
- keys older than ``JWKS_REFRESH_SECONDS`` are fetched again in the background, while the
  request goes on with them (a removed key stops verifying within that time);
- a fetch that fails keeps the keys it had, and says why (logged; while there are no keys at
  all, every token is answered 503 with the reason).

The server's start fetches once (:func:`fetch_keys`) and stops, naming ``JWT_PUBLIC_KEY``,
when that fails: a URL that is wrong or serves no JWKS is found at once, not at the first
login.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import jwt

from backend.errors import CandlewireError

logger = logging.getLogger(__name__)

FETCH_TIMEOUT = 10.0  # seconds one fetch may take
REFETCH_COOLDOWN = 10.0  # seconds between fetches asked for by an unknown kid


Keys = list[tuple[str | None, Any]]
"""Verification keys and their ``kid`` (None without one)."""


class FetchWanted(CandlewireError):
    """A token names a key not fetched yet: fetch (:meth:`JwksKeys.fetch`), then check it
    again (the caller is a coroutine; the checks are not)."""

    def __init__(self, kid: str | None) -> None:
        super().__init__(f"a fetch of the JWKS for the key id {kid!r}")
        self.kid = kid


def fetch_keys(url: str, timeout: float = FETCH_TIMEOUT) -> Keys:
    """The keys of the JWKS at ``url`` (blocking); ``ValueError`` saying why there are none:
    the URL cannot be reached, answers an HTTP error (redirects are not followed), or serves
    no JSON object, or no key PyJWT can use."""
    try:
        client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=timeout)
        found = client.get_jwk_set(refresh=True)
    except (jwt.PyJWTError, ValueError, OSError) as exc:  # OSError: a reset while reading
        raise ValueError(f"cannot fetch the JWKS at {url}: {exc}") from None
    return [(key.key_id, key.key) for key in found.keys]


class JwksKeys:
    """The keys of one JWKS URL, fetched when needed (see the module docstring)."""

    def __init__(self, url: str, refresh_seconds: float) -> None:
        self.url = url
        self.refresh_seconds = refresh_seconds  # JWKS_REFRESH_SECONDS
        self.keys: Keys = []
        self.fetched_at = -float("inf")  # monotonic time of the last good fetch
        self.asked_at = -float("inf")  # of the last fetch asked for by an unknown kid
        self.failure = "not fetched yet"  # why the last fetch failed ("" after a good one)
        self._fetching: asyncio.Task[None] | None = None  # the one fetch under way

    def wants_fetch(self, kid: str | None) -> bool:
        """Whether a token naming ``kid`` (None: none) should wait for a fetch first: no key
        has that ``kid`` (or there are no keys), and a fetch is under way or the cooldown
        is over."""
        if self.keys and (kid is None or any(key_id == kid for key_id, _ in self.keys)):
            return False
        if self._fetching is not None and not self._fetching.done():
            return True  # wait for the fetch under way (the new key's other first tokens)
        cooldown = min(REFETCH_COOLDOWN, self.refresh_seconds)  # no fewer than the refresh
        return time.monotonic() - self.asked_at >= cooldown

    def stale(self) -> bool:
        """Whether the keys are old enough to be fetched again in the background."""
        return time.monotonic() - self.fetched_at >= self.refresh_seconds

    async def fetch(self, kid: str | None) -> None:
        """Wait for a fetch (the one under way, else a new one) asked for by a token naming
        ``kid``. The cooldown runs from it unless it brought that key: made-up ``kid`` values
        never appear, so they wait out the cooldown, and a real rotation (or the first token
        after the start) leaves the next one free to fetch."""
        if self._fetching is None or self._fetching.done():
            self.asked_at = time.monotonic()
        await asyncio.shield(self.refresh())
        if kid is not None and any(key_id == kid for key_id, _ in self.keys):
            self.asked_at = -float("inf")

    def refresh(self) -> asyncio.Task[None]:
        """Start a fetch unless one is under way; the task (owned here: its outcome is
        logged, never raised) either way."""
        if self._fetching is None or self._fetching.done():
            self._fetching = asyncio.get_running_loop().create_task(self._fetch())
        return self._fetching

    async def _fetch(self) -> None:
        try:
            keys = await asyncio.to_thread(fetch_keys, self.url)
        except ValueError as exc:
            self.failure = str(exc)
            kept = len(self.keys)
            logger.warning("JWT_PUBLIC_KEY: %s; the %d keys fetched before stay", exc, kept)
            return
        known = {key_id for key_id, _ in self.keys}
        if {key_id for key_id, _ in keys} != known or self.failure:
            logger.info("JWT_PUBLIC_KEY: %d keys from %s", len(keys), self.url)
        self.keys, self.fetched_at, self.failure = keys, time.monotonic(), ""
