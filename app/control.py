"""Runtime configuration through the compacted `control` topic (keys in tables/runtime_config.py).

`faust -A app config set KEY VALUE` checks the value and writes it, keyed by KEY, to `control`;
every worker follows the topic from its start with a consumer of its own (no group) and applies
each change to the running agents, logging the old and the new value. The topic, compacted, is
the table: its latest record per key is the setting. A worker that starts reads the settings
there within about a second; windows it closes before then use the environment's values
(`/config/` shows `caught_up`). A Faust GlobalTable would give the
same replicated table, but faust-streaming's does not reliably reach every worker of a group
(faust-streaming/faust#283), and these settings must.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from app import kafka
from app.backoff import Backoff
from app.settings import Settings
from tables.runtime_config import RuntimeConfig, parse

log = logging.getLogger(__name__)
CONTROL = "control"


class Control:
    """The running configuration, and who to tell when it changes."""

    def __init__(self, initial: RuntimeConfig, *, announce: bool = True) -> None:
        self.announce = announce  # log each change (a worker does; `config show` does not)
        self.current = initial
        self.initial = initial
        self.changed_keys: dict[str, str] = {}  # key -> the text it was set to
        self._listeners: list[Callable[[RuntimeConfig], None]] = []
        self.caught_up = asyncio.Event()

    def on_change(self, listener: Callable[[RuntimeConfig], None]) -> None:
        self._listeners.append(listener)

    def apply(self, key: str, text: str) -> bool:
        """Take one record of the topic; False (and an error logged) if it cannot apply."""
        try:
            new = self.current.with_value(key, parse(key, text))
        except ValueError as exc:
            log.error("control: %s=%r not applied: %s", key, text, exc)
            return False
        old = self.current.values()[key]
        self.current = new
        self.changed_keys[key] = text
        if self.announce and new.values()[key] != old:
            log.warning("control: %s changed from %r to %r", key, old, new.values()[key])
        for listener in self._listeners:
            listener(new)
        return True


async def ensure_control_topic(settings: Settings) -> str:
    return await ensure_compacted_topic(settings, settings.topic(CONTROL))


BOOTSTRAP_ATTEMPTS = 8  # about 30 s of backoff in all


async def ensure_compacted_topic(settings: Settings, name: str) -> str:
    """A one-partition compacted topic (settings, delivery logs): created if missing."""
    admin = kafka.admin(settings)
    for attempt in range(1, BOOTSTRAP_ATTEMPTS + 1):
        # A worker's first connection has been refused now and then by a broker that was up
        # (seen on a loaded machine): without a retry the worker's start failed with it.
        try:
            await admin.start()
            break
        except KafkaConnectionError:
            if attempt == BOOTSTRAP_ATTEMPTS:
                raise
            delay = min(8.0, 0.25 * 2**attempt)
            log.warning("broker not reachable for %s; retrying in %.1f s", name, delay)
            await asyncio.sleep(delay)
    try:
        if name not in await admin.list_topics():
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        NewTopic(
                            name,
                            num_partitions=1,
                            replication_factor=settings.replication,
                            topic_configs={
                                "cleanup.policy": "compact",
                                "min.insync.replicas": str(settings.min_insync),
                            },
                        )
                    ]
                )
    finally:
        await admin.close()
    return name


async def publish(settings: Settings, key: str, text: str) -> None:
    parse(key, text)  # refuse a bad value before anything is written
    name = await ensure_control_topic(settings)
    producer = kafka.producer(settings, acks="all")
    await producer.start()
    try:
        body = {"value": text, "set_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        await producer.send_and_wait(name, orjson.dumps(body), key=key.encode())
    finally:
        await producer.stop()


async def follow(
    settings: Settings,
    apply: Callable[[str, str], Any],
    *,
    caught_up: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Apply every record of the control topic from its start, then each new one; set
    `caught_up` once the records there at the start are applied; end when `stop` is set.

    A broker that goes away (a restart) is waited out, and following goes on after the last
    record applied: never again from the start, which would flip each setting back through
    its history. Without this a worker crashed when the broker restarted under it."""
    stop = stop or asyncio.Event()
    backoff = Backoff(0.5, 10.0)
    follower = _Follower(settings, apply, caught_up, stop, backoff)
    while not stop.is_set():
        try:
            await follower.run()
            return
        except KafkaError as exc:
            log.warning("control: lost the broker (%r); following again shortly", exc)
            await backoff.wait(stop)


class _Follower:
    """One consumer's life of `follow`; `next_offset` outlives it."""

    def __init__(
        self,
        settings: Settings,
        apply: Callable[[str, str], Any],
        caught_up: asyncio.Event | None,
        stop: asyncio.Event,
        backoff: Backoff,
    ) -> None:
        self.settings, self.apply, self.caught_up = settings, apply, caught_up
        self.stop, self.backoff = stop, backoff
        self.next_offset: int | None = None  # None: from the topic's start

    async def run(self) -> None:
        name = await ensure_control_topic(self.settings)
        consumer = kafka.consumer(
            self.settings, enable_auto_commit=False, group_id=None, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            tp = TopicPartition(name, 0)
            consumer.assign([tp])
            if self.next_offset is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, self.next_offset)
            end = (await consumer.end_offsets([tp]))[tp]
            self.backoff.reset()
            while not self.stop.is_set():
                batch = await consumer.getmany(tp, timeout_ms=500)
                for m in batch.get(tp, []):
                    self.next_offset = m.offset + 1
                    self._take(m)
                # Past the records that were there at the start (some may have been compacted
                # away, so count by position, not by records seen).
                if self.caught_up is not None and await consumer.position(tp) >= end:
                    self.caught_up.set()
        finally:
            with contextlib.suppress(Exception):  # the broker may be the reason we are here
                await consumer.stop()

    def _take(self, m: Any) -> None:
        try:
            text = orjson.loads(m.value)["value"]
            key = m.key.decode()
        # UnicodeDecodeError: a key that is not UTF-8 must not end the follower
        except (
            orjson.JSONDecodeError,
            UnicodeDecodeError,
            KeyError,
            TypeError,
            AttributeError,
        ) as exc:
            log.error("control: record at offset %d is not a setting: %r", m.offset, exc)
            return
        self.apply(key, str(text))


async def read_compacted(settings: Settings, topic: str) -> dict[str, dict[str, Any]]:
    """The latest JSON value per key of a one-partition compacted topic (the alerts' delivery
    log, the symbology), read from its start to the end it had when this began."""
    consumer = kafka.consumer(
        settings,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        out: dict[str, dict[str, Any]] = {}
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=500)
            for m in batch.get(tp, []):
                if m.key is not None and m.value is not None:
                    out[m.key.decode()] = orjson.loads(m.value)
        return out
    finally:
        await consumer.stop()
