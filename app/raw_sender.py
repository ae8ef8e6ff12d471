"""Sending MBO to the raw topic: the one path `replay` and `live` share.

Records are cut into messages by `app.feeds.batching.Batcher`, keyed by instrument, each
stamped with its partition's source watermark (`app.feeds.watermarks`); partitions with nothing
to send get markers. The producer is idempotent with acks=all, so a retried send never
duplicates or reorders a message within a partition: a partition of the raw topic holds a prefix
of what was sent to it, which is what lets `live` resume from the topic after a kill -9.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from aiokafka import AIOKafkaProducer

from app import kafka
from app.feeds.batching import Batch, Batcher
from app.feeds.watermarks import SourceWatermarks
from app.settings import Settings
from models import definitions
from models.mbo import instrument_key

MAX_IN_FLIGHT = 512  # unacknowledged messages before the sender waits for the broker
# An idle partition hears that time moved on once it has moved this far (event time), so
# markers stay few next to data messages; the end of a replay always tells every partition.
MARKER_STEP_NS = 100_000_000


def raw_producer(settings: Settings, *, paced: bool) -> AIOKafkaProducer:
    """`paced`: records come at their recorded or live pace, so each send goes at once."""
    return kafka.producer(
        settings,
        acks="all",
        enable_idempotence=True,
        linger_ms=0 if paced else 5,
        max_batch_size=max(settings.max_message_bytes + 1024, 1 << 20),
        max_request_size=settings.max_message_bytes + 65_536,
        request_timeout_ms=30_000,
    )


@dataclass
class Delivered:
    """Records and messages of one source the broker acknowledged."""

    records: int = 0
    messages: int = 0


class SendTally(Protocol):
    instruments: set[int]
    markers: int
    definitions: int


@dataclass
class Tally:
    instruments: set[int] = field(default_factory=set)
    markers: int = 0
    definitions: int = 0


@dataclass
class SourceStats:
    """What every long-running source reports in /status: its own counts (a subclass's
    fields), the last error, and what the broker acknowledged."""

    last_error: str = ""
    unsent: int = 0  # gap records and dead letters the broker failed to take
    tally: Tally = field(default_factory=Tally)
    delivered: Delivered = field(default_factory=Delivered)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("tally", "delivered")}
        d["acknowledged_records"] = self.delivered.records
        d["messages"] = self.delivered.messages
        d["instruments"] = len(self.tally.instruments)
        return d


class RawSender:
    """Sends batches, keeps a bounded number in flight, and counts what was acknowledged.
    `headers`: added to every data message (the live source names its subscription there)."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        tally: SendTally,
        partitions: int,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.summary = tally
        self.headers = headers or []
        self.wm = SourceWatermarks(partitions)
        self.in_flight: deque[tuple[asyncio.Future, int, Delivered | None]] = deque()

    async def step(
        self, batcher: Batcher, records: np.ndarray, fs: Delivered, *, flush: bool = False
    ) -> None:
        """Hand records (in ts_recv order) to the batcher and send what it cuts, each message
        stamped with its partition's bound; `flush`: every whole event pending goes too."""
        if len(records):
            self.wm.read(int(records["ts_recv"][0]))
        before = self.wm.bounds(batcher)  # before the batcher takes them: a lower bound
        batches = list(batcher.add(records))
        if flush:
            batches += batcher.flush_complete()
        if len(records):
            self.wm.read(int(records["ts_recv"].max()))
        after = self.wm.bounds(batcher)
        # A partition's last message of this step can carry the bound after these records:
        # behind it come only records still pending or not yet read. Its earlier messages
        # carry the bound from before, since a later one of this step may hold earlier
        # arrivals. So what these records close is known with them, not a step later.
        last = {self.wm.partition_of(b.instrument_id): i for i, b in enumerate(batches)}
        for i, b in enumerate(batches):
            p = self.wm.partition_of(b.instrument_id)
            await self.send([b], fs, after if last[p] == i else before)
        await self.mark(after, MARKER_STEP_NS)

    async def send(
        self,
        batches: Iterable[Batch],
        fs: Delivered,
        bounds: dict[int, int] | None = None,
        extra: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """`extra`: headers for these messages only."""
        for b in batches:
            p = self.wm.partition_of(b.instrument_id)
            headers = self.wm.stamp(p, bounds[p]) if bounds else []
            fut = await self.producer.send(
                self.topic,
                b.records.tobytes(),
                key=b.key,
                partition=p,
                headers=headers + self.headers + (extra or []) or None,
            )
            self.in_flight.append((fut, len(b.records), fs))
            self.summary.instruments.add(b.instrument_id)
            if len(self.in_flight) >= MAX_IN_FLIGHT:
                await self._settle(MAX_IN_FLIGHT // 2)

    async def define(self, records: Iterable) -> None:
        """Definitions, each a message of its own to its instrument's partition."""
        for d in records:
            p = self.wm.partition_of(d.instrument_id)
            fut = await self.producer.send(
                self.topic,
                definitions.encode(d),
                key=instrument_key(d.instrument_id),
                partition=p,
                headers=self.headers or None,
            )
            self.in_flight.append((fut, 0, None))
            self.summary.definitions += 1
        await self.drain()

    async def mark(self, bounds: dict[int, int], step: int = 0) -> None:
        """Markers (no key, no records, the bound in a header) to partitions behind by more
        than `step`."""
        for p, bound in self.wm.behind(bounds).items():
            if self.wm.told.due(p, bound, more_than=step):
                fut = await self.producer.send(
                    self.topic, b"", partition=p, headers=self.wm.stamp(p, bound) + self.headers
                )
                self.in_flight.append((fut, 0, None))
                self.summary.markers += 1

    def pending(self, fs: Delivered) -> int:
        """Records of `fs` sent and not yet acknowledged."""
        return sum(n for _, n, s in self.in_flight if s is fs)

    async def _settle(self, keep: int) -> None:
        while len(self.in_flight) > keep:
            fut, n, fs = self.in_flight.popleft()
            await fut  # raises the broker's error; nothing after it is counted as sent
            if fs is not None:  # None: a watermark marker or a definition
                fs.records += n
                fs.messages += 1

    def settle_done(self) -> None:
        """Count what the broker has acknowledged so far, without waiting (a long-running
        source reports it while idle)."""
        while self.in_flight and self.in_flight[0][0].done():
            fut, n, fs = self.in_flight.popleft()
            fut.result()  # raises the broker's error
            if fs is not None:
                fs.records += n
                fs.messages += 1

    async def drain(self) -> None:
        await self._settle(0)
