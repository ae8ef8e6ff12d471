"""Creating and following the control topic survive a broker that refuses the first
connections or goes away."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError

from app import control
from app.settings import Settings


class FlakyAdmin:
    """An admin client whose first `fails` starts are refused, as a loaded broker did."""

    fails = 2
    starts = 0
    created: list[str] = []

    def __init__(self, **kwargs: object) -> None:
        pass

    async def start(self) -> None:
        FlakyAdmin.starts += 1
        if FlakyAdmin.starts <= FlakyAdmin.fails:
            raise KafkaConnectionError("Unable to bootstrap")

    async def list_topics(self) -> list[str]:
        return []

    async def create_topics(self, topics: list) -> None:
        FlakyAdmin.created += [t.name for t in topics]

    async def close(self) -> None:
        pass


async def test_a_refused_first_connection_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control.kafka, "AIOKafkaAdminClient", FlakyAdmin)
    monkeypatch.setattr(control.asyncio, "sleep", _no_wait)
    name = await control.ensure_compacted_topic(Settings(), "x.control")
    assert name == "x.control" and FlakyAdmin.created == ["x.control"] and FlakyAdmin.starts == 3


async def test_a_broker_that_stays_away_still_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    FlakyAdmin.starts, FlakyAdmin.fails = 0, 100
    monkeypatch.setattr(control.kafka, "AIOKafkaAdminClient", FlakyAdmin)
    monkeypatch.setattr(control.asyncio, "sleep", _no_wait)
    with pytest.raises(KafkaConnectionError):
        await control.ensure_compacted_topic(Settings(), "x.control")
    assert FlakyAdmin.starts == control.BOOTSTRAP_ATTEMPTS


async def _no_wait(_: float) -> None:
    return None


class Record:
    def __init__(self, offset: int, key: str, text: str) -> None:
        self.offset, self.key = offset, key.encode()
        self.value = orjson.dumps({"value": text})


class Partition:
    """The control topic's one partition; each consumer made on it reads from where it seeks
    and loses its connection once its reads reach `drop_at`, as when the broker restarts."""

    def __init__(self, records: list[Record], drops: list[int], stop: asyncio.Event) -> None:
        self.records, self.drops, self.stop = records, drops, stop
        self.seeks: list[int] = []

    def consumer(self, *args: Any, **kwargs: Any) -> Any:
        partition = self

        class Consumer:
            pos = 0

            async def start(self) -> None: ...

            async def stop(self) -> None: ...

            def assign(self, tps: list) -> None: ...

            async def seek_to_beginning(self, tp: Any) -> None:
                partition.seeks.append(0)

            def seek(self, tp: Any, offset: int) -> None:
                partition.seeks.append(offset)
                self.pos = offset

            async def end_offsets(self, tps: list) -> dict:
                return {tps[0]: len(partition.records)}

            async def position(self, tp: Any) -> int:
                return self.pos

            async def getmany(self, tp: Any, timeout_ms: int) -> dict:
                if partition.drops and self.pos >= partition.drops[0]:
                    partition.drops.pop(0)
                    raise KafkaConnectionError("Connection at 127.0.0.1:9092 closed")
                batch = partition.records[self.pos : self.pos + 2]
                self.pos += len(batch)
                if self.pos >= len(partition.records):
                    partition.stop.set()
                return {tp: batch}

        return Consumer()


async def test_a_lost_broker_is_waited_out_and_following_goes_on_after_the_last_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker crashed when the broker restarted under its control follower (seen in the
    chaos run). Now it follows on from the record after the last one applied: each record
    applied once, in order, never the topic's history again."""
    stop = asyncio.Event()
    records = [Record(i, "signal.z_net", str(1.0 + i / 10)) for i in range(7)]
    partition = Partition(records, drops=[2, 5], stop=stop)

    async def topic(settings: Settings) -> str:
        return "x.control"

    monkeypatch.setattr(control, "ensure_control_topic", topic)
    monkeypatch.setattr(control.kafka, "consumer", partition.consumer)
    monkeypatch.setattr(control.Backoff, "wait", _no_wait_backoff)
    applied: list[tuple[str, str]] = []
    caught_up = asyncio.Event()

    def apply(key: str, text: str) -> None:
        applied.append((key, text))

    await asyncio.wait_for(control.follow(Settings(), apply, caught_up=caught_up, stop=stop), 5)
    assert applied == [("signal.z_net", str(1.0 + i / 10)) for i in range(7)]
    assert partition.seeks == [0, 2, 6]  # from the start once, then after the last applied
    assert caught_up.is_set()


async def _no_wait_backoff(self: Any, stop: asyncio.Event) -> None:
    return None
