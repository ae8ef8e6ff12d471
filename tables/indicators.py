"""Streaming indicators, updated once per closed bar in O(1). No Faust here.

One `Indicators` per (instrument, interval) takes bar closes in order. A value is None until
enough bars exist for it (never a zero standing in for "not yet"):

- SMA 20/50/200: exact, from integer sums of closes over a ring of the last 200.
- EMA 12/26: seeded with the SMA of the first n closes (TA-Lib's convention), then
  ema += (close - ema) * 2 / (n + 1), on closes less the first (for precision: see `add`).
- RSI 14, Wilder: the first average gain and loss are the means of the first 14 changes, then
  avg = (avg * 13 + x) / 14; RSI = 100 - 100 / (1 + gain / loss), 100 when there is no loss.
- MACD 12/26/9: EMA12 - EMA26 (from bar 26), its signal an EMA 9 of MACD seeded with the SMA
  of its first 9 values (from bar 34), and the histogram MACD - signal.
- Bollinger 20/2: SMA 20 and the population standard deviation of the same 20 closes, from
  exact integer sums of closes and their squares.

Prices are in the bars' units (1e-9); outputs are floats in the same units. State round-trips
through `to_dict`/`from_dict` (the indicators table), so a restart continues exactly.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Final

SMA_PERIODS: Final = (20, 50, 200)
EMA_PERIODS: Final = (12, 26)
RSI_PERIOD: Final = 14
MACD_SIGNAL: Final = 9
BB_PERIOD: Final = 20
BB_WIDTH: Final = 2.0
_RING: Final = max(SMA_PERIODS)


class _Ema:
    """An EMA seeded with the mean of its first n inputs."""

    __slots__ = ("n", "seed", "value")

    def __init__(self, n: int) -> None:
        self.n = n
        self.seed: list[float] = []
        self.value: float | None = None

    def add(self, x: float) -> float | None:
        if self.value is None:
            self.seed.append(x)
            if len(self.seed) == self.n:
                self.value = math.fsum(self.seed) / self.n
                self.seed = []
        else:
            self.value += (x - self.value) * (2.0 / (self.n + 1))
        return self.value

    def state(self) -> list[Any]:
        return [self.seed, self.value]

    def load(self, state: list[Any]) -> None:
        self.seed, self.value = list(state[0]), state[1]


class Indicators:
    def __init__(self) -> None:
        self.count = 0
        self._closes: deque[int] = deque(maxlen=_RING)
        self._sums = dict.fromkeys(SMA_PERIODS, 0)  # exact sums of the last n closes
        self._sq20 = 0  # exact sum of squares of the last 20
        self._ema = {n: _Ema(n) for n in EMA_PERIODS}
        self._signal = _Ema(MACD_SIGNAL)
        self._prev: int | None = None
        self._base: int | None = None  # the first close
        self._gains: list[float] = []  # the first RSI_PERIOD changes
        self._losses: list[float] = []
        self._avg_gain: float | None = None
        self._avg_loss: float | None = None
        self.values: dict[str, float | None] = {}

    def add(self, close: int) -> dict[str, float | None]:
        """Take the next bar's close; return every indicator after it."""
        ring = self._closes
        for n in SMA_PERIODS:
            self._sums[n] += close
            if len(ring) >= n:
                self._sums[n] -= ring[-n]
        self._sq20 += close * close
        if len(ring) >= BB_PERIOD:
            self._sq20 -= ring[-BB_PERIOD] ** 2
        ring.append(close)
        self.count += 1
        v: dict[str, float | None] = {}
        for n in SMA_PERIODS:
            v[f"sma_{n}"] = self._sums[n] / n if self.count >= n else None
        # EMAs run on closes less the first one: MACD, a small difference of two large
        # EMAs, keeps its precision (about 1e-8 relative without, 1e-13 with).
        if self._base is None:
            self._base = close
        offset = float(close - self._base)
        ema = {n: self._ema[n].add(offset) for n in EMA_PERIODS}
        for n in EMA_PERIODS:
            e = ema[n]
            v[f"ema_{n}"] = None if e is None else e + self._base
        macd = None
        if ema[12] is not None and ema[26] is not None:
            macd = ema[12] - ema[26]
        signal = self._signal.add(macd) if macd is not None else None
        v["macd"] = macd
        v["macd_signal"] = signal
        v["macd_hist"] = macd - signal if macd is not None and signal is not None else None
        v["rsi_14"] = self._rsi(close)
        if self.count >= BB_PERIOD:
            n, s = BB_PERIOD, self._sums[BB_PERIOD]
            var_n2 = n * self._sq20 - s * s  # n^2 * variance, exact
            sd = math.sqrt(var_n2) / n
            mid = s / n
            v["bb_mid"], v["bb_upper"], v["bb_lower"] = (
                mid,
                mid + BB_WIDTH * sd,
                mid - BB_WIDTH * sd,
            )
        else:
            v["bb_mid"] = v["bb_upper"] = v["bb_lower"] = None
        self.values = v
        return v

    def _rsi(self, close: int) -> float | None:
        prev, self._prev = self._prev, close
        if prev is None:
            return None
        change = close - prev
        gain, loss = float(max(change, 0)), float(max(-change, 0))
        n = RSI_PERIOD
        if self._avg_gain is None:
            self._gains.append(gain)
            self._losses.append(loss)
            if len(self._gains) < n:
                return None
            self._avg_gain, self._avg_loss = math.fsum(self._gains) / n, math.fsum(self._losses) / n
            self._gains, self._losses = [], []
        else:
            assert self._avg_loss is not None
            self._avg_gain = (self._avg_gain * (n - 1) + gain) / n
            self._avg_loss = (self._avg_loss * (n - 1) + loss) / n
        assert self._avg_loss is not None
        if self._avg_loss == 0:
            return 100.0
        return 100.0 - 100.0 / (1.0 + self._avg_gain / self._avg_loss)

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "closes": list(self._closes),
            "ema": {str(n): e.state() for n, e in self._ema.items()},
            "signal": self._signal.state(),
            "prev": self._prev,
            "base": self._base,
            "gains": self._gains,
            "losses": self._losses,
            "avg_gain": self._avg_gain,
            "avg_loss": self._avg_loss,
            "values": self.values,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Indicators:
        ind = cls()
        ind.count = d["count"]
        ind._closes.extend(d["closes"])
        ring = list(ind._closes)
        for n in SMA_PERIODS:
            ind._sums[n] = sum(ring[-n:])
        ind._sq20 = sum(c * c for c in ring[-BB_PERIOD:])
        for n, e in ind._ema.items():
            e.load(d["ema"][str(n)])
        ind._signal.load(d["signal"])
        ind._prev = d["prev"]
        ind._base = d["base"]
        ind._gains, ind._losses = list(d["gains"]), list(d["losses"])
        ind._avg_gain, ind._avg_loss = d["avg_gain"], d["avg_loss"]
        ind.values = dict(d["values"])
        return ind
