"""TA-Lib imported without pandas (``backend.indicators.talib_loader``): the hub's start-up
skips pandas, TA-Lib still computes, and pandas is left as it was for everyone else."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from backend.indicators import talib_loader
from tests.harness import ROOT

FRESH = """
import sys
import numpy as np
from backend.indicators.registry import build_indicators
indicators = build_indicators()
values = indicators.get("talib.momentum.RSI").calc({"close": np.arange(1.0, 40.0)}, timeperiod=14)
print(len(indicators), "pandas" in sys.modules, "polars" in sys.modules, values[0][-1])
import pandas
print(pandas.Series([1.0, 2.0]).sum())
"""


def test_the_catalogue_builds_and_computes_without_importing_pandas() -> None:
    done = subprocess.run(
        [sys.executable, "-c", FRESH],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    count, pandas_loaded, polars_loaded, rsi = first.split()
    assert int(count) > 150
    assert (pandas_loaded, polars_loaded) == ("False", "False")
    assert float(rsi) == 100.0  # a rising series
    assert second == "3.0"  # pandas itself still imports and works afterwards


def test_hiding_puts_back_a_module_that_was_loaded_and_forgets_one_that_was_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loaded = types.ModuleType("candlewire_test_loaded")
    monkeypatch.setitem(sys.modules, "candlewire_test_loaded", loaded)
    names = ("candlewire_test_loaded", "candlewire_test_absent")
    with talib_loader._hidden(names):
        for name in names:
            with pytest.raises(ModuleNotFoundError) as refused:
                __import__(name)
            assert refused.value.name == name  # what talib checks: "not installed"
    assert sys.modules["candlewire_test_loaded"] is loaded
    assert "candlewire_test_absent" not in sys.modules
