"""The alert sink: signals from the `signals` and `options.signals` topics to the channels their
routes name (app/alert_config.py), each signal at most once per channel.

It runs beside the workers (`faust -A app alerts`) with a consumer group of its own
(`<app id>-alerts`), so a slow channel never holds back the market path. Each channel has its
own queue, sender and rate limit (`per_minute`, as evenly spaced sends), so a channel that is
down delays no other. A temporary failure is retried with exponential backoff and jitter (or
after the `Retry-After` the other side gave) up to `attempts` times; a permanent one, or the
last temporary one, becomes a dead letter with the reason. Offsets are committed only up to
signals whose every delivery has finished.

At most once per channel: before sending, the sink writes `claimed` for (channel, signal id) to
the compacted `alerts.deliveries` topic, and afterwards `sent` or `failed`. A signal already in
that log (a repeat of the same id, from a redelivery or a worker's restart under at-least-once)
is not sent again. A claim without an outcome, found when the sink starts, is a send the sink
was killed in the middle of: it may or may not have reached the channel, so it is not retried
but dead-lettered as `interrupted`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from app import metrics
from app.alert_channels import Permanent, Temporary, send
from app.alert_config import AlertConfig, Channel

log = logging.getLogger(__name__)

Record = Callable[[str, dict[str, Any]], Awaitable[None]]  # (log key, entry) -> written
DeadLetter = Callable[[str, str, dict[str, Any]], Awaitable[None]]  # (kind, reason, signal)
Sender = Callable[[Channel, dict[str, Any]], Awaitable[None]]


@dataclass
class Pending:
    """A signal's deliveries still to finish; its offset commits when none is left."""

    offset: int
    left: int


@dataclass
class Pacer:
    """Evenly spaced sends: at most `per_minute` a minute."""

    per_minute: float
    _next: float = 0.0

    async def wait(self) -> None:
        now = time.monotonic()
        if self._next > now:
            await asyncio.sleep(self._next - now)
        self._next = max(now, self._next) + 60.0 / self.per_minute


def backoff(attempt: int, base: float, cap: float = 60.0) -> float:
    """Seconds before retry `attempt` (1-based): doubling from `base`, full jitter."""
    return random.uniform(0.5, 1.0) * min(cap, base * 2 ** (attempt - 1))


@dataclass
class AlertSink:
    config: AlertConfig
    record: Record
    dead_letter: DeadLetter
    sender: Sender
    attempts: int = 6
    base_backoff: float = 1.0
    log_state: dict[str, str] = field(default_factory=dict)  # "channel|id" -> state
    queues: dict[str, asyncio.Queue[tuple[dict[str, Any], Pending]]] = field(default_factory=dict)
    pending: dict[Any, deque[Pending]] = field(default_factory=dict)  # tp -> in offset order
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        for name, channel in self.config.channels.items():
            q: asyncio.Queue[tuple[dict[str, Any], Pending]] = asyncio.Queue()
            self.queues[name] = q
            self._tasks.append(asyncio.create_task(self._channel(channel, q)))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def recover(self, entries: dict[str, dict[str, Any]]) -> None:
        """The delivery log as read from its topic; claims left without an outcome are
        dead-lettered, never sent again."""
        for key, entry in entries.items():
            self.log_state[key] = entry["state"]
            if entry["state"] == "claimed":
                signal = entry.get("signal") or {"id": key.split("|", 1)[1]}
                reason = "the sink stopped during the send; it may or may not have arrived"
                await self._fail(key, "interrupted", reason, signal)

    def add(self, tp: Any, offset: int, signal: dict[str, Any]) -> None:
        """A signal read at (tp, offset): queue it on each channel it goes to."""
        dests = self.config.destinations(signal)
        p = Pending(offset, len(dests))
        self.pending.setdefault(tp, deque()).append(p)
        for c in dests:
            self.queues[c].put_nowait((signal, p))

    def backlog(self) -> int:
        return sum(q.qsize() for q in self.queues.values())

    def committable(self) -> dict[Any, int]:
        """Per partition, the offset to commit: after the last signal whose every delivery,
        and every earlier one's, has finished."""
        out = {}
        for tp, dq in self.pending.items():
            last = None
            while dq and dq[0].left == 0:
                last = dq.popleft().offset
            if last is not None:
                out[tp] = last + 1
        return out

    async def _channel(self, channel: Channel, q: asyncio.Queue) -> None:
        pacer = Pacer(channel.per_minute)
        while True:
            signal, p = await q.get()
            while True:
                try:
                    await self._deliver(channel, signal, pacer)
                    break
                except Exception:
                    # The log or the dead letters could not be written (the broker away):
                    # the signal is not done, so its offset waits, and it is tried again.
                    log.exception("alert to %s could not be recorded; retrying", channel.name)
                    await asyncio.sleep(5.0)
            p.left -= 1

    async def _deliver(self, channel: Channel, signal: dict[str, Any], pacer: Pacer) -> None:
        key = f"{channel.name}|{signal.get('id')}"
        if key in self.log_state:
            metrics.alerts.labels(channel.name, "repeat").inc()
            return
        await self.record(key, {"state": "claimed", "signal": signal})
        self.log_state[key] = "claimed"
        for attempt in range(1, self.attempts + 1):
            await pacer.wait()
            try:
                await self.sender(channel, signal)
            except Permanent as exc:
                await self._fail(key, "refused", str(exc), signal)
                return
            except Temporary as exc:
                metrics.alerts.labels(channel.name, "retry").inc()
                if attempt == self.attempts:
                    reason = f"{exc} (gave up after {attempt} attempts)"
                    await self._fail(key, "undelivered", reason, signal)
                    return
                delay = exc.retry_after or backoff(attempt, self.base_backoff)
                log.warning("alert to %s failed (%s); retry in %.1f s", channel.name, exc, delay)
                await asyncio.sleep(delay)
                continue
            self.log_state[key] = "sent"
            await self.record(key, {"state": "sent"})
            metrics.alerts.labels(channel.name, "sent").inc()
            return

    async def _fail(self, key: str, kind: str, reason: str, signal: dict[str, Any]) -> None:
        self.log_state[key] = "failed"
        await self.record(key, {"state": "failed", "reason": reason})
        await self.dead_letter(kind, reason, signal)
        metrics.alerts.labels(key.split("|", 1)[0], "failed").inc()


def http_sender(session: aiohttp.ClientSession) -> Sender:
    async def sender(channel: Channel, signal: dict[str, Any]) -> None:
        await send(session, channel, signal)

    return sender


def decode(value: bytes | None) -> dict[str, Any] | None:
    """A signal message; None for one that is not a JSON object with an id."""
    if value is None:
        return None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("id"), str) else None
