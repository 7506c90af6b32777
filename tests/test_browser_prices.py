"""Prices far from the usual ones on the web page, in headless Chromium at desktop and phone
size: a symbol trading near 0.000000001 (a meme token, a pair quoted in BTC) must read as
its digits in the legend, the header, the price axis and the alert box, not as zeros; a
dataset row whose precision the chart library cannot draw must not break the chart.

The server runs ``OddPriceProvider`` (tests/providers.py): the ``counting`` bars scaled
to such prices. Every test fails on a console error and keeps a screenshot in
``test-artifacts/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.browsing import (
    browser,
    console,
    js,
    open_page,
    page,
    page_server,
    shot,
    viewport,
)
from tests.harness import ServerProcess

__all__ = ["browser", "console", "page", "viewport"]  # the shared fixtures

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp: Path = tmp_path_factory.mktemp("browser-prices")
    with page_server(
        tmp,
        PROVIDERS="odd",
        EXTRA_PROVIDERS="odd=tests.providers:OddPriceProvider",
        CANDLEWIRE_TEST_PERIOD="0.25",
        STREAM_LINGER_SECONDS="0.5",
    ) as running:
        yield running


def significant(text: str) -> str:
    """The digits of a price as shown, without its leading zeros, point and separators."""
    return text.replace(",", "").replace(".", "").lstrip("0")


LEGEND_CLOSE = """[...document.querySelectorAll('.panel .legend .lg-item')]
    .find((item) => item.querySelector('.lg-label')?.textContent === 'C')
    .querySelector('.lg-value').textContent"""


def shown_prices(page: Page, close: float) -> dict[str, str]:
    """``close`` as the price axis formats it, and the legend's and the header's last price."""
    return {
        "axis": js(
            page, "c => window.candlewire.charts[0].series.priceFormatter().format(c)", close
        ),
        "legend": js(page, LEGEND_CLOSE),
        "header": page.locator(".panel .quote-price").inner_text(),
    }


@pytest.mark.parametrize("symbol", ["PEPE", "SATS"])
def test_a_price_near_a_billionth_shows_its_digits_not_zeros(
    server: ServerProcess, page: Page, viewport: str, console: list[str], symbol: str
) -> None:
    """PEPE (about 0.000000001) read 0.00000000 everywhere, the axis without labels. SATS
    (about 0.000000015) gets 11 decimals, at which lightweight-charts 5.2.1 formats every
    price wrongly (0.000000015 as 0.99999999998); 12 are used instead."""
    open_page(page, server, f"?source=odd&s={symbol}&i=1m")
    close = js(page, "window.candlewire.charts[0].ownBars().at(-1).close")
    assert 1e-10 < close < 1e-7
    for where, text in shown_prices(page, close).items():
        assert len(significant(text)) >= 3, f"the {where} shows {close} as {text}"
        assert abs(float(text.replace(",", "")) - close) <= close * 0.01, (where, text, close)
    page.locator("#alert-button").click()
    level = float(page.locator("#alert-level").input_value())
    assert abs(level - close) <= close * 0.01, f"the alert box offers {level} for {close}"
    sizes = js(page, "[document.scrollingElement.scrollWidth, innerWidth]")
    assert sizes[0] <= sizes[1], f"the page is {sizes[0]} px wide in a {sizes[1]} px window"
    shot(page, f"prices-{symbol}-{viewport}")
    assert console == []


def test_a_precision_the_chart_library_cannot_draw_leaves_the_chart_drawn(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    """WEI's dataset row says precision 18 (an ERC-20 token's decimals): lightweight-charts
    threw "unexpected base" at every frame and drew no bar, no axis (as with pricescale
    1e18; a negative precision threw in the page's own formatting, leaving the chart
    empty). A precision is kept within what the library draws."""
    open_page(page, server, "?source=odd&s=WEI&i=1m")
    close = js(page, "window.candlewire.charts[0].ownBars().at(-1).close")
    for where, text in shown_prices(page, close).items():
        assert abs(float(text.replace(",", "")) - close) <= close * 1e-6, (where, text, close)
    page.wait_for_function(  # the axis is drawn: its labels leave room beside the candles
        "window.candlewire.charts[0].chart.priceScale('right').width() > 0"
    )
    shot(page, f"prices-WEI-{viewport}")
    assert console == []


def test_the_tick_size_a_binance_row_states_sets_the_decimals_shown(
    server: ServerProcess, page: Page, viewport: str, console: list[str]
) -> None:
    """The Binance provider's rows state the exchange's tick size as ``price_precision``
    (0.00001: 5 decimals); the page read only ``precision`` and ``pricescale`` and guessed
    from the bars, which show fewer decimals when their prices end in zeros."""
    open_page(page, server, "?source=odd&s=TICK&i=1m")
    close = js(page, "window.candlewire.charts[0].ownBars().at(-1).close")
    for where, text in shown_prices(page, close).items():
        assert len(text.rpartition(".")[2]) == 5, f"the {where} shows {close} as {text}"
    assert console == []
