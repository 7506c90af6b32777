"""Loading user-supplied classes named by an import path ``module:Class``.

Providers (``PROVIDERS`` / ``EXTRA_PROVIDERS``) and indicators (``EXTRA_INDICATORS``) are
plugged in the same way; a bad path is a :class:`~backend.errors.ConfigError` at startup that
names it.
"""

from __future__ import annotations

import importlib
from typing import TypeVar

from backend.errors import ConfigError

T = TypeVar("T")


def load_class(path: str, base: type[T], what: str) -> type[T]:
    """Import ``module:Class`` from ``path`` and check that it is a subclass of ``base``.

    ``what`` names the kind of plugin in error messages ("provider", "indicator").
    """
    module_name, sep, class_name = path.partition(":")
    if not sep or not module_name or not class_name:
        raise ConfigError(f"{what} import path {path!r} must look like 'module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {what} module {module_name!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, base):
        raise ConfigError(f"{path!r} is not a {base.__name__} subclass")
    return cls
