"""Providers for the ``populate.py`` tests, registered through ``EXTRA_PROVIDERS``.

``TinyProvider`` yields ``POPULATE_TEST_ROWS`` rows (default 3) named ``<PREFIX><n>``
(``POPULATE_TEST_PREFIX``, default ``TINY``), raises after ``POPULATE_TEST_FAIL_AFTER`` rows
when that is set, and appends each hook it runs to the file ``POPULATE_TEST_LOG`` names.
``BrokenProvider`` fails in ``init``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from backend.runtime.provider import Provider

OUTPUTS = [{"name": n, "y_axis": "price"} for n in ("open", "high", "low", "close")] + [
    {"name": "volume", "y_axis": "volume"}
]


def _record(hook: str) -> None:
    path = os.environ.get("POPULATE_TEST_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(hook + "\n")


class TinyProvider(Provider):
    """A provider with a small, configurable dataset."""

    def init(self) -> None:
        _record("init")

    def get_dataset(self) -> Iterator[dict[str, Any]]:
        _record("get_dataset")
        count = int(os.environ.get("POPULATE_TEST_ROWS", "3"))
        fail_after = int(os.environ.get("POPULATE_TEST_FAIL_AFTER", "-1"))
        prefix = os.environ.get("POPULATE_TEST_PREFIX", "TINY")
        for n in range(count):
            if n == fail_after:
                raise RuntimeError("the upstream went away")
            yield {
                "source": self.source,
                "name": f"{prefix}{n}",
                "name_label": f"Tiny Instrument {n}",
                "type": "candlestick",
                "categories": ["Test"],
                "intervals": ["1m", "1h", "1d"],
                "outputs": OUTPUTS,
            }

    def shutdown(self) -> None:
        _record("shutdown")


class BrokenProvider(Provider):
    """A provider whose ``init`` fails."""

    def init(self) -> None:
        raise RuntimeError("cannot reach the upstream")
