"""The provider registry: one line per provider, key -> import path ``module:Class``.

The key is the provider's ``source`` on the wire and the name used in ``PROVIDERS``.
To add your own provider, add one line here (see README, "Write your own provider").
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from backend.errors import ConfigError

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

    module_name, sep, class_name = path.partition(":")
    if not sep or not module_name or not class_name:
        raise ConfigError(f"provider import path {path!r} must look like 'module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import provider module {module_name!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, Provider):
        raise ConfigError(f"{path!r} is not a Provider subclass")
    return cls
