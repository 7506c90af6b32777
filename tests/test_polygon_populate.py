"""Populate at scale: the real ``populate.py`` reads a quarter of a million option contracts
from the fake Polygon page by page, within bounded memory. The million, with its time and
memory beside their ceilings, is ``bench/polygon_populate.py``'s (the README's figures): a
timed assertion here would measure the machine, and the million took some 35 s of the
suite's CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.polygon_populate import measure

POPULATE_TICKERS = 250_000
# measured: populate.py peaks at about 90 MB for 100,000 contracts, 127 MB for 250,000 and
# 207 MB for a million; holding the contracts it has read (about 1 KB each) would pass 350 MB
POPULATE_PEAK_MB = 200.0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_quarter_million_option_contracts_populate_page_by_page_within_bounded_memory(
    tmp_path: Path,
) -> None:
    figures = measure(POPULATE_TICKERS, tmp_path)
    assert figures.exit_code == 0, figures.output
    assert figures.rows == POPULATE_TICKERS
    assert figures.requests == {"/v3/reference/options/contracts": POPULATE_TICKERS // 1000}
    assert figures.peak_rss_mb < POPULATE_PEAK_MB, figures
