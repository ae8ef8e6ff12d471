"""Institutional-flow signals: a pressure window scored against its baseline (see "Institutional
flow detection" in ../shared/design.md). No Faust here.

`SignalEngine.score(window)` places the window (session, bucket), reads the baseline of the
sessions before it, scores it, and only then adds the window to the baseline. A signal fires
when all of these hold:
- the baseline has at least `min_sessions` sessions;
- volume reaches `volume_floor`;
- z_vol (log volume against its baseline) reaches `z_volume` (2);
- |z_net| reaches `z_net` (3.5): the window's net score (net signed volume over its own
  standard error, tables/pressure.py) against its baseline; and z_net has the sign of the net
  flow itself: the window leans further the same way as its own trades (a window that buys less
  than usual but still buys is not selling pressure);
- if `z_flow` is set (off by default), |z_flow| (TFI against its baseline) reaches it too;
- no signal of the same direction for the instrument started within `cooldown_ns` before it.
Direction is BUY when more volume bought than sold, SELL when less. Why the net score and not
TFI: TFI's spread between sessions depends on how much traded, so a large window 70-85%
one-sided reaches only |z_flow| 1.2-2 when its bucket usually holds few trades; the net score
is about standard normal at any volume were sides fair coins, so volume makes it grow as it
should. The defaults were chosen with load_tests/flow_power.py (docs/flow-detection.md).
Confidence grows with the weaker of the two deviations, 1 - exp(-(weaker - threshold) /
threshold) lifted to start at 0.5 at the threshold, and is scaled by data_quality = sessions /
20; strength classes: strong from 0.8, moderate from 0.6, else weak.

A signal's id is a hash of (instrument, interval, window start, direction): the same window
gives the same id on every path, so consumers can drop repeats.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

from models.intervals import interval_name
from tables.baselines import Baselines, SessionClock, Stat, window_values
from tables.pressure import PressureWindow

FULL_QUALITY_SESSIONS = 20


@dataclass(frozen=True)
class SignalConfig:
    z_volume: float = 2.0
    z_net: float = 3.5
    z_flow: float = 0.0  # 0: TFI's own deviation is reported, not required
    volume_floor: int = 100
    min_sessions: int = 5
    cooldown_ns: int = 15 * 60_000_000_000

    def __post_init__(self) -> None:
        if self.z_volume <= 0 or self.z_net <= 0 or self.z_flow < 0:
            raise ValueError("z thresholds on volume and net flow must be positive; TFI's >= 0")
        if self.volume_floor < 0 or self.min_sessions < 1 or self.cooldown_ns < 0:
            raise ValueError("volume floor and cooldown must not be negative; min sessions >= 1")


def strength_of(confidence: float) -> str:
    if confidence >= 0.8:
        return "strong"
    if confidence >= 0.6:
        return "moderate"
    return "weak"


def signal_id(instrument_id: int, interval_ns: int, start: int, direction: str) -> str:
    text = f"ifd:{instrument_id}:{interval_name(interval_ns)}:{start}:{direction}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Scored:
    """A window with its scores, whether or not it fired (`signal` is None then)."""

    window: PressureWindow
    session: int
    bucket: int
    baseline: dict[str, Stat] | None
    z: dict[str, float] | None
    signal: dict[str, Any] | None


@dataclass
class SignalEngine:
    clock: SessionClock
    baselines: Baselines
    config: SignalConfig = field(default_factory=SignalConfig)
    # (instrument, direction) -> start of the last signal
    last_signal: dict[tuple[int, str], int] = field(default_factory=dict)

    def score(self, w: PressureWindow, publisher_id: int | None = None) -> Scored:
        """Score a window of an instrument traded by `publisher_id` (its venue's session)."""
        session, bucket = self.clock.place(w.start, publisher_id)
        base = self.baselines.stats(w.instrument_id, bucket, session)
        values = window_values(w.volume, w.tfi, w.ofi, w.net_score)
        z = None
        signal = None
        if base is not None:
            z = {
                "z_vol": base["log_volume"].z(values["log_volume"]),
                "z_flow": base["tfi"].z(values["tfi"]),
                "z_ofi": base["ofi"].z(values["ofi"]),
                "z_net": base["net_score"].z(values["net_score"]),
            }
            signal = self._fire(w, session, bucket, base, z)
        # Only now: the window never counts in its own baseline.
        self.baselines.update(w.instrument_id, bucket, session, values)
        return Scored(w, session, bucket, base, z, signal)

    def _fire(
        self,
        w: PressureWindow,
        session: int,
        bucket: int,
        base: dict[str, Stat],
        z: dict[str, float],
    ) -> dict[str, Any] | None:
        cfg = self.config
        n = base["log_volume"].n
        direction = self.decide(w.instrument_id, w.start, w.volume, w.net_score, n, z)
        if direction is None:
            return None
        quality = min(1.0, n / FULL_QUALITY_SESSIONS)
        excess = min(
            (z["z_vol"] - cfg.z_volume) / cfg.z_volume,
            (abs(z["z_net"]) - cfg.z_net) / cfg.z_net,
        )
        raw = 0.5 + 0.5 * (1.0 - math.exp(-max(excess, 0.0) * 2.0))
        confidence = raw * quality
        return {
            "id": signal_id(w.instrument_id, w.interval_ns, w.start, direction),
            "kind": "ifd",
            "direction": direction,
            "confidence": confidence,
            "strength": strength_of(confidence),
            "data_quality": quality,
            "session": session,
            "bucket": bucket,
            **w.as_dict(),
            **z,
            "baseline": {m: s.as_dict() for m, s in base.items()},
        }

    def decide(
        self,
        instrument_id: Any,
        start: int,
        volume: int,
        net_score: float,
        sessions: int,
        z: dict[str, float],
    ) -> str | None:
        """The rule, from a window's scores: BUY, SELL or None; a window that fires starts
        its (instrument, direction)'s cooldown. The detection-power harness replays it over
        published pressure rows, so it reads nothing a pressure row does not carry."""
        cfg = self.config
        if sessions < cfg.min_sessions or volume < cfg.volume_floor or net_score == 0:
            return None
        if z["z_vol"] < cfg.z_volume or abs(z["z_net"]) < cfg.z_net:
            return None
        if (z["z_net"] > 0) != (net_score > 0):
            return None
        if cfg.z_flow and (abs(z["z_flow"]) < cfg.z_flow or (z["z_flow"] > 0) != (net_score > 0)):
            return None
        direction = "BUY" if net_score > 0 else "SELL"
        key = (instrument_id, direction)
        last = self.last_signal.get(key)
        if last is not None and start - last < cfg.cooldown_ns:
            return None
        self.last_signal[key] = start
        return direction
