"""A user-written indicator shipped as the README's example: percent change over N bars.

It is registered in :data:`backend.indicators.registry.INDICATOR_REGISTRY` exactly as a user
would register their own, so the example is tested like any other indicator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from backend.indicators.base import FloatArray, Indicator, Input, Output


class PercentChange(Indicator):
    """``100 * (close / close[length bars ago] - 1)``."""

    name = "Percent Change"
    categories = ("performance",)
    columns = ("close",)
    inputs = (Input("length", default=1, min=1, max=10_000),)
    outputs = (Output("change", y_axis="percent"),)

    def calc(self, data: Mapping[str, FloatArray], **inputs: float) -> Sequence[FloatArray]:
        close = data["close"]
        length = int(inputs["length"])
        change = np.full(len(close), np.nan)
        if len(close) > length:
            with np.errstate(divide="ignore", invalid="ignore"):  # a zero close: inf -> null
                change[length:] = 100.0 * (close[length:] / close[:-length] - 1.0)
        return [change]

    def lookback(self, inputs: Mapping[str, float]) -> int:
        return int(inputs["length"])
