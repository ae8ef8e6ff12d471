"""Noticing that this worker stood still.

A worker stopped for longer than the group's session timeout (SIGSTOP, a frozen VM, a call
that held the event loop) has been dropped from the group and its partitions handed to others,
but nothing tells it so before its next heartbeat, and its commit timer, overdue, fires first
on waking. A checkpoint written then lands in the changelog after the new owner's: stale state
that the next restore of those partitions takes for the latest. So the event loop ticks a clock,
and a commit that finds the loop stood still longer than the session timeout since the one
before treats the partitions as lost instead (`app.transport.lose_partitions`).
"""

from __future__ import annotations

import asyncio
import time


class PauseClock:
    def __init__(self, tick_s: float = 0.5) -> None:
        self.tick_s = tick_s
        self.last = time.monotonic()
        self.longest = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Tick on the running loop from now on."""
        self.last = time.monotonic()
        self.longest = 0.0
        self._tick()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        now = time.monotonic()
        self.longest = max(self.longest, now - self.last)
        self.last = now
        self._handle = asyncio.get_running_loop().call_later(self.tick_s, self._tick)

    def take_longest(self) -> float:
        """The longest the loop stood still since the last call, counting the stretch up to
        now (the clock may not have ticked yet since the process woke)."""
        now = time.monotonic()
        longest = max(self.longest, now - self.last)
        self.last, self.longest = now, 0.0
        return longest


pause_clock = PauseClock()
