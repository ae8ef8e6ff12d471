"""The runtime's revoke path and event admission, with a stand-in for the Faust app: which
events an agent may apply around a rebalance, what a revoke does to every agent's state and to
open exactly-once transactions, and what a partition lost to the worker (its transactions fenced)
leaves behind."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from app import checkpoints, transport
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
class App:
    consumer_generation_id: int = 3
    flow_control: FlowControl = field(default_factory=FlowControl)
    in_transaction: bool = False
    producer: Any = None
    consumer: Any = field(default_factory=lambda: SimpleNamespace(_committed_offset={}))


@dataclass
class Message:
    partition: int
    generation_id: int
    offset: int = 0

    @property
    def tp(self) -> TP:
        return TP("raw", self.partition)


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
def _fresh_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    guards: list = []
    states: list = []
    for module in (checkpoints, transport):
        monkeypatch.setattr(module, "commit_guards", guards)
        monkeypatch.setattr(module, "partition_states", states)


class Stream:
    def __init__(self, events: list[Event]) -> None:
        self._events = events

    def noack(self) -> Stream:
        return self

    async def events(self) -> Any:
        for event in self._events:
            yield event


async def test_the_agent_loop_holds_the_state_lock_per_event_and_lets_go_when_stopped() -> None:
    """Each admitted event is handed out with the state lock held (a checkpoint never sees
    half an event); an agent stopped mid-event lets the lock go at once."""
    from contextlib import aclosing

    app = App()
    c = Checkpointer(app, "books", [], topic="raw")
    stale = Event(Message(0, generation_id=2))
    events = [Event(Message(0, 3)), stale, Event(Message(1, 3))]
    seen = []
    async with aclosing(c.events(Stream(events))) as admitted:
        async for event in admitted:
            assert c.state_lock.locked()
            seen.append(event)
    assert seen == [events[0], events[2]] and not c.state_lock.locked()
    with pytest.raises(RuntimeError):
        async with aclosing(c.events(Stream(events))) as admitted:
            async for _ in admitted:
                raise RuntimeError("stopped")
    assert not c.state_lock.locked()


def test_only_events_of_the_current_generation_with_the_flow_on_are_applied() -> None:
    app = App()
    c = Checkpointer(app, "books", [], topic="raw")
    assert c.admit(Event(Message(1, 3)))
    assert not c.admit(Event(Message(1, 2)))  # fetched before the last rebalance
    app.flow_control.active = False  # a rebalance under way
    assert not c.admit(Event(Message(2, 3)))
    assert [len(v) for v in c.unacked.values()] == [1]


@pytest.mark.parametrize("exactly_once", [True, False])
def test_a_revoke_runs_with_every_agent_still_then_releases_in_all(exactly_once: bool) -> None:
    app = App()
    books_state, bars_state = State(), State()
    forgotten: list[int] = []
    books = Checkpointer(app, "books", [(None, books_state)], topic="raw", forget=forgotten.append)
    bars = Checkpointer(app, "bars", [(None, bars_state)], topic="trades")
    for c, p in ((books, 0), (books, 2), (bars, 2)):
        assert c.admit(Event(Message(p, 3)))
    revoked = {TP("raw", 2), TP("trades", 2), TP("books-changelog", 2), TP("other", 0)}
    seen_by_faust: list[bool] = []

    async def faust_revoke(tps: set[TP]) -> None:
        # Faust's part runs with every agent held still
        seen_by_faust.append(all(c.state_lock.locked() for c in (books, bars)))

    txns = Transactions()

    async def run() -> set[int]:
        async with books.state_lock:  # an agent applying a message: the revoke waits for it
            task = asyncio.create_task(
                transport.revoke_with_states_still(revoked, faust_revoke, txns, exactly_once)
            )
            await asyncio.sleep(0.01)
            assert not task.done() and not seen_by_faust
        return await task

    assert asyncio.run(run()) == {2}
    assert seen_by_faust == [True]
    assert txns.aborted == ([{TP("raw", 2), TP("trades", 2)}] if exactly_once else [])
    assert books_state.evicted == [{2}] and bars_state.evicted == [{2}]
    assert forgotten == [2]
    assert set(books.unacked) == {0} and bars.unacked == {}


# -- a partition lost to the worker ------------------------------------------------------


@dataclass
class Store:
    root: Path
    _dbs: dict[int, object] = field(default_factory=dict)

    def partition_path(self, partition: int) -> Path:
        return self.root / f"table-{partition}.db"


class Tables(dict):
    recovery: Any


@dataclass
class ChangelogTopic:
    topics: tuple[str, ...] = ("books-changelog",)


def test_a_fenced_partition_is_dropped_wiped_and_refused_until_the_next_assignment(
    tmp_path: Path,
) -> None:
    rejoins: list[bool] = []
    store = Store(tmp_path, {0: object(), 2: object()})
    for p in (0, 2):
        store.partition_path(p).mkdir()
    thread_loop = SimpleNamespace(call_soon_threadsafe=lambda f: f())
    coordinator = SimpleNamespace(request_rejoin=lambda: rejoins.append(True))
    client = SimpleNamespace(_coordinator=coordinator)
    thread = SimpleNamespace(thread_loop=thread_loop, _ensure_consumer=lambda: client)
    restored = {TP("books-changelog", 0): 10, TP("books-changelog", 2): 12}
    recovery = SimpleNamespace(revoke=restored.pop)
    tables = Tables(books=SimpleNamespace(data=store, changelog_topic=ChangelogTopic()))
    tables.recovery = recovery
    app = SimpleNamespace(
        consumer_generation_id=3,
        rebalancing=False,
        flow_control=FlowControl(),
        consumer=SimpleNamespace(_thread=thread),
        tables=tables,
    )
    state = State()
    books = Checkpointer(app, "books", [(None, state)], topic="raw")
    for p in (0, 2):
        assert books.admit(Event(Message(p, 3)))

    async def run() -> None:
        async with books.state_lock:  # an agent applying a message: the loss waits for it
            task = asyncio.create_task(transport.lose_partitions(app, {2}))
            await asyncio.sleep(0.01)
            assert not task.done()
        await task

    asyncio.run(run())
    assert state.evicted == [{2}] and set(books.unacked) == {0}
    assert set(store._dbs) == {0}
    assert store.partition_path(0).exists() and not store.partition_path(2).exists()
    assert restored == {TP("books-changelog", 0): 10}  # partition 2 is read again from the start
    assert rejoins == [True]
    assert not books.admit(Event(Message(2, 3)))  # until the group assigns partitions again
    assert books.admit(Event(Message(0, 3)))
    app.consumer_generation_id = 4
    assert books.admit(Event(Message(2, 4)))


@dataclass
class AckedEvent:
    message: Message
    acked: bool = False

    def ack(self) -> None:
        self.acked = True


class DirtyState(State):
    def __init__(self, rows: dict) -> None:
        super().__init__()
        self.rows = rows

    def checkpoint(self) -> dict:
        rows, self.rows = self.rows, {}
        return rows


@pytest.mark.parametrize("stall", [False, True])
def test_a_checkpoint_that_waited_out_a_stall_writes_and_acknowledges_nothing(
    monkeypatch: pytest.MonkeyPatch, stall: bool
) -> None:
    """Under at_least_once a checkpoint flushes its outputs before it writes. A worker stopped
    during that flush (SIGSTOP, seen in test_failover) wrote, on waking, its checkpoint into a
    changelog the partitions' new owner was already writing: stale state for the next restore,
    while the new owner's offsets ran past it."""
    import time

    from app.pauses import PauseClock

    clock = PauseClock(tick_s=0.01)
    guard = transport.StallGuard()
    monkeypatch.setattr(transport, "pause_clock", clock)
    monkeypatch.setattr(transport, "stall_guard", guard)
    monkeypatch.setattr(checkpoints, "stall_guard", guard)
    given_up: list[set[int]] = []
    monkeypatch.setattr(transport, "give_up", lambda app, partitions: given_up.append(partitions))

    async def flush(producer: Any) -> None:
        if stall:
            time.sleep(0.3)  # the loop held past the limit

    monkeypatch.setattr(checkpoints, "flush_buffered", flush)
    app = SimpleNamespace(
        consumer_generation_id=3,
        in_transaction=False,
        flow_control=FlowControl(),
        producer=None,
        conf=SimpleNamespace(broker_session_timeout=0.2, broker_heartbeat_interval=0.1),
        consumer=SimpleNamespace(assignment=lambda: {TP("raw", 0), TP("raw", 1)}),
    )
    table: dict[bytes, bytes] = {}
    books = Checkpointer(app, "books", [(table, DirtyState({0: [(b"k", b"v")]}))], topic="raw")
    event = AckedEvent(Message(0, 3))

    async def run() -> None:
        guard.start(app)
        assert books.admit(event)
        async with books.at_commit():
            pass
        clock.stop()

    asyncio.run(run())
    if not stall:
        assert table == {b"k": b"v"} and event.acked and not given_up
        return
    assert table == {} and not event.acked
    assert given_up == [{0, 1}]  # every partition, not only those of the checkpoint
    assert guard.stood_still()  # so nothing else of generation 3 is sent or committed
    app.consumer_generation_id = 4  # assigned again, after the rejoin
    assert not guard.stood_still()


