"""Generate the sample CSV files of ``data/`` (deterministic: fixed seed, fixed end date).

    .venv/bin/python scripts/make_sample_data.py [--out data]

Writes two candlestick instruments with 1-minute bars over 35 days ending 2026-11-01 00:00 UTC
(``BTCUSD.csv`` with ``YYYY-MM-DD HH:MM:SS`` dates, ``stocks/ACME.csv`` with epoch seconds)
and one file of hourly line series over a year (``macro.csv``, ISO-8601 dates). Prices are
a geometric random walk simulated on sub-minute steps, so each bar's high and low are the
extremes of its own path; volatility and volume follow a daily pattern.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

SEED = 20261101
END = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp())
MINUTE = 60
HOUR = 3600
DAY = 86_400
YEAR_MINUTES = 365 * 24 * 60
SUBSTEPS = 12  # simulated price steps per minute

Floats = npt.NDArray[np.float64]


def daily_profile(times: npt.NDArray[np.int64], peak_hour: float, width: float) -> Floats:
    """A smooth daily cycle: 1 far from ``peak_hour`` (UTC), about 3 at the peak."""
    hour = (times % DAY) / HOUR
    distance = np.minimum(np.abs(hour - peak_hour), 24 - np.abs(hour - peak_hour))
    profile: Floats = 1.0 + 2.0 * np.exp(-((distance / width) ** 2))
    return profile


def candles(
    rng: np.random.Generator,
    times: npt.NDArray[np.int64],
    start_price: float,
    annual_vol: float,
    peak_hour: float,
) -> tuple[Floats, Floats, Floats, Floats, Floats]:
    """OHLC of a geometric random walk, and a volume factor that follows activity."""
    n = len(times)
    activity = daily_profile(times, peak_hour, 3.0)
    regime = np.exp(np.cumsum(rng.normal(0, 0.02, n)) * 0.3)  # slowly drifting volatility
    regime /= regime.mean()
    sigma = annual_vol / np.sqrt(YEAR_MINUTES) * np.sqrt(activity / activity.mean()) * regime
    steps = rng.standard_t(5, (n, SUBSTEPS)) * np.sqrt(3 / 5) / np.sqrt(SUBSTEPS)
    steps *= sigma[:, None]
    path = np.log(start_price) + np.cumsum(steps.ravel()).reshape(n, SUBSTEPS)
    opens = np.r_[np.log(start_price), path[:-1, -1]]
    with_open = np.concatenate([opens[:, None], path], axis=1)
    prices = np.exp(with_open)
    o, c = prices[:, 0], prices[:, -1]
    h, lo = prices.max(axis=1), prices.min(axis=1)
    move = np.abs(np.log(c / o)) / sigma
    volume = activity * (0.6 + 0.4 * move) * rng.lognormal(0, 0.5, n)
    return o, h, lo, c, volume


def write_candles(
    path: Path,
    times: npt.NDArray[np.int64],
    ohlcv: tuple[Floats, Floats, Floats, Floats, Floats],
    date_header: str,
    epoch: bool,
    volume_decimals: int,
) -> None:
    o, h, lo, c, v = ohlcv
    dates = times.astype(str) if epoch else _dates(times, "%Y-%m-%d %H:%M:%S")
    lines = [f"{date_header},open,high,low,close,volume"]
    for row in zip(dates, o, h, lo, c, v, strict=True):
        d, o_, h_, l_, c_, v_ = row
        lines.append(f"{d},{o_:.2f},{h_:.2f},{l_:.2f},{c_:.2f},{v_:.{volume_decimals}f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _dates(times: npt.NDArray[np.int64], fmt: str) -> list[str]:
    return [datetime.fromtimestamp(int(t), UTC).strftime(fmt) for t in times]


def write_macro(rng: np.random.Generator, path: Path) -> None:
    """Hourly lines: a stepwise policy rate, a dollar index walk, a mean-reverting gauge."""
    times = np.arange(END - 365 * DAY, END, HOUR, dtype=np.int64)
    n = len(times)
    decisions = np.zeros(n)
    decisions[rng.choice(n, 6, replace=False)] = rng.choice([-0.25, 0.25], 6)
    rate = 4.5 + np.cumsum(decisions)
    dollar = 104 * np.exp(np.cumsum(rng.normal(0, 0.07 / np.sqrt(365 * 24), n)))
    gauge = np.zeros(n)
    for i in range(1, n):
        gauge[i] = gauge[i - 1] * 0.98 + rng.normal(0, 2.0)
    lines = ["date,policy_rate,dollar_index,risk_gauge"]
    for d, r, x, g in zip(_dates(times, "%Y-%m-%dT%H:%M:%SZ"), rate, dollar, gauge, strict=True):
        lines.append(f"{d},{r:.2f},{x:.3f},{g:.2f}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "data")
    out: Path = parser.parse_args().out
    rng = np.random.default_rng(SEED)
    times = np.arange(END - 35 * DAY, END, MINUTE, dtype=np.int64)
    btc = candles(rng, times, 68_000.0, 0.55, peak_hour=15.0)
    btc = (*btc[:4], btc[4] * 9.0)
    write_candles(out / "BTCUSD.csv", times, btc, "date", epoch=False, volume_decimals=3)
    acme = candles(rng, times, 152.0, 0.30, peak_hour=17.0)
    acme = (*acme[:4], np.round(acme[4] * 2_500.0))
    write_candles(
        out / "stocks" / "ACME.csv", times, acme, "timestamp", epoch=True, volume_decimals=0
    )
    write_macro(rng, out / "macro.csv")
    for path in sorted(out.rglob("*.csv")):
        print(f"{path}: {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
