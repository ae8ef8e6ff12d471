"""Baselines: what a window usually looks like at this time of day, per instrument, over the
last N sessions (see "Institutional flow detection" in ../shared/design.md). No Faust here.

A window's session is the trading day it falls in, counted from a configurable session start
(time of day, UTC; per venue, since CME's day starts at 17:00 Chicago and Nasdaq's at midnight);
its bucket is its offset within the session, in windows. Per (instrument, bucket), the baseline
keeps the values of log volume, TFI, OFI and the net score from the last `sessions` sessions, at
most one per session, and reports their mean and standard deviation (population, floored so a
quiet history cannot make every small move extreme) over the sessions that are not outliers
(`trimmed_stat`: an earlier flow in the bucket must not hide the next), and their count.
`update` comes after the window is scored, and `stats` excludes the window's own session, so a
window never sees itself in its baseline.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from tables.venues import venue_of

DAY_NS: Final = 86_400_000_000_000
METRICS: Final = ("log_volume", "tfi", "ofi", "net_score")
# Floors of the standard deviation, per metric: log volume in natural-log units (0.25: about
# ±28% volume), TFI in [-1, 1], OFI in contracts, and the net score at 1, its spread were every
# trade's side a fair coin (tables/pressure.py): a history of quiet sessions cannot make an
# ordinary coin-flip imbalance look extreme.
DEFAULT_STD_FLOORS: Final = {"log_volume": 0.25, "tfi": 0.05, "ofi": 1.0, "net_score": 1.0}


@dataclass(frozen=True, slots=True)
class Stat:
    mean: float
    std: float  # floored
    n: int  # sessions in the history
    trimmed: int = 0  # of them, outliers left out of mean and std

    def z(self, value: float) -> float:
        return (value - self.mean) / self.std

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "trimmed": self.trimmed}


# Sessions further than this many robust deviations (1.4826 x the median absolute deviation,
# at least the floor) from the median are outliers: left out of the mean and std.
TRIM_DEVIATIONS: Final = 3.0


def trimmed_stat(xs: list[float], floor: float) -> Stat:
    """Mean and floored population std of `xs` without its outliers. A flow that happened in
    this bucket in an earlier session would otherwise widen the std enough to hide the next
    one (measured: load_tests/flow_power.py); the median and MAD that pick the outliers are
    not moved by one or two of them."""
    xs_sorted = sorted(xs)
    median = _median(xs_sorted)
    spread = max(1.4826 * _median(sorted(abs(x - median) for x in xs)), floor)
    kept = [x for x in xs if abs(x - median) <= TRIM_DEVIATIONS * spread]
    mean = math.fsum(kept) / len(kept)
    var = math.fsum((x - mean) ** 2 for x in kept) / len(kept)
    return Stat(mean, max(math.sqrt(var), floor), len(xs), len(xs) - len(kept))


def _median(xs: list[float]) -> float:
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


@dataclass(frozen=True, slots=True)
class SessionClock:
    """Where a window falls: (session number, bucket) from its start time and the venue of
    the publisher that trades it."""

    interval_ns: int
    session_start_ns: int = 0  # time of day, UTC, at which a session starts
    # (venue MIC, its session start) where it differs from session_start_ns
    venue_starts: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        for start in (self.session_start_ns, *(s for _, s in self.venue_starts)):
            if not 0 <= start < DAY_NS:
                raise ValueError("a session start is a time of day")
        if self.interval_ns <= 0 or DAY_NS % self.interval_ns:
            raise ValueError("the pressure interval must divide a day")

    def start_of(self, publisher_id: int | None) -> int:
        """The session start of a publisher's venue (the default for one not configured)."""
        if publisher_id is None or not self.venue_starts:
            return self.session_start_ns
        venue = venue_of(publisher_id)
        return dict(self.venue_starts).get(venue or "", self.session_start_ns)

    def place(self, ts: int, publisher_id: int | None = None) -> tuple[int, int]:
        shifted = ts - self.start_of(publisher_id)
        return shifted // DAY_NS, (shifted % DAY_NS) // self.interval_ns


@dataclass
class _History:
    # (session, {metric: value}) of the most recent sessions, oldest first
    rows: deque[tuple[int, dict[str, float]]] = field(default_factory=deque)


class Baselines:
    def __init__(
        self,
        sessions: int = 20,
        std_floors: dict[str, float] | None = None,
    ) -> None:
        if sessions < 1:
            raise ValueError("a baseline needs at least one session")
        self.sessions = sessions
        self.floors = {**DEFAULT_STD_FLOORS, **(std_floors or {})}
        self._h: dict[tuple[int, int], _History] = {}

    def stats(self, instrument_id: int, bucket: int, session: int) -> dict[str, Stat] | None:
        """Mean, floored std and count of each metric over the sessions before `session`;
        None with no history."""
        h = self._h.get((instrument_id, bucket))
        if h is None:
            return None
        rows = [v for s, v in h.rows if s < session][-self.sessions :]
        if not rows:
            return None
        out = {}
        for m in METRICS:
            xs = [r[m] for r in rows if m in r]
            if not xs:
                # History written before the metric existed: its fair-coin null, mean 0 and the
                # floor, until sessions that carry it come in.
                out[m] = Stat(0.0, self.floors[m], 0)
                continue
            out[m] = trimmed_stat(xs, self.floors[m])
        return out

    def update(
        self, instrument_id: int, bucket: int, session: int, values: dict[str, float]
    ) -> bool:
        """Record a scored window's values; False if this session was already recorded (a
        window seen again after a restart), which changes nothing."""
        h = self._h.setdefault((instrument_id, bucket), _History())
        if any(s == session for s, _ in h.rows):
            return False
        h.rows.append((session, {m: float(values[m]) for m in METRICS}))
        # Sessions may arrive out of order (a backfill of older files): keep them sorted and
        # keep one more than needed, since `stats` leaves the scored session out.
        if len(h.rows) > 1 and h.rows[-2][0] > session:
            h.rows = deque(sorted(h.rows, key=lambda r: r[0]))
        while len(h.rows) > self.sessions + 1:
            h.rows.popleft()
        return True

    def buckets(self) -> list[tuple[int, int]]:
        """Every (instrument, bucket) with history."""
        return list(self._h)

    def rows(self, owner: str) -> list[dict[str, Any]]:
        """Each (owner, bucket)'s baseline as the next session would see it, the owner (an
        instrument, or an options group) under the name `owner`."""
        out = []
        for key, bucket in sorted(self._h):
            stats = self.stats(key, bucket, 1 << 62)
            if stats is not None:
                out.append(
                    {owner: key, "bucket": bucket, **{m: st.as_dict() for m, st in stats.items()}}
                )
        return out

    def export(self, instrument_id: int, bucket: int) -> list[list[Any]]:
        return [[s, v] for s, v in self._h[(instrument_id, bucket)].rows]

    def restore(self, instrument_id: int, bucket: int, rows: list[list[Any]]) -> None:
        self._h[(instrument_id, bucket)] = _History(deque((int(s), dict(v)) for s, v in rows))


def window_values(volume: int, tfi: float, ofi: int, net_score: float) -> dict[str, float]:
    """The metrics a window contributes to its baseline."""
    return {
        "log_volume": math.log1p(volume),
        "tfi": tfi,
        "ofi": float(ofi),
        "net_score": net_score,
    }
