"""Noticing that this worker stood still.

A worker stopped for about its group's session timeout (SIGSTOP, a frozen VM, a call that held
the event loop) has been dropped from the group and its partitions handed to others, but
nothing tells it so before its next heartbeat. On waking it carries on where it stopped: a
commit that was flushing goes on to write its checkpoint, which lands in the changelog after
the new owner's writes, and the next restore of those partitions takes that stale state for the
latest while the offsets committed run past it (records lost). So the event loop ticks a clock,
and every commit, checkpoint and send first asks it (`observe`) whether the loop stood still
too long since it last looked. The worker counts a partition lost from the moment it could
have been, not from the moment the broker says so (app/transport.py, `StallGuard`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable


class PauseClock:
    def __init__(self, tick_s: float = 0.5) -> None:
        self.tick_s = tick_s
        self.last = time.monotonic()
        # A stretch longer than this counts as a stall (`start` sets it).
        self.limit = math.inf
        self.on_stall: Callable[[float], None] | None = None
        self._handle: asyncio.TimerHandle | None = None

    def start(self, limit: float, on_stall: Callable[[float], None] | None = None) -> None:
        """Tick on the running loop from now on; `on_stall(seconds)` is called, once, for each
        stretch longer than `limit` that the loop stood still."""
        self.limit = limit
        self.on_stall = on_stall
        self.last = time.monotonic()
        self._tick()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        self.observe()
        self._handle = asyncio.get_running_loop().call_later(self.tick_s, self._tick)

    def observe(self) -> bool:
        """Whether the loop stood still past the limit since the clock last looked. Called
        anywhere, not only by the tick: after a wake the code that was waiting may run before
        the tick does, and must not act as if nothing happened."""
        now = time.monotonic()
        stood = now - self.last
        self.last = now
        if stood <= self.limit:
            return False
        if self.on_stall is not None:
            self.on_stall(stood)
        return True


pause_clock = PauseClock()
