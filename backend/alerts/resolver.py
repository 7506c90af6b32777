"""The resolver of the "public only" policy (``ALERT_PUSH_PUBLIC_ONLY``): aiohttp's default
resolver, keeping only globally routable addresses (:func:`.destinations.is_public`).

A module of its own so that aiohttp is imported only with the delivery's HTTP client
(:mod:`backend.alerts.delivery`), not by everything that checks a URL.
"""

from __future__ import annotations

import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from backend.alerts.destinations import is_public


class PublicResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, keeping only globally routable addresses
    (none left: ``OSError``, a failed connection)."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        public = [r for r in found if is_public(ipaddress.ip_address(r["host"]))]
        if not public:
            raise OSError(f"{host} resolves to no public address (ALERT_PUSH_PUBLIC_ONLY)")
        return public

    async def close(self) -> None:
        await self._inner.close()
