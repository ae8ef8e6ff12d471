"""The runtime under load, with Faust's own producer buffer and stand-ins for the Kafka client:
what a flush before a checkpoint or commit waits for, how a worker tells it stood still, and
what becomes of an output the client fails or refuses."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaError, ProducerFenced
from faust.transport.producer import ProducerBuffer
from prometheus_client import REGISTRY

from app import transport


@dataclass
class Channel:
    """Sends a message by waiting `seconds`, as a client blocked on a busy broker does."""

    seconds: float
    sent: list[int] = field(default_factory=list)

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        await asyncio.sleep(self.seconds)
        self.sent.append(fut.n)


def message(channel: Channel, n: int) -> Any:
    fut = SimpleNamespace(n=n)
    fut.message = SimpleNamespace(channel=channel)
    return fut


@dataclass
class Client:
    flushed: int = 0

    async def flush(self) -> None:
        self.flushed += 1


async def started_buffer() -> ProducerBuffer:
    buffer = ProducerBuffer()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
    await buffer.start()
    return buffer


def test_a_flush_delivers_what_was_buffered_even_when_each_send_is_slow() -> None:
    async def run() -> tuple[list[int], int]:
        buffer = await started_buffer()
        channel, client = Channel(0.15), Client()
        for n in range(3):
            buffer.put(message(channel, n))
        producer = SimpleNamespace(buffer=buffer, _producer=client, _transaction_producers={})
        await transport.flush_buffered(producer)
        sent = list(channel.sent)
        await buffer.stop()
        return sent, client.flushed

    # Faust's own flush gave up after 0.1 s without a send, leaving two of them buffered.
    assert asyncio.run(run()) == ([0, 1, 2], 1)


def test_a_flush_returns_while_agents_keep_adding_messages() -> None:
    async def run() -> tuple[list[int], int]:
        buffer = await started_buffer()
        channel = Channel(0.001)
        for n in range(5):
            buffer.put(message(channel, n))

        async def busy_agent() -> None:
            n = 100
            while True:
                buffer.put(message(channel, n))
                n += 1
                await asyncio.sleep(0)

        agent = asyncio.create_task(busy_agent())
        producer = SimpleNamespace(buffer=buffer, _producer=None, _transaction_producers={})
        await asyncio.wait_for(transport.flush_buffered(producer), timeout=5)
        agent.cancel()
        sent = list(channel.sent)
        while not buffer.pending.empty():  # what the agent added since: not the test's
            buffer.pending.get_nowait()
        await buffer.stop()
        return sent[:5], len(sent)

    first, _ = asyncio.run(run())
    assert first == [0, 1, 2, 3, 4]


# -- a worker that stood still -------------------------------------------------------------


def test_the_pause_clock_counts_each_stall_past_its_limit_once() -> None:
    import time

    from app.pauses import PauseClock

    stalls: list[float] = []

    async def run() -> tuple[bool, bool, bool]:
        clock = PauseClock(tick_s=0.01)
        clock.start(limit=0.2, on_stall=stalls.append)
        await asyncio.sleep(0.1)
        ticking = clock.observe()
        time.sleep(0.3)  # the loop held, as by SIGSTOP or a long call
        # asked before the clock ticks again, as a send or a commit waiting on the loop does
        held = clock.observe()
        await asyncio.sleep(0.05)
        after = clock.observe()
        clock.stop()
        return ticking, held, after

    ticking, held, after = asyncio.run(run())
    assert not ticking and held and not after
    assert len(stalls) == 1 and stalls[0] >= 0.3


def test_recovery_reads_a_changelog_partition_with_no_known_offset_from_its_start() -> None:
    """Faust left None for such a partition and aiokafka's seek refused it, crashing the
    worker as it started its standbys."""
    from faust.types import TP

    a, b, c, d = (TP("x-changelog", p) for p in range(4))
    got = transport.seekable_offsets({a, b, c, d}, {a: None, b: -1, c: 41})
    assert got == {a: 0, b: 0, c: 41, d: 0}


def test_the_app_recovers_tables_through_the_seeking_recovery() -> None:
    from app.faust_app import app

    assert isinstance(app.tables.recovery, transport.SeekingRecovery)


def test_the_seek_at_an_assignment_learns_where_uncommitted_inputs_begin(
    monkeypatch: Any,
) -> None:
    """Input partitions with nothing committed get their log start at the assignment's seek,
    before any event of it is taken; committed ones and changelogs are not asked. Then each
    input is sought to where it begins."""
    from faust.types import TP

    from app.transport import CheckpointingConsumer, aiokafka_driver

    asked: list[set[TP]] = []

    async def seek_to_committed(self: Any) -> None:
        self._committed_offset[TP("raw", 0)] = 40

    async def earliest_offsets(*tps: TP) -> dict[TP, int]:
        asked.append(set(tps))
        return {tp: 7 for tp in tps}

    monkeypatch.setattr(aiokafka_driver.Consumer, "perform_seek", seek_to_committed)
    monkeypatch.setattr(
        transport,
        "partition_states",
        [
            SimpleNamespace(topic="raw", contiguous=True),
            SimpleNamespace(topic="parts", contiguous=False),
        ],
    )
    monkeypatch.setattr(transport, "log_starts", transport.LogStarts())
    consumer = object.__new__(CheckpointingConsumer)
    assigned = {TP("raw", 0), TP("raw", 1), TP("parts", 1), TP("x-books-changelog", 1)}
    consumer.assignment = lambda: assigned  # type: ignore[method-assign]
    consumer._committed_offset = {}
    app = SimpleNamespace(consumer=consumer, consumer_generation_id=5)
    consumer.earliest_offsets = earliest_offsets  # type: ignore[method-assign]
    consumer.app = app

    sought: list[tuple[TP, int]] = []

    async def seek(tp: TP, offset: int) -> None:
        sought.append((tp, offset))

    consumer.seek = seek  # type: ignore[method-assign]
    asyncio.run(consumer.perform_seek())
    assert asked == [{TP("raw", 1)}]
    # each input sought again, to where it begins: what came before the seek was dropped
    assert sought == [(TP("raw", 0), 40), (TP("raw", 1), 7)]
    assert transport.assignment_sought(app)
    assert transport.start_offset(app, TP("raw", 1)) == 7
    assert transport.start_offset(app, TP("raw", 0)) == 40


def test_a_seek_holds_the_read_offset_until_the_message_sought_arrives() -> None:
    """Faust's drain loop sets the read offset after each message it hands out and drops
    what comes below it: the rest of a batch fetched before a seek must not undo the seek,
    or the messages sought come again below the read offset and are all dropped."""
    from faust.types import TP

    offsets = transport.ReadOffsets()
    tp = TP("raw", 0)
    offsets[tp] = 160
    offsets.hold(tp, 152)
    for stale in (161, 162, 163):  # the rest of the batch, handed out after the seek
        offsets[tp] = stale
    assert offsets[tp] == 152  # so 152 onwards, fetched again, pass Faust's filter
    offsets[tp] = 152  # the message sought
    offsets[tp] = 153
    assert offsets[tp] == 153
    # A new assignment's offsets (Faust's perform_seek) and a revoke end a hold.
    offsets.hold(tp, 10)
    offsets.update({tp: 40})
    offsets[tp] = 41
    assert offsets[tp] == 41
    offsets.hold(tp, 0)
    assert offsets[tp] is None
    offsets.pop(tp, None)
    offsets[tp] = 5
    assert offsets[tp] == 5


def test_a_seek_is_made_in_the_consumers_thread_and_then_held() -> None:
    """aiokafka's seek drops the partition's buffered records; made outside the consumer's
    thread it raced the thread's handing them out and crashed the worker."""
    from faust.types import TP

    calls: list[tuple] = []

    class Thread:
        def seek(self, tp: TP, offset: int) -> None:
            calls.append(("seek", tp, offset))

        async def call_thread(self, fun: object, *args: object) -> None:
            calls.append(("in thread", getattr(fun, "__name__", fun)))
            fun(*args)  # type: ignore[operator]

    consumer = object.__new__(transport.CheckpointingConsumer)
    consumer._thread = Thread()
    consumer._read_offset = transport.ReadOffsets()
    tp = TP("raw", 1)
    asyncio.run(consumer.seek(tp, 42))
    assert calls == [("in thread", "seek"), ("seek", tp, 42)]
    assert consumer._read_offset.held == {tp: 42}


