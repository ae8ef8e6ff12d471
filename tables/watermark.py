"""Event-time watermarks: how far a stage's windows are final.

A source tells a stage that every record still to come was received (`ts_recv`) at or after
some time T (app/feeds/watermarks.py carries T with the data). A window that ended at or before
T less the allowed lateness can get no more records: the watermark moves there, and never back.
A record is late when its window ended more than the lateness before it arrived, or before the
watermark: bars, pressure windows and every window kind use this one rule.
"""

from __future__ import annotations

import numpy as np


class Watermark:
    def __init__(self, lateness_ns: int, value: int | None = None) -> None:
        if lateness_ns < 0:
            raise ValueError("lateness must not be negative")
        self.lateness_ns = lateness_ns
        self.value = value

    def advance(self, received_through: int) -> None:
        """Every record still to come was received at or after `received_through` (ns)."""
        wm = received_through - self.lateness_ns
        if self.value is None or wm > self.value:
            self.value = wm

    def limits(self, received: np.ndarray) -> np.ndarray:
        """Per record, the window end it must beat to be on time: its arrival less the
        lateness, or the watermark where that is later (a window the watermark passed is
        closed)."""
        limit = received.astype(np.int64) - self.lateness_ns
        if self.value is not None:
            np.maximum(limit, self.value, out=limit)
        return limit


class Watermarked:
    """An engine whose windows close by a `Watermark` held in `clock`."""

    clock: Watermark

    @property
    def watermark(self) -> int | None:
        return self.clock.value

    @watermark.setter
    def watermark(self, value: int | None) -> None:
        self.clock.value = value

    def advance(self, received_through: int) -> None:
        """Every record still to come was received at or after `received_through` (ts_recv)."""
        self.clock.advance(received_through)