@dataclass
class RawMessage:
    partition: int
    generation_id: int
    offset: int

    @property
    def tp(self) -> TP:
        return TP("raw", self.partition)


def test_a_partition_whose_messages_come_with_a_hole_is_sought_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seen under both guarantees: a worker assigned a partition again got its first message
    18 offsets past the committed one, never got those between, and committed past them."""
    sought: list[tuple[TP, int]] = []

    async def seek(tp: TP, offset: int) -> None:
        sought.append((tp, offset))

    passed: list[tuple[TP, int, int]] = []
    clock = [100.0]
    monkeypatch.setattr(checkpoints.time, "monotonic", lambda: clock[0])
    committed = {TP("raw", 0): 4290, TP("raw", 1): 2963}
    app = SimpleNamespace(
        consumer_generation_id=3,
        flow_control=FlowControl(),
        consumer=SimpleNamespace(
            _committed_offset=committed,
            seek=seek,
            sought_generation=3,
            pass_over=lambda tp, start, end: passed.append((tp, start, end)),
        ),
    )
    books = Checkpointer(app, "books", [], topic="raw", contiguous=True)

    async def run() -> None:
        assert books.admit(Event(RawMessage(1, 3, 2963)))  # where it was committed
        assert books.admit(Event(RawMessage(1, 3, 2964)))
        assert not books.admit(Event(RawMessage(0, 3, 4308)))  # 4290-4307 would be skipped
        assert not books.admit(Event(RawMessage(0, 3, 4309)))  # the rest of the stale batch
        clock[0] += checkpoints.SEEK_EVERY_S
        assert not books.admit(Event(RawMessage(0, 3, 4310)))  # still stale: seek again
        await asyncio.sleep(0)
        assert sought == [(TP("raw", 0), 4290), (TP("raw", 0), 4290)]
        assert books.admit(Event(RawMessage(0, 3, 4290)))  # the seek took
        assert books.admit(Event(RawMessage(0, 3, 4291)))
        assert books.admit(Event(RawMessage(0, 3, 4291)))  # a repeat: the books skip it
        # Seen too: a run of messages never handed out in the middle of an assignment.
        assert not books.admit(Event(RawMessage(0, 3, 4301)))
        await asyncio.sleep(0)
        assert sought[-1] == (TP("raw", 0), 4292)
        # A hole that lasts is not a race (the broker no longer has those offsets): logged,
        # and the partition goes on.
        clock[0] += checkpoints.SEEK_LIMIT_S + 1
        assert passed == []
        assert books.admit(Event(RawMessage(0, 3, 4302)))
        assert passed == [(TP("raw", 0), 4292, 4302)]  # commits may pass them now
        assert books.admit(Event(RawMessage(0, 3, 4303)))

    asyncio.run(run())


def test_a_partition_with_nothing_committed_starts_at_its_log_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seen in the chaos run under exactly_once: a partition taken over before anything was
    committed for it had its first message handed out 4,269 records into the log, and with no
    committed offset to hold it to, those records were never applied."""
    sought: list[tuple[TP, int]] = []

    async def seek(tp: TP, offset: int) -> None:
        sought.append((tp, offset))

    async def earliest_offsets(*tps: TP) -> dict[TP, int]:
        return {tp: 0 for tp in tps}

    monkeypatch.setattr(transport, "log_starts", transport.LogStarts())
    app = SimpleNamespace(
        consumer_generation_id=3,
        flow_control=FlowControl(),
        consumer=SimpleNamespace(
            _committed_offset={},
            seek=seek,
            earliest_offsets=earliest_offsets,
            sought_generation=2,
        ),
    )
    books = Checkpointer(app, "books", [], topic="raw", contiguous=True)

    async def run() -> None:
        # Faust hands out what the fetcher brings before its seek at the assignment is done,
        # when where the partition begins is not known yet (the lag metric may have learned
        # its log start already): dropped, without a seek of its own.
        await transport.log_starts.add(app, {TP("raw", 1)})
        assert not books.admit(Event(RawMessage(1, 3, 14)))
        await asyncio.sleep(0)
        assert sought == []
        app.consumer.sought_generation = 3
        assert not books.admit(Event(RawMessage(1, 3, 14)))
        await asyncio.sleep(0)
        assert sought == [(TP("raw", 1), 0)]
        assert books.admit(Event(RawMessage(1, 3, 0)))
        # The log starts learned belong to their assignment.
        app.consumer_generation_id = 4
        assert transport.start_offset(app, TP("raw", 1)) is None

    asyncio.run(run())