def test_only_a_skip_decided_lets_commits_pass_offsets_of_a_contiguous_input(
    monkeypatch: Any,
) -> None:
    """Faust's drain loop records what it passes over as a gap, which a commit passes whole:
    on a contiguous input that is a stale batch ahead of a seek back, not yet applied, so
    no gap is kept there, but one is on other inputs (transaction markers) and where the
    agent gives up on offsets the broker no longer has."""
    from faust.types import TP
    from intervaltree import IntervalTree

    from app.transport import CheckpointingConsumer

    monkeypatch.setattr(
        transport,
        "partition_states",
        [
            SimpleNamespace(topic="raw", contiguous=True),
            SimpleNamespace(topic="parts", contiguous=False),
        ],
    )
    consumer = object.__new__(CheckpointingConsumer)
    consumer._gap = defaultdict(IntervalTree)
    consumer._committed_offset = defaultdict(lambda: None)
    consumer._read_offset = transport.ReadOffsets()

    asyncio.run(consumer._add_gap(TP("raw", 0), 153, 300))
    asyncio.run(consumer._add_gap(TP("parts", 0), 11, 11))
    assert not consumer._gap[TP("raw", 0)]
    assert sorted((i.begin, i.end) for i in consumer._gap[TP("parts", 0)]) == [(11, 12)]

    consumer._read_offset.hold(TP("raw", 0), 152)
    consumer.pass_over(TP("raw", 0), 152, 160)
    assert sorted((i.begin, i.end) for i in consumer._gap[TP("raw", 0)]) == [(152, 160)]
    consumer._read_offset[TP("raw", 0)] = 160  # the hold is over
    assert consumer._read_offset[TP("raw", 0)] == 160


