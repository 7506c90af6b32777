"""TA-Lib, imported without its pandas and polars wrappers.

``talib`` wraps every function in a check for pandas and polars series when either library
is installed, and imports pandas to do so: 0.35 s of a hub's 1.3 s of imports, and a few
hundred nanoseconds of ``isinstance`` checks per call. Candlewire passes TA-Lib only numpy
arrays, so the import here hides pandas and polars from ``talib`` (as if not installed) and
puts them back at once; pandas stays importable and usable everywhere else. TA-Lib called
in this process (also from your own indicators) takes numpy arrays, not pandas series
(``series.to_numpy()``), as the README says.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

HIDDEN = ("pandas", "polars")


@contextmanager
def _hidden(names: tuple[str, ...]) -> Iterator[None]:
    """Imports of ``names`` fail inside (``ModuleNotFoundError``); afterwards ``sys.modules``
    holds what it held before."""
    saved = {name: sys.modules.get(name) for name in names}
    for name in names:
        sys.modules[name] = None  # type: ignore[assignment]  # "not installed" to an import
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                del sys.modules[name]
            else:
                sys.modules[name] = module


with _hidden(HIDDEN):
    import talib
    import talib.abstract
    from talib import _ta_lib

__all__ = ["_ta_lib", "talib"]
