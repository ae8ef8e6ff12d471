"""The runtime's revoke path and event admission, with a stand-in for the Faust app: which
events an agent may apply around a rebalance, and what a revoke does to every agent's state and
to open exactly-once transactions."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from faust.types import TP

from app import checkpoints
from app.checkpoints import Checkpointer


@dataclass
class FlowControl:
    active: bool = True

    def is_active(self) -> bool:
        return self.active


@dataclass
class Transactions:
    aborted: list[set[TP]] = field(default_factory=list)

    async def abort_open(self, revoked: set[TP]) -> None:
        self.aborted.append(set(revoked))


@dataclass
class Signal:
    receivers: list[Any] = field(default_factory=list)

    def connect(self, fn: Any) -> Any:
        self.receivers.append(fn)
        return fn


@dataclass
class Consumer:
    transactions: Transactions = field(default_factory=Transactions)


@dataclass
class App:
    in_transaction: bool
    consumer_generation_id: int = 3
    flow_control: FlowControl = field(default_factory=FlowControl)
    consumer: Consumer = field(default_factory=Consumer)
    on_partitions_revoked: Signal = field(default_factory=Signal)


@dataclass
class Message:
    partition: int
    generation_id: int


@dataclass
class Event:
    message: Message


class State:
    def __init__(self) -> None:
        self.evicted: list[set[int]] = []

    def checkpoint(self) -> dict:
        return {}

    def evict(self, partitions: set[int]) -> None:
        self.evicted.append(set(partitions))


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoints, "checkpointers", [])
    monkeypatch.setattr(checkpoints, "commit_guards", [])


def test_only_events_of_the_current_generation_with_the_flow_on_are_applied() -> None:
    app = App(in_transaction=False)
    c = Checkpointer(app, "books", [], topic="raw")
    assert c.admit(Event(Message(1, 3)))
    assert not c.admit(Event(Message(1, 2)))  # fetched before the last rebalance
    app.flow_control.active = False  # a rebalance under way
    assert not c.admit(Event(Message(2, 3)))
    assert [len(v) for v in c.unacked.values()] == [1]


@pytest.mark.parametrize("exactly_once", [True, False])
def test_a_revoke_aborts_open_transactions_then_forgets_in_every_agent(exactly_once: bool) -> None:
    app = App(in_transaction=exactly_once)
    books_state, bars_state = State(), State()
    forgotten: list[int] = []
    books = Checkpointer(app, "books", [(None, books_state)], topic="raw", forget=forgotten.append)
    bars = Checkpointer(app, "bars", [(None, bars_state)], topic="trades")
    for c, p in ((books, 0), (books, 2), (bars, 2)):
        assert c.admit(Event(Message(p, 3)))
    (release,) = app.on_partitions_revoked.receivers  # one handler for all agents
    revoked = {TP("raw", 2), TP("trades", 2), TP("books-changelog", 2), TP("other", 0)}

    async def run() -> None:
        async with books.state_lock:  # an agent applying a message: the revoke waits for it
            task = asyncio.create_task(release(app, revoked))
            await asyncio.sleep(0.01)
            assert not task.done()
        await task

    asyncio.run(run())
    want_abort = [{TP("raw", 2), TP("trades", 2)}] if exactly_once else []
    assert app.consumer.transactions.aborted == want_abort
    assert books_state.evicted == [{2}] and bars_state.evicted == [{2}]
    assert forgotten == [2]
    assert set(books.unacked) == {0} and bars.unacked == {}
