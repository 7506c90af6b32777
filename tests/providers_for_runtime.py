"""Small providers for the runner and supervisor unit tests (imported by provider processes).

``ScriptedProvider`` records its hook calls on the instance and can be told, through the
symbol it is asked for, to fail: ``BOOM`` raises from a hook or ``get_history``, ``GONE`` is
an unknown symbol, ``DIE`` exits the process, ``HANG`` never answers history, ``SLOW``
answers after a second, ``KILLER`` exits the process from ``get_history``, ``EXIT`` calls
``sys.exit`` there, ``NOBARS`` returns no bar at all, ``STUCK`` blocks its first-subscriber
hook until ``hang`` is set.
``CANDLEWIRE_TEST_INIT_FAILS`` makes ``init`` raise, ``CANDLEWIRE_TEST_INIT_EXITS`` makes it
call ``sys.exit(7)``.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from backend.errors import UnknownSymbol
from backend.runtime.provider import Provider

T0 = 1_700_000_000 - 1_700_000_000 % 3600


class ScriptedProvider(Provider):
    def init(self) -> None:
        self.calls: list[str] = []
        self.hang = threading.Event()
        if os.environ.get("CANDLEWIRE_TEST_INIT_FAILS"):
            raise RuntimeError("init failed on purpose")
        if os.environ.get("CANDLEWIRE_TEST_INIT_EXITS"):
            sys.exit(7)

    def on_first_subscriber(self, symbol: str, interval: str) -> None:
        self.calls.append(f"first {symbol} {interval}")
        if symbol == "BOOM":
            raise RuntimeError("a hook failed on purpose")
        if symbol == "DIE":
            os._exit(3)
        if symbol == "STUCK":  # a hook that does not return (until the test lets it)
            self.hang.wait(30)

    def start_streaming(self, ws_client: int, symbol: str, interval: str) -> None:
        self.calls.append(f"start {ws_client} {symbol} {interval}")

    def on_close(self, ws_client: int, symbol: str, interval: str) -> None:
        self.calls.append(f"close {ws_client} {symbol} {interval}")

    def on_last_subscriber(self, symbol: str, interval: str) -> None:
        self.calls.append(f"last {symbol} {interval}")

    def get_history(
        self, symbol: str, interval: str, start_time_query: str, end_time_query: str, count: int
    ) -> list[object]:
        if symbol == "GONE":
            raise UnknownSymbol(f"unknown symbol {symbol!r}")
        if symbol == "BOOM":
            raise RuntimeError("vendor exploded")
        if symbol == "HANG":
            self.hang.wait(60)
            return []
        if symbol == "SLOW":
            time.sleep(1)
        if symbol == "KILLER":
            os._exit(4)
        if symbol == "EXIT":  # a vendor library that gives up with sys.exit
            sys.exit(5)
        if symbol == "MIXED":  # a vendor's rows with a few that are no bars among them
            return [None, [T0 * 1000, "x"], {"close": 1.0}, (T0 + 3600, 1, 2, 0.5, 1.5, 3)]
        if symbol == "EVERYTHING":  # its whole data set, whatever the window: 50,000 hours
            return [(T0 + 3600 * i, 1.0, 2.0, 0.5, 1.5, 1.0) for i in range(50_000)]
        if symbol == "NOBARS":  # a reply none of whose items is a bar: a provider's bug
            return [{"date": "2023-01-01 00:00:00", "other-NOBARS-1h-close": 1.0}, None]
        if symbol == "SWAPPED":  # one row with its high and low swapped: impossible
            return [(T0, 1.0, 0.5, 2.0, 1.5, 3.0), (T0 + 3600, 1, 2, 0.5, 1.5, 3)]
        # Out of order, with a duplicate, mixed shapes: the runner sorts and converts.
        return [
            [(T0 + 3600) * 1000, "2", "3", "1", "2.5", "10"],
            (T0, 1.0, 2.0, 0.5, 1.5, 5.0),
            {"date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(T0)), "close": 9.0},
        ]

    def shutdown(self) -> None:
        self.calls.append("shutdown")
        self.hang.set()
