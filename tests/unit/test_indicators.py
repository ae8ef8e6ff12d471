"""Indicators (tables/indicators.py) against an independent pandas computation, warm-up edges
included, and across a save and restore of their state."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pandas as pd
import pytest

from tables.indicators import Indicators

REL = 1e-9


def _seeded_ewm(x: pd.Series, n: int, alpha: float) -> pd.Series:
    """An EMA seeded with the mean of its first n valid inputs, by pandas."""
    valid = x.dropna()
    out = pd.Series(np.nan, index=x.index)
    if len(valid) < n:
        return out
    seeded = valid.iloc[n - 1 :].copy()
    seeded.iloc[0] = valid.iloc[:n].mean()
    out.loc[seeded.index] = seeded.ewm(alpha=alpha, adjust=False).mean()
    return out


def reference(closes: np.ndarray) -> pd.DataFrame:
    c = pd.Series(closes.astype(float))
    df = pd.DataFrame(index=c.index)
    for n in (20, 50, 200):
        df[f"sma_{n}"] = c.rolling(n).mean()
    # EMAs of closes less the first: the same values, without losing MACD (a small
    # difference of two large EMAs) to rounding.
    base = c.iloc[0]
    ema = {n: _seeded_ewm(c - base, n, 2 / (n + 1)) for n in (12, 26)}
    for n in (12, 26):
        df[f"ema_{n}"] = ema[n] + base
    df["macd"] = ema[12] - ema[26]
    df["macd_signal"] = _seeded_ewm(df["macd"], 9, 2 / 10)
    df["macd_hist"] = df["macd"] - df["macd_signal"]
    d = c.diff()
    gain = _seeded_ewm(d.clip(lower=0), 14, 1 / 14)
    loss = _seeded_ewm((-d).clip(lower=0), 14, 1 / 14)
    df["rsi_14"] = np.where(loss == 0, 100.0, 100 - 100 / (1 + gain / loss))
    df.loc[gain.isna(), "rsi_14"] = np.nan
    mid, sd = c.rolling(20).mean(), c.rolling(20).std(ddof=0)
    df["bb_mid"], df["bb_upper"], df["bb_lower"] = mid, mid + 2 * sd, mid - 2 * sd
    return df


def _closes(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ticks = np.cumsum(rng.integers(-4, 5, n)) + 20_000
    return ticks * 250_000_000  # ES-like prices in 1e-9 units


def _same(got: float | None, want: float, name: str, i: int) -> None:
    if math.isnan(want):
        assert got is None, f"{name} at bar {i}: {got} before it has enough bars"
    else:
        assert got is not None, f"{name} at bar {i}: missing"
        assert got == pytest.approx(want, rel=REL, abs=1e-6), f"{name} at bar {i}"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_indicators_match_pandas_from_the_first_bar(seed: int) -> None:
    closes = _closes(3000, seed)
    want = reference(closes)
    ind = Indicators()
    for i, c in enumerate(closes.tolist()):
        got = ind.add(c)
        for name in want.columns:
            _same(got[name], float(want[name].iloc[i]), name, i)
    assert ind.count == 3000


def test_flat_prices_give_rsi_100_and_zero_width_bands() -> None:
    ind = Indicators()
    for _ in range(30):
        v = ind.add(5_000_000_000_000)
    assert v["rsi_14"] == 100.0 and v["bb_upper"] == v["bb_lower"] == 5e12


def test_state_round_trips_mid_series() -> None:
    closes = _closes(600, 9).tolist()
    whole = Indicators()
    expect = [whole.add(c) for c in closes]
    for cut in (1, 13, 26, 34, 199, 250):
        first = Indicators()
        for c in closes[:cut]:
            first.add(c)
        again = Indicators.from_dict(orjson.loads(orjson.dumps(first.to_dict())))
        assert [again.add(c) for c in closes[cut:]] == expect[cut:], cut