# -- the journal that makes an at_least_once checkpoint whole -------------------------------


class NamedTable(dict):
    def __init__(self, name: str, *args: Any) -> None:
        super().__init__(*args)
        self.name = name


def test_a_journal_reads_back_whole_or_not_at_all() -> None:
    from app import checkpoint_journal as J

    rows = [("books", b"1003", b"x" * 300), ("bars", b"1003", None), ("bars", b"~p/0", b"{}")]
    chunks = J.encode(7, rows, chunk_bytes=256)
    assert len(chunks) == 2  # the long row alone, the rest together
    table = {J.key("instruments", 0, i): c for i, c in enumerate(chunks)}
    whole = J.read(table.get, "instruments", 0)
    assert whole is not None and [r for c in whole for r in J.rows(c)] == rows
    # A longer journal cut short over an older one: its second chunk is still the older one's.
    table[J.key("instruments", 0, 1)] = J.encode(6, rows, chunk_bytes=256)[1]
    assert J.read(table.get, "instruments", 0) is None
    assert J.read(table.get, "instruments", 1) is None  # no journal at all
    with pytest.raises(J.JournalError):
        list(J.rows(chunks[0][:-5]))


def _checkpointer(app: Any, books: NamedTable, bars: NamedTable, journal: dict) -> Checkpointer:
    return Checkpointer(
        app, "instruments", [(books, State()), (bars, State())], topic="raw", journal=journal
    )


