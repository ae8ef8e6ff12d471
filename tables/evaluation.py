"""Signal evaluation: what the price did after each signal, and which signals found the flows a
truth file lists. No Faust here; `faust -A app evaluate` reads the files and draws the plots.

A signal is scored from the moment the event time that made it final came due: its `end` (a
pressure window's or a bar's). The entry price is the last trade at or before that moment; the
price after a horizon h is the last trade at or before end + h. The move is their difference in
the signal's direction (BUY: up is good, SELL: down is good), in ticks. A horizon that runs past
the last trade in the price files is left out for that signal (counted as unpriced), not scored
as flat. The tick is given, or taken per instrument as the greatest common divisor of the steps
between the distinct prices it traded at: the exchange's tick wherever prices used the grid.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DIRECTIONS = {"BUY": 1, "SELL": -1}


def infer_tick(prices: np.ndarray) -> int | None:
    """The largest step every distinct price is a multiple of; None with one price or none."""
    steps = np.diff(np.unique(prices))
    return int(np.gcd.reduce(steps)) if len(steps) else None


@dataclass
class Prices:
    """Trades per instrument, in event-time order, to read the price at any time."""

    _parts: dict[int, list[tuple[np.ndarray, np.ndarray]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    _ts: dict[int, np.ndarray] = field(default_factory=dict)
    _px: dict[int, np.ndarray] = field(default_factory=dict)
    ticks: dict[int, int | None] = field(default_factory=dict)
    last_ts: int | None = None  # the latest trade of any instrument

    def add(self, trades: np.ndarray, instruments: set[int] | None = None) -> None:
        """A chunk of trades (models.trades records); only `instruments`' when given."""
        if not len(trades):
            return
        if instruments is not None:
            trades = trades[np.isin(trades["instrument_id"], list(instruments))]
        ts_all = trades["ts_event"].astype(np.int64)
        if len(ts_all):
            top = int(ts_all.max())
            self.last_ts = top if self.last_ts is None else max(self.last_ts, top)
        for iid in np.unique(trades["instrument_id"]).tolist():
            m = trades["instrument_id"] == iid
            self._parts[iid].append((ts_all[m], trades["price"][m].astype(np.int64)))

    def freeze(self) -> None:
        """Sort what was added; call once, before reading."""
        for iid, parts in self._parts.items():
            ts = np.concatenate([t for t, _ in parts])
            px = np.concatenate([p for _, p in parts])
            order = np.argsort(ts, kind="stable")  # equal times keep file order
            self._ts[iid], self._px[iid] = ts[order], px[order]
            self.ticks[iid] = infer_tick(px)
        self._parts.clear()

    def at(self, instrument_id: int, t: int) -> int | None:
        """The last trade price at or before `t`; None before the instrument's first trade."""
        ts = self._ts.get(instrument_id)
        if ts is None:
            return None
        i = int(np.searchsorted(ts, t, side="right")) - 1
        return int(self._px[instrument_id][i]) if i >= 0 else None


@dataclass(frozen=True)
class Outcome:
    signal: dict[str, Any]
    entry: int | None
    # horizon (ns) -> the move in ticks in the signal's direction; None: not known
    moves: dict[int, float | None]


def forward_moves(
    signals: list[dict[str, Any]],
    prices: Prices,
    horizons: list[int],
    tick: int | None = None,
) -> list[Outcome]:
    """Each signal with a direction and an instrument, with its moves after each horizon."""
    out = []
    for s in signals:
        sign = DIRECTIONS.get(s.get("direction", ""))
        iid, end = s.get("instrument_id"), s.get("end")
        if sign is None or not isinstance(iid, int) or not isinstance(end, int):
            continue
        entry = prices.at(iid, end)
        step = tick or prices.ticks.get(iid) or 1
        moves: dict[int, float | None] = {}
        for h in horizons:
            later = None
            if entry is not None and prices.last_ts is not None and end + h <= prices.last_ts:
                later = prices.at(iid, end + h)
            moves[h] = None if later is None or entry is None else sign * (later - entry) / step
        out.append(Outcome(s, entry, moves))
    return out


def _stats(moves: list[float]) -> dict[str, Any]:
    if not moves:
        return {"n": 0}
    return {
        "n": len(moves),
        "hit_rate": sum(m > 0 for m in moves) / len(moves),
        "loss_rate": sum(m < 0 for m in moves) / len(moves),
        "mean_ticks": math.fsum(moves) / len(moves),
        "median_ticks": statistics.median(moves),
    }


def summarize(outcomes: list[Outcome], horizons: dict[str, int]) -> dict[str, Any]:
    """Hit rate (share of moves in the signal's direction), loss rate, and mean and median
    move in ticks, per kind and horizon, and per kind, strength and horizon."""
    by_kind: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    by_strength: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    unpriced: dict[str, int] = defaultdict(int)
    for o in outcomes:
        kind = str(o.signal.get("kind", "?"))
        strength = o.signal.get("strength")
        for name, h in horizons.items():
            m = o.moves[h]
            if m is None:
                unpriced[name] += 1
                continue
            by_kind[kind][name].append(m)
            if strength is not None:
                by_strength[f"{kind}/{strength}"][name].append(m)
    return {
        "signals": len(outcomes),
        "unpriced": dict(unpriced),
        "by_kind": {k: {h: _stats(v[h]) for h in horizons} for k, v in sorted(by_kind.items())},
        "by_strength": {
            k: {h: _stats(v[h]) for h in horizons} for k, v in sorted(by_strength.items())
        },
    }


def match_truth(
    signals: list[tuple[int, int, int, str]], flows: list[dict[str, Any]]
) -> dict[str, Any]:
    """Flow signals, as (instrument, window start, window length, direction), against planted
    flows (`instrument_id`, `start`, `direction`, and `end` or `windows` of the signal's length):
    how many flows a signal of their direction found, how many drew a wrong-direction signal,
    and how many signals fell outside every flow."""
    found: set[int] = set()
    wrong: set[int] = set()
    false = 0
    spans: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for k, f in enumerate(flows):
        spans[int(f["instrument_id"])].append((int(f["start"]), k, int(f.get("windows", 1))))
    for iid, start, length, direction in signals:
        hit = None
        for f_start, k, windows in spans.get(iid, ()):
            f_end = int(flows[k].get("end", f_start + windows * length))
            if f_start <= start < f_end:
                hit = k
                break
        if hit is None:
            false += 1
        elif direction == flows[hit]["direction"]:
            found.add(hit)
        else:
            wrong.add(hit)
    return {
        "flows": len(flows),
        "found": len(found),
        "recall": len(found) / len(flows) if flows else None,
        "wrong_direction": len(wrong),
        "false_signals": false,
    }
