"""Creating the control topic survives a broker that refuses the first connections."""

from __future__ import annotations

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