@pytest.mark.parametrize("exactly_once", [False, True])
def test_a_checkpoint_cut_short_is_completed_when_its_partition_is_taken_up(
    monkeypatch: pytest.MonkeyPatch, exactly_once: bool
) -> None:
    """Seen under at_least_once after a kill -9: the books' checkpoint reached the changelog
    and the bars' did not, so the books skipped redelivered messages whose trades the bars
    never counted (a 1-minute bar 13 trades short). The journal, written whole before any
    row, puts the missing rows back before the partition's state is read."""
    from app import checkpoint_journal as J

    flushes: list[int] = []

    async def flush(producer: Any) -> None:
        flushes.append(len(journal))

    monkeypatch.setattr(checkpoints, "flush_buffered", flush)
    books, bars = NamedTable("books", {b"1003": b"new"}), NamedTable("bars", {b"1003": b"old"})
    journal: dict[bytes, bytes] = {}
    rows = [("books", b"1003", b"new"), ("bars", b"1003", b"new"), ("bars", b"gone", None)]
    for i, chunk in enumerate(J.encode(J.new_id(), rows, chunk_bytes=16)):
        journal[J.key("instruments", 0, i)] = chunk
    bars[b"gone"] = b"page"
    app = App()
    app.in_transaction = exactly_once
    c = _checkpointer(app, books, bars, journal)

    async def take_up() -> list[Event]:
        events = [Event(Message(0, 3)), Event(Message(0, 3))]
        return [e async for e in c.events(Stream(events))]

    assert len(asyncio.run(take_up())) == 2
    assert books == {b"1003": b"new"} and bars == {b"1003": b"new"}
    assert all(state.evicted == [{0}] for _, state in c.states)  # read again, whole
    # Once per assignment, with no flush (the agent holds its lock); under exactly_once the
    # journal of an at_least_once run goes.
    assert flushes == []
    assert (journal == {}) is exactly_once


