"""The Polygon provider driven directly on the fake Polygon (``tests/fakes/polygon.py``):
:class:`Direct` records its events; :func:`rest_bars` is what the fake's REST says a bar is.
Shared by the Polygon test files."""

from __future__ import annotations

import time
from collections.abc import Callable

from backend import settings as config
from backend.data_providers.polygon import PolygonProvider
from backend.data_providers.polygon.bars import timespan
from backend.model.bars import Bar
from backend.runtime.messages import BarUpdate, Event, Status
from tests.fakes.polygon import FakePolygon
from tests.harness import seconds

ALL_MARKETS = "stocks,crypto,fx,indices,options"


def rest_bars(fake: FakePolygon, ticker: str, interval: str, first: int, last: int) -> list[Bar]:
    """The fake's REST aggregates of ``interval`` opening in ``[first, last]`` as bars."""
    multiplier, span = timespan(interval)
    rows = fake.aggregates(ticker, multiplier, span, first * 1000, last * 1000)
    return [(r["t"] // 1000, r["o"], r["h"], r["l"], r["c"], float(r["v"])) for r in rows]


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + seconds(timeout)
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Direct:
    """A PolygonProvider on ``fake``, recording its events."""

    def __init__(self, fake: FakePolygon, markets: str = ALL_MARKETS) -> None:
        self.fake = fake
        self.events: list[Event] = []
        settings = config.load_settings(
            PROVIDERS="polygon",
            POLYGON_API_KEY="k",
            POLYGON_API_URL=fake.base_url,
            POLYGON_WS_URL=f"ws://{fake.ws_feed}",
            POLYGON_MARKETS=markets,
        )
        self.provider = PolygonProvider()
        self.provider._attach("polygon", settings, self.events.append)
        self.provider.init()

    def subscribe(self, symbol: str, *intervals_: str) -> None:
        for interval in intervals_:
            self.provider._subscribe(1, symbol, interval)

    def published(self, symbol: str, interval: str) -> dict[int, Bar]:
        """The last bar published for each open time of ``(symbol, interval)``."""
        found: dict[int, Bar] = {}
        for event in list(self.events):
            if isinstance(event, BarUpdate) and (event.symbol, event.interval) == (
                symbol,
                interval,
            ):
                found[event.bar[0]] = event.bar
        return found

    def statuses(self) -> list[Status]:
        return [e for e in list(self.events) if isinstance(e, Status)]

    def close(self) -> None:
        self.provider.shutdown()
