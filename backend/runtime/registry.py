"""The provider registry: one line per provider, key -> import path ``module:Class``.

The key is the provider's ``source`` on the wire and the name used in ``PROVIDERS``.
To add your own provider, add one line here (see README, "Write your own provider").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.plugins import load_class

if TYPE_CHECKING:
    from backend.runtime.provider import Provider

PROVIDER_REGISTRY: dict[str, str] = {
    "csv": "backend.data_providers.csv:CSVProvider",
    "binance": "backend.data_providers.binance:BinanceProvider",
    "polygon": "backend.data_providers.polygon:PolygonProvider",
}


def known_keys() -> list[str]:
    """The registered provider keys, sorted."""
    return sorted(PROVIDER_REGISTRY)


def load_provider_class(path: str) -> type[Provider]:
    """Import ``module:Class`` and check that it is a ``Provider`` subclass."""
    from backend.runtime.provider import Provider

    return load_class(path, Provider, "provider")
