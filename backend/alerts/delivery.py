"""Delivery of alert events: Web Push (``pywebpush``, RFC 8291/8292) and webhooks.

Each call retries with exponential backoff on 5xx, 429 and network errors, gives up at once
on other 4xx, and reports 404/410 from a push service as :attr:`Outcome.GONE` (the browser
dropped the subscription; the caller forgets it). Every outcome is logged. Callers run
these as their own tasks: nothing here is awaited by streaming.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from py_vapid import Vapid02
from pywebpush import WebPushException, webpush_async

from backend.alerts.model import Subscription
from backend.alerts.vapid import VapidKeys

logger = logging.getLogger(__name__)

ATTEMPTS = 5
BACKOFF_SECONDS = 1.0  # doubled after each failed attempt
TIMEOUT_SECONDS = 10.0
PUSH_TTL = 24 * 3600
CONTACT = "mailto:admin@localhost"


class Outcome(enum.Enum):
    SENT = "sent"
    GONE = "gone"  # 404/410: the subscription or hook no longer exists
    FAILED = "failed"


class _Retry(Exception):
    """An attempt failed in a way worth retrying."""


class Delivery:
    """Sends pushes and webhook calls over one HTTP session."""

    def __init__(
        self,
        keys: VapidKeys,
        contact: str = CONTACT,
        attempts: int = ATTEMPTS,
        backoff: float = BACKOFF_SECONDS,
    ) -> None:
        self.vapid = Vapid02(private_key=keys.private_key)
        self.contact = contact
        self.attempts = attempts
        self.backoff = backoff
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def push(self, subscription: Subscription, payload: dict[str, Any]) -> Outcome:
        """Encrypt ``payload`` (JSON) for the subscription and post it, VAPID-signed."""
        data = json.dumps(payload)

        async def attempt() -> int:
            try:
                await webpush_async(
                    subscription.info(),
                    data,
                    vapid_private_key=self.vapid,
                    vapid_claims={"sub": self.contact},
                    ttl=PUSH_TTL,
                    timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS),
                    aiohttp_session=self._http(),
                )
            except WebPushException as exc:
                return exc.status_code or 0
            return 201

        return await self._deliver(f"push to {_origin(subscription.endpoint)}", attempt)

    async def webhook(self, url: str, body: dict[str, Any]) -> Outcome:
        """POST ``body`` as JSON to ``url``."""

        async def attempt() -> int:
            async with self._http().post(url, json=body) as response:
                return response.status

        return await self._deliver(f"webhook {_origin(url)}", attempt)

    async def _deliver(self, what: str, attempt: Callable[[], Awaitable[int]]) -> Outcome:
        delay = self.backoff
        for number in range(1, self.attempts + 1):
            try:
                status = await attempt()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                status, why = 0, f"{type(exc).__name__}: {exc}"
            else:
                why = f"HTTP {status}"
            if 200 <= status < 300:
                logger.info("%s: delivered (attempt %d)", what, number)
                return Outcome.SENT
            if status in (404, 410):
                logger.info("%s: %s, the subscription is gone", what, why)
                return Outcome.GONE
            if 400 <= status < 500 and status != 429:
                logger.warning("%s: %s, not retried", what, why)
                return Outcome.FAILED
            if number < self.attempts:
                logger.warning("%s: %s, retrying in %.1f s", what, why, delay)
                await asyncio.sleep(delay)
                delay *= 2
        logger.warning("%s: %s, gave up after %d attempts", what, why, self.attempts)
        return Outcome.FAILED


def _origin(url: str) -> str:
    """Scheme and host of ``url``: push endpoints carry a secret token in the path."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"
