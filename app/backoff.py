"""Waiting before trying again: exponential backoff with jitter, cut short by a stop."""

from __future__ import annotations

import asyncio
import contextlib
import random


async def sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Wait `seconds`, or less if `stop` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class Backoff:
    """Each wait doubles the next, up to `most`; each is drawn from its upper half, so sources
    that failed together do not come back together. `reset` once things work again."""

    def __init__(self, first: float, most: float) -> None:
        self.first, self.most = first, most
        self.delay = first

    def reset(self) -> None:
        self.delay = self.first

    async def wait(self, stop: asyncio.Event) -> None:
        await sleep_unless(stop, min(self.delay, self.most) * random.uniform(0.5, 1.0))
        self.delay = min(self.delay * 2, self.most)
