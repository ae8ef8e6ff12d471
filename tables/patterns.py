"""Patterns on closed bars and their indicators, per (instrument, interval), each a signal of its
own kind. No Faust here; O(1) per bar (amortised for the breakout's running extremes).

- `volume_spike`: the bar's volume over `volume_factor` (3) times the mean of the previous
  `lookback` (20) bars' volumes. Direction: the bar's (close above open: BUY, below: SELL).
- `price_spike`: the close more than `price_pct` (5%) from SMA 20. Direction: BUY above.
- `breakout` / `breakdown`: the close above the highest high (below the lowest low) of the
  previous `lookback` bars by more than `breakout_pct` (0.1%).
- `rsi_overbought` / `rsi_oversold`: RSI 14 crossing above 70 / below 30 (from the other side
  or the line itself on the previous bar). Direction: SELL / BUY (the usual reading: a reversal
  is due).

Nothing fires before the history a rule needs exists. Every signal carries the values it was
computed from and an id that is a hash of (kind, instrument, interval, bar start).
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass
from typing import Any

from models.intervals import interval_name
from tables.bars import Bar


@dataclass(frozen=True)
class PatternConfig:
    lookback: int = 20
    volume_factor: float = 3.0
    price_pct: float = 5.0
    breakout_pct: float = 0.1
    rsi_high: float = 70.0
    rsi_low: float = 30.0

    def __post_init__(self) -> None:
        if self.lookback < 1 or self.volume_factor <= 0 or self.price_pct <= 0:
            raise ValueError("pattern lookback and thresholds must be positive")
        if self.breakout_pct < 0:
            raise ValueError("the breakout margin must not be negative")
        if not 0 < self.rsi_low < self.rsi_high < 100:
            raise ValueError(
                f"RSI lines must satisfy 0 < low < high < 100 (low {self.rsi_low}, "
                f"high {self.rsi_high})"
            )


def pattern_id(kind: str, instrument_id: int, interval_ns: int, start: int) -> str:
    text = f"{kind}:{instrument_id}:{interval_name(interval_ns)}:{start}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class Patterns:
    """One (instrument, interval)'s pattern state."""

    def __init__(self, config: PatternConfig | None = None) -> None:
        self.config = cfg = config or PatternConfig()
        self._volumes: deque[int] = deque(maxlen=cfg.lookback)
        self._volume_sum = 0
        # (index, value) pairs with decreasing highs / increasing lows: the running extremes
        # of the last `lookback` bars
        self._highs: deque[tuple[int, int]] = deque()
        self._lows: deque[tuple[int, int]] = deque()
        self._count = 0
        self._rsi: float | None = None

    def add(self, bar: Bar, indicators: dict[str, float | None]) -> list[dict[str, Any]]:
        """Take the next closed bar of this instrument and interval with its indicators (after
        it); the patterns it shows."""
        cfg = self.config
        out: list[dict[str, Any]] = []

        def fire(kind: str, direction: str, **inputs: Any) -> None:
            out.append(
                {
                    "id": pattern_id(kind, bar.instrument_id, bar.interval_ns, bar.start),
                    "kind": kind,
                    "direction": direction,
                    "instrument_id": bar.instrument_id,
                    "interval": interval_name(bar.interval_ns),
                    "start": bar.start,
                    "end": bar.end,
                    "close": bar.close,
                    **inputs,
                }
            )

        full = len(self._volumes) == cfg.lookback
        if full:
            mean = self._volume_sum / cfg.lookback
            if bar.volume > cfg.volume_factor * mean:
                fire(
                    "volume_spike",
                    "BUY" if bar.close >= bar.open else "SELL",
                    volume=bar.volume,
                    mean_volume=mean,
                )
            high = self._highs[0][1]
            low = self._lows[0][1]
            margin = cfg.breakout_pct / 100
            if bar.close > high * (1 + margin):
                fire("breakout", "BUY", highest_high=high, bars=cfg.lookback)
            elif bar.close < low * (1 - margin):
                fire("breakdown", "SELL", lowest_low=low, bars=cfg.lookback)
        sma = indicators.get("sma_20")
        if sma:
            away = (bar.close - sma) / sma * 100
            if abs(away) > cfg.price_pct:
                fire("price_spike", "BUY" if away > 0 else "SELL", sma_20=sma, pct_from_sma=away)
        rsi = indicators.get("rsi_14")
        prev = self._rsi
        if rsi is not None and prev is not None:
            if prev <= cfg.rsi_high < rsi:
                fire("rsi_overbought", "SELL", rsi_14=rsi, previous_rsi_14=prev)
            elif prev >= cfg.rsi_low > rsi:
                fire("rsi_oversold", "BUY", rsi_14=rsi, previous_rsi_14=prev)
        self._push(bar, rsi)
        return out

    def _push(self, bar: Bar, rsi: float | None) -> None:
        if len(self._volumes) == self._volumes.maxlen:
            self._volume_sum -= self._volumes[0]
        self._volumes.append(bar.volume)
        self._volume_sum += bar.volume
        i = self._count
        self._count += 1
        while self._highs and self._highs[-1][1] <= bar.high:
            self._highs.pop()
        self._highs.append((i, bar.high))
        while self._lows and self._lows[-1][1] >= bar.low:
            self._lows.pop()
        self._lows.append((i, bar.low))
        oldest = i - self.config.lookback + 1
        while self._highs[0][0] < oldest:
            self._highs.popleft()
        while self._lows[0][0] < oldest:
            self._lows.popleft()
        if rsi is not None:
            self._rsi = rsi

    def to_dict(self) -> dict[str, Any]:
        return {
            "volumes": list(self._volumes),
            "highs": [list(x) for x in self._highs],
            "lows": [list(x) for x in self._lows],
            "count": self._count,
            "rsi": self._rsi,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], config: PatternConfig | None = None) -> Patterns:
        p = cls(config)
        p._volumes.extend(d["volumes"])
        p._volume_sum = sum(p._volumes)
        p._highs = deque((int(i), int(v)) for i, v in d["highs"])
        p._lows = deque((int(i), int(v)) for i, v in d["lows"])
        p._count = d["count"]
        p._rsi = d["rsi"]
        return p


class LagWatch:
    """The processing-lag pattern: how long after a message was produced (its broker timestamp)
    an agent applied it, per partition. Over `limit_s` it fires a `processing_lag` signal, at
    most once every `every_s` per partition. Wall-clock time by nature, so unlike every other
    signal it is not reproducible by a replay or by backfill, which never emits it."""

    def __init__(self, limit_s: float, every_s: float = 60.0) -> None:
        self.limit_s = limit_s
        self.every_s = every_s
        self._last: dict[int, float] = {}

    def observe(
        self, partition: int, instrument_id: int, produced_s: float, now_s: float
    ) -> dict[str, Any] | None:
        lag = now_s - produced_s
        if self.limit_s <= 0 or lag <= self.limit_s:
            return None
        last = self._last.get(partition)
        if last is not None and now_s - last < self.every_s:
            return None
        self._last[partition] = now_s
        at_ns = round(now_s * 1e9)
        return {
            "id": hashlib.sha256(f"processing_lag:{partition}:{at_ns}".encode()).hexdigest()[:24],
            "kind": "processing_lag",
            "direction": "",
            "instrument_id": instrument_id,
            "partition": partition,
            "start": at_ns,
            "lag_s": lag,
            "limit_s": self.limit_s,
        }
