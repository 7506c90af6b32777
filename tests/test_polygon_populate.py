"""Populate at scale: the real ``populate.py`` reads a million option contracts from the fake
Polygon within minutes and bounded memory (measured by ``bench/polygon_populate.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.polygon_populate import measure

POPULATE_TICKERS = 1_000_000
POPULATE_SECONDS = 180.0  # measured: about 60 s on 2 cores (fake, populate and writer)
POPULATE_PEAK_MB = 400.0  # measured: populate.py about 60 MB, its SQLite writer about 200 MB


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_million_option_contracts_populate_in_minutes_within_bounded_memory(
    tmp_path: Path,
) -> None:
    figures = measure(POPULATE_TICKERS, tmp_path)
    assert figures.exit_code == 0, figures.output
    assert figures.rows == POPULATE_TICKERS
    assert figures.requests == {"/v3/reference/options/contracts": POPULATE_TICKERS // 1000}
    assert figures.seconds < POPULATE_SECONDS, figures
    assert figures.peak_rss_mb < POPULATE_PEAK_MB, figures