async def test_a_worker_joins_only_once_the_broker_lists_the_topics_it_just_created() -> None:
    # The broker lists a new changelog a few answers after it acknowledged creating it; until
    # then it shows no partitions, which Faust took as a mismatch with the source topic.
    answers = [
        {"mbo.raw": 4},
        {"mbo.raw": 4, "app-journal-changelog": 0},
        {"mbo.raw": 4, "app-journal-changelog": 4},
    ]
    asked = 0

    async def listed() -> dict[str, int]:
        nonlocal asked
        asked += 1
        return answers[min(asked, len(answers)) - 1]

    missing = await transport.wait_for_topics_listed(
        listed, {"mbo.raw", "app-journal-changelog"}, wait_s=5, poll_s=0
    )
    assert missing == set()
    assert asked == 3


async def test_a_topic_nobody_creates_ends_the_wait_and_is_named() -> None:
    async def listed() -> dict[str, int]:
        return {"mbo.raw": 4}

    missing = await transport.wait_for_topics_listed(
        listed, {"mbo.raw", "never.made"}, wait_s=0.05, poll_s=0.01
    )
    assert missing == {"never.made"}


async def test_a_broker_that_does_not_answer_lists_nothing_and_the_wait_asks_again() -> None:
    answers: list[Any] = [
        KafkaError("no broker answered"),
        SimpleNamespace(partitions_for_topic=lambda t: {0, 1, 2, 3} if t == "mbo.raw" else None),
    ]

    class Client:
        async def fetch_all_metadata(self) -> Any:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    thread = object.__new__(transport.ConsumerThread)
    thread._ensure_consumer = lambda: SimpleNamespace(_client=Client())  # type: ignore[method-assign]
    missing = await transport.wait_for_topics_listed(
        lambda: thread._listed_partitions({"mbo.raw"}), {"mbo.raw"}, wait_s=5, poll_s=0
    )
    assert missing == set()
    assert answers == []


@dataclass
class OutputApp:
    """Stands in for the app with the Kafka client's answers to `send`: a delivery future, or
    an error raised at once."""

    refuse: Exception | None = None
    sent: list[tuple[str, bytes | None, bytes, int | None]] = field(default_factory=list)
    deliveries: list[asyncio.Future[Any]] = field(default_factory=list)
    crashed: list[BaseException] = field(default_factory=list)

    async def maybe_start_producer(self) -> OutputApp:
        return self

    async def send(self, topic, key, value, partition, timestamp, headers) -> asyncio.Future[Any]:  # type: ignore[no-untyped-def]
        if self.refuse is not None:
            raise self.refuse
        self.sent.append((topic, key, value, partition))
        self.deliveries.append(asyncio.get_running_loop().create_future())
        return self.deliveries[-1]

    async def crash(self, reason: BaseException) -> None:
        self.crashed.append(reason)


def _undelivered(topic: str) -> float:
    return REGISTRY.get_sample_value("tapestream_outputs_undelivered_total", {"topic": topic}) or 0


async def test_an_output_goes_to_the_client_at_once_on_its_partition() -> None:
    app = OutputApp()
    await transport.send_output(app, "t.bbo", b"7", b"{}", 3)
    assert app.sent == [("t.bbo", b"7", b"{}", 3)]  # handed over before the call returns
    before = _undelivered("t.bbo")
    app.deliveries[0].set_result(None)
    await asyncio.sleep(0)
    assert _undelivered("t.bbo") == before
    assert app.crashed == []


async def test_an_output_the_client_gives_up_on_is_counted_and_a_fenced_one_is_not() -> None:
    app = OutputApp()
    for _ in range(2):
        await transport.send_output(app, "t.signals", b"7", b"{}", 0)
    before = _undelivered("t.signals")
    app.deliveries[0].set_exception(KafkaError("request timed out"))
    app.deliveries[1].set_exception(ProducerFenced("dropped: fenced"))
    await asyncio.sleep(0)
    assert _undelivered("t.signals") == before + 1


async def test_an_output_the_client_refuses_stops_the_worker() -> None:
    app = OutputApp(refuse=KafkaError("producer closed"))
    with pytest.raises(KafkaError):
        await transport.send_output(app, "t.bbo", b"7", b"{}", 0)
    assert [str(r) for r in app.crashed] == [str(app.refuse)]