def test_a_journal_cut_short_leaves_the_tables_at_the_checkpoint_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app import checkpoint_journal as J

    async def flush(producer: Any) -> None:
        pass

    monkeypatch.setattr(checkpoints, "flush_buffered", flush)
    books, bars = NamedTable("books", {b"1003": b"old"}), NamedTable("bars", {b"1003": b"old"})
    rows = [("books", b"1003", b"new"), ("bars", b"1003", b"new")]
    chunks = J.encode(J.new_id(), rows, chunk_bytes=16)
    journal = {J.key("instruments", 0, 0): chunks[0]}  # the second never landed
    app = App()
    c = _checkpointer(app, books, bars, journal)

    async def take_up() -> None:
        async for _ in c.events(Stream([Event(Message(0, 3))])):
            pass

    asyncio.run(take_up())
    assert books == {b"1003": b"old"} and bars == {b"1003": b"old"}
    assert all(state.evicted == [] for _, state in c.states)


def test_an_at_least_once_checkpoint_lands_its_journal_before_any_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app import checkpoint_journal as J

    books, bars = NamedTable("books"), NamedTable("bars")
    journal: dict[bytes, bytes] = {}
    seen: list[tuple[int, int]] = []  # (journal chunks, table rows) at each flush

    async def flush(producer: Any) -> None:
        seen.append((len(journal), len(books) + len(bars)))

    monkeypatch.setattr(checkpoints, "flush_buffered", flush)
    app = App()
    states = [
        (books, DirtyState({0: [(b"1003", b"b1")]})),
        (bars, DirtyState({0: [(b"1003", b"r1"), (b"~p/0", b"m1")]})),
    ]
    c = Checkpointer(app, "instruments", states, topic="raw", journal=journal)
    event = AckedEvent(Message(0, 3))

    async def commit() -> None:
        assert c.admit(event)
        async with c.at_commit():
            pass

    asyncio.run(commit())
    assert seen == [(0, 0), (1, 0)]  # outputs, then the journal alone, then the rows
    assert event.acked and books == {b"1003": b"b1"} and len(bars) == 2
    (chunks,) = [J.read(journal.get, "instruments", 0)]
    assert chunks is not None
    assert [r for ch in chunks for r in J.rows(ch)] == [
        ("books", b"1003", b"b1"),
        ("bars", b"1003", b"r1"),
        ("bars", b"~p/0", b"m1"),
    ]


def test_on_a_checkpointed_input_only_the_checkpoint_acknowledges() -> None:
    """Faust's stream acknowledges the events it skips while the flow is stopped; on the
    instruments agent's input that moved the committed offset past 17 messages the state had
    never applied (a bar 32 trades short after the rebalance)."""
    app = SimpleNamespace(
        consumer_generation_id=3,
        rebalancing=False,
        flow_control=FlowControl(),
        in_transaction=False,
    )
    c = Checkpointer(app, "instruments", [], topic="raw")
    assert c in transport.partition_states
    raw, other = (
        SimpleNamespace(topic="raw", generation_id=3),
        SimpleNamespace(topic="control", generation_id=3),
    )
    assert not transport.acknowledgeable(app, raw)  # a stream skipping it
    assert transport.acknowledgeable(app, other)
    with transport.checkpoint_acks.granted():
        assert transport.acknowledgeable(app, raw)
        stale = SimpleNamespace(topic="raw", generation_id=2)
        assert not transport.acknowledgeable(app, stale)
    assert not transport.checkpoint_acks.active


def test_a_journal_older_than_the_committed_offset_is_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker that stood still can write its last journal after the partition's new owner
    went on: older than what was committed since, it must not be put back over newer rows."""
    from app import checkpoint_journal as J

    async def flush(producer: Any) -> None:
        pass

    monkeypatch.setattr(checkpoints, "flush_buffered", flush)
    books, bars = NamedTable("books", {b"1003": b"newer"}), NamedTable("bars", {b"1003": b"newer"})
    rows = [("books", b"1003", b"older"), ("bars", b"1003", b"older")]
    journal = {J.key("instruments", 0, i): c for i, c in enumerate(J.encode(J.new_id(), rows, 5))}
    app = App()
    app.consumer._committed_offset[TP("raw", 0)] = 40
    c = _checkpointer(app, books, bars, journal)

    async def take_up() -> None:
        async for _ in c.events(Stream([Event(Message(0, 3, offset=40))])):
            pass

    asyncio.run(take_up())
    assert books == {b"1003": b"newer"} and bars == {b"1003": b"newer"}
