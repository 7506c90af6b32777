"""The indicator registry: the TA-Lib built-ins, the entries of ``INDICATOR_REGISTRY`` and
those of the ``EXTRA_INDICATORS`` setting (``key=module:Class``), by id.

Like the provider registry, a user indicator is one line here or one entry in the setting;
the key is its catalogue id (letters, digits, ``_`` and ``.``). A class that cannot be
imported, is not an :class:`~.base.Indicator`, or declares nothing is a
:class:`~backend.errors.ConfigError` at startup, never at the first request.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from backend.errors import ConfigError, IndicatorError
from backend.indicators.base import Indicator
from backend.indicators.catalogue import Catalogue, is_valid_id
from backend.indicators.talib_functions import talib_indicators
from backend.plugins import load_class

# Your own indicators: id -> "module:Class" (see README, "Write your own indicator").
INDICATOR_REGISTRY: dict[str, str] = {
    "candlewire.performance.PercentChange": "backend.indicators.examples:PercentChange",
}


class Indicators:
    """Every indicator by id, and their catalogue; built once in the app's lifespan."""

    def __init__(self, indicators: Mapping[str, Indicator]) -> None:
        self._by_id = dict(indicators)
        self.catalogue = Catalogue(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, indicator_id: object) -> bool:
        return indicator_id in self._by_id

    def get(self, indicator_id: str) -> Indicator:
        """The indicator registered as ``indicator_id``, or an ``unknown_indicator`` error."""
        try:
            return self._by_id[indicator_id]
        except KeyError:
            raise IndicatorError(
                "unknown_indicator", f"unknown indicator {indicator_id[:200]!r}"
            ) from None


def build_indicators(extra: Iterable[str] = ()) -> Indicators:
    """The built-ins, ``INDICATOR_REGISTRY`` and ``extra`` (``key=module:Class`` entries)."""
    found: dict[str, Indicator] = dict(talib_indicators())
    entries = dict(INDICATOR_REGISTRY)
    for entry in extra:
        key, _, path = entry.partition("=")
        entries[key.strip()] = path.strip()
    for key, path in entries.items():
        if not is_valid_id(key):
            raise ConfigError(f"EXTRA_INDICATORS: id {key!r} may hold only letters, digits, _ .")
        found[key] = load_indicator_class(path)()
    return Indicators(found)


def load_indicator_class(path: str) -> type[Indicator]:
    """Import ``module:Class`` and check that it is a complete ``Indicator`` subclass."""
    cls = load_class(path, Indicator, "indicator")
    if not cls.name or not cls.outputs or not cls.columns:
        raise ConfigError(f"{path!r} must declare name, columns and outputs")
    if cls.calc is Indicator.calc:
        raise ConfigError(f"{path!r} does not implement calc")
    for spec in cls.inputs:
        numbers = (spec.default, spec.min, spec.max)
        if not all(isinstance(n, int | float) and math.isfinite(n) for n in numbers):
            raise ConfigError(f"{path!r}: input {spec.name!r} needs finite default, min and max")
        if spec.integer and not float(spec.default).is_integer():
            raise ConfigError(f"{path!r}: input {spec.name!r} is an integer; its default is not")
        if not spec.min <= spec.default <= spec.max:
            raise ConfigError(
                f"{path!r}: input {spec.name!r} has its default {spec.default} outside "
                f"{spec.min}..{spec.max}"
            )
    return cls
