"""Settings that change while workers run: signal and pattern thresholds and the instrument
filter. No Faust here; app/control.py carries changes through the `control` topic.

Each key has a type and a rule; `parse` turns text (from `faust -A app config set`) into a
value or raises ValueError saying what is accepted. The environment gives the starting values;
a change applies to windows and bars closed after the worker reads it. Windows themselves
(bar intervals, the pressure interval, lateness) are not here: open windows are state built for
one interval, so they change with a restart.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from tables.patterns import PatternConfig
from tables.signals import SignalConfig


@dataclass(frozen=True)
class Key:
    kind: type
    check: Callable[[Any], bool]
    rule: str  # what `check` accepts, for the error message
    help: str


def _positive(v: float) -> bool:
    return v > 0


def _not_negative(v: float) -> bool:
    return v >= 0


def _percent(v: float) -> bool:
    return 0 < v < 100


MAX_SECONDS = 9e9  # a duration held in integer ns must fit an int64 (about 292 years)


def _seconds(v: float) -> bool:
    return 0 <= v <= MAX_SECONDS


def _instrument_ids(v: str) -> bool:
    # ASCII digits only: str.isdigit() also takes "²", which int() then refuses; and ids are
    # uint32, so ten digits at most
    return v == "" or all(
        x.isascii() and x.isdigit() and len(x) <= 10 and int(x) < 1 << 32 for x in v.split(",")
    )


KEYS: dict[str, Key] = {
    "signal.z_volume": Key(float, _positive, "a number > 0", "z-score threshold on log volume"),
    "signal.z_net": Key(float, _positive, "a number > 0", "z-score threshold on net flow"),
    "signal.z_flow": Key(float, _not_negative, "a number >= 0", "TFI z threshold (0: off)"),
    "signal.volume_floor": Key(int, _not_negative, "an integer >= 0", "least window volume"),
    "signal.min_sessions": Key(int, _positive, "an integer >= 1", "least baseline sessions"),
    "signal.cooldown": Key(float, _seconds, "seconds from 0 to 9e9", "same-direction cooldown"),
    "pattern.volume_factor": Key(float, _positive, "a number > 0", "volume spike factor"),
    "pattern.price_pct": Key(float, _positive, "a number > 0", "price spike, % from SMA 20"),
    "pattern.breakout_pct": Key(float, _not_negative, "a number >= 0", "breakout margin, %"),
    "pattern.rsi_high": Key(float, _percent, "a number in (0, 100)", "RSI overbought line"),
    "pattern.rsi_low": Key(float, _percent, "a number in (0, 100)", "RSI oversold line"),
    "filter.instruments": Key(
        str,
        _instrument_ids,
        "instrument ids separated by commas, or empty for all",
        "instruments whose signals are published",
    ),
}


def parse(key: str, text: str) -> Any:
    """The value `text` sets `key` to; ValueError naming the key and the rule otherwise."""
    spec = KEYS.get(key)
    if spec is None:
        raise ValueError(f"unknown setting {key!r}; settings: {', '.join(sorted(KEYS))}")
    try:
        value = spec.kind(text.strip().replace(" ", ""))
    except ValueError:
        raise ValueError(f"{key} must be {spec.rule}, not {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{key} must be {spec.rule} and finite, not {text!r}")
    if isinstance(value, int) and not -(1 << 63) <= value < 1 << 63:
        # past 64 bits no JSON encoder here takes it: /config/ would fail on every worker
        raise ValueError(f"{key} must be {spec.rule} and below 2^63, not {text!r}")
    if not spec.check(value):
        raise ValueError(f"{key} must be {spec.rule}, not {text!r}")
    return value


@dataclass(frozen=True)
class RuntimeConfig:
    signal: SignalConfig
    patterns: PatternConfig
    instruments: frozenset[int] | None = None  # None: every instrument

    def values(self) -> dict[str, Any]:
        s, p = self.signal, self.patterns
        return {
            "signal.z_volume": s.z_volume,
            "signal.z_net": s.z_net,
            "signal.z_flow": s.z_flow,
            "signal.volume_floor": s.volume_floor,
            "signal.min_sessions": s.min_sessions,
            "signal.cooldown": s.cooldown_ns / 1e9,
            "pattern.volume_factor": p.volume_factor,
            "pattern.price_pct": p.price_pct,
            "pattern.breakout_pct": p.breakout_pct,
            "pattern.rsi_high": p.rsi_high,
            "pattern.rsi_low": p.rsi_low,
            "filter.instruments": ",".join(map(str, sorted(self.instruments or ()))),
        }

    def with_value(self, key: str, value: Any) -> RuntimeConfig:
        """This config with one key changed; ValueError if the whole no longer holds (an RSI
        low above the high)."""
        group, name = key.split(".", 1)
        if group == "signal":
            if name == "cooldown":
                return replace(self, signal=replace(self.signal, cooldown_ns=round(value * 1e9)))
            return replace(self, signal=replace(self.signal, **{name: value}))
        if group == "pattern":
            return replace(self, patterns=replace(self.patterns, **{name: value}))
        ids = frozenset(int(x) for x in value.split(",")) if value else None
        return replace(self, instruments=ids)

    def publishes(self, instrument_id: int) -> bool:
        return self.instruments is None or instrument_id in self.instruments
