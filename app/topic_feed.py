"""What the WebSocket feed reads: the public topics, every partition, by a plain consumer with no
group, so a client reaches every instrument whichever worker it connects to.

A channel's topic is read from the first subscription to it on; it starts `warm` messages back
on each partition, so the first snapshot already holds recent values, and the subscription is
answered once the feed has caught up with the offsets the topic had when it started. It reads
committed records only, so under exactly-once a client never sees output of a transaction
that was aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from app import kafka
from app.settings import Settings
from app.websocket import Hub
from models import book_events
from pipeline.graph import COLUMNAR

log = logging.getLogger(__name__)


class TopicFeed:
    def __init__(
        self, hub: Hub, settings: Settings, topic_of: dict[str, str], partitions: int, warm: int
    ) -> None:
        self.hub = hub
        self.partitions = partitions  # every tapestream topic has the configured count
        self.settings = settings
        self.topic_of = topic_of  # channel -> topic name (with the deployment's prefix)
        self.channel_of = {t: c for c, t in topic_of.items()}
        self.warm = warm
        self._consumer: AIOKafkaConsumer | None = None
        self._assigned: set[TopicPartition] = set()
        self._caught_up: list[tuple[dict[TopicPartition, int], asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start_channel(self, channel: str) -> None:
        """Read `channel`'s topic from `warm` messages back; return once caught up."""
        async with self._lock:
            consumer = await self._started()
            topic = self.topic_of[channel]
            tps = {TopicPartition(topic, p) for p in range(self.partitions)}
            # A new assignment forgets the positions of the partitions already read: carry
            # them over, or their subscribers would miss what came meanwhile.
            kept = {tp: await consumer.position(tp) for tp in self._assigned}
            self._assigned |= tps
            consumer.assign(sorted(self._assigned))
            for tp, offset in kept.items():
                consumer.seek(tp, offset)
            ends = await consumer.end_offsets(list(tps))
            begins = await consumer.beginning_offsets(list(tps))
            for tp in tps:
                consumer.seek(tp, max(begins[tp], ends[tp] - self.warm))
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            target = {tp: off for tp, off in ends.items() if off > begins[tp]}
            if target:
                self._caught_up.append((target, done))
            else:
                done.set_result(None)
        await done

    async def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            self._consumer = kafka.consumer(
                self.settings,
                group_id=None,
                enable_auto_commit=False,
                isolation_level="read_committed",
                auto_offset_reset="latest",
            )
            await self._consumer.start()
            self._task = asyncio.ensure_future(self._run())
        return self._consumer

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            if not self._assigned:
                await asyncio.sleep(0.1)
                continue
            # One read and its publishing at a time with a channel's start, which moves the
            # positions this read would advance.
            async with self._lock:
                try:
                    batch = await consumer.getmany(timeout_ms=200, max_records=2000)
                except Exception:  # the broker away: keep the clients, try again
                    log.exception("the WebSocket feed could not read; retrying")
                    batch = None
                for tp, messages in (batch or {}).items():
                    channel = self.channel_of.get(tp.topic)
                    if channel is None:
                        continue
                    for m in messages:
                        rows = self._rows(tp.topic, m.value)
                        if rows is not None:
                            self.hub.publish(channel, rows)
                if self._caught_up:
                    await self._check_caught_up(consumer)
            await asyncio.sleep(1.0 if batch is None else 0)

    def _rows(self, topic: str, value: bytes | None) -> Iterable[dict[str, Any]] | None:
        if value is None:
            return None
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            log.warning("a message on %s is not JSON; the WebSocket feed skips it", topic)
            return None
        base = self.channel_of[topic]
        if base in COLUMNAR:
            # a state channel: only each book's last row in the message can be the latest
            return book_events.last_rows(doc)
        return [doc] if isinstance(doc, dict) else None

    async def _check_caught_up(self, consumer: AIOKafkaConsumer) -> None:
        waiting = []
        for target, done in self._caught_up:
            positions = [await consumer.position(tp) for tp in target]
            if all(p >= off for p, off in zip(positions, target.values(), strict=True)):
                if not done.done():
                    done.set_result(None)
            else:
                waiting.append((target, done))
        self._caught_up = waiting

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
