"""The Faust runtime under the agents: the Kafka transport, transactions, commits, rebalances
and fenced or paused workers. Every use of Faust's and aiokafka's private names is in this
module, each with its reason (tests/unit/test_transport.py and test_checkpoints.py test them).

Offsets are never committed ahead of the table state they cover. Under exactly_once,
faust-streaming 0.15 commits a transaction's offsets without first draining its producer
buffer, where table changelog writes wait (`send_soon`). Those writes then join the *next*
transaction, after the offsets that cover them: a worker killed in between restarts from the
committed offsets with state that lacks them, and the updates are lost. (At-least-once flushes
first; see `Consumer._commit_offsets`.) Flushing before the commit (`flush_buffered`) puts
every changelog write in the transaction of the offsets it belongs to, so state, outputs and
offsets commit together.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import shutil
import time
import weakref
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any, Protocol

import faust
from aiokafka.errors import IllegalOperation, KafkaError, ProducerFenced
from faust.exceptions import ProducerSendError
from faust.streams import _current_event
from faust.tables.recovery import Recovery
from faust.transport.consumer import TransactionManager, ensure_TP
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP, EventT, TransportT
from faust.types.enums import ProcessingGuarantee

from app import metrics
from app.kafka import BrokerUnreachable
from app.local_state import open_local_state
from app.pauses import pause_clock

log = logging.getLogger(__name__)

# Agents that keep state in memory and checkpoint it register a guard here. Every offset
# commit (periodic, on rebalance, on shutdown) runs inside all guards: a guard writes its
# checkpoint and acks the events it covers on entry, and holds its agent still until the
# commit is done, so the offsets committed are exactly those the checkpoint covers and, under
# exactly_once, state, outputs and offsets share one transaction.
CommitGuard = Callable[[], AbstractAsyncContextManager[Any]]
commit_guards: list[CommitGuard] = []


class PartitionState(Protocol):
    """An agent's in-memory state, which follows the partitions of its input `topic`."""

    topic: str
    # Whether the topic's offsets have no gaps (written outside transactions), so that the
    # agent checks each message follows the last (`Checkpointer._in_sequence`)
    contiguous: bool

    def still(self) -> AbstractAsyncContextManager[Any]:
        """Hold the agent still, with no checkpoint of it in flight."""
        ...

    def release(self, partitions: set[int]) -> None:
        """Forget the partitions' state and their events not yet checkpointed."""
        ...

    def fence(self, partitions: set[int]) -> None:
        """Release the partitions and refuse their events until the next assignment."""
        ...

    def position(self, partition: int) -> int | None:
        """The offset the agent applies next in the partition, if it has taken any since
        the partition was assigned."""
        ...


# Every agent's state: a revoke runs with all of them still and releases the partitions in all.
partition_states: list[PartitionState] = []


class CheckpointAcks:
    """Whether the acknowledgements being made come from a checkpoint (`Checkpointer._write`):
    on a checkpointed agent's input, no other acknowledgement may count."""

    def __init__(self) -> None:
        self.active = False

    @contextmanager
    def granted(self) -> Iterator[None]:
        self.active, before = True, self.active
        try:
            yield
        finally:
            self.active = before


checkpoint_acks = CheckpointAcks()


# Output topic -> the input topic whose partitions it mirrors (same key, partitioner and
# partition count). Under exactly_once Faust picks a message's transaction from the partition
# of its topic, but it knows partitions only of topics the worker consumes: a message to any
# other topic was sent outside every transaction, visible at once and repeated after a crash.
# A message to a registered output topic joins the transaction of the same input partition.
output_sources: dict[str, str] = {}
# Output topic -> the input topic whose transactions its messages join, for a topic keyed
# otherwise than the input (options.parts goes to the partition of an option group, not of the
# event that made it). Such a message names the input partition it comes from in this header
# (8 bytes, big-endian, as app/feeds/watermarks.py encodes), and joins that partition's
# transaction.
SOURCE_PARTITION_HEADER = "src-part"
cross_sources: dict[str, str] = {}


def source_partition(headers: Any) -> int | None:
    """The `src-part` header of a message being sent or consumed (a list of pairs or a dict)."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    for k, v in pairs:
        if k == SOURCE_PARTITION_HEADER and v is not None:
            if len(v) != 8:
                raise ValueError(f"a {SOURCE_PARTITION_HEADER} header holds 8 bytes, not {len(v)}")
            return int.from_bytes(v, "big", signed=True)
    return None


@contextmanager
def as_event(event: EventT) -> Iterator[None]:
    """Table writes go to the changelog partition of the current event; a checkpoint runs
    outside any event, so it writes as the last event of the partition it covers. Faust keeps
    the current event in a private context variable, which is the only way to say so."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


class _FlushMark:
    """Queued in Faust's producer buffer like a message: when the buffer's sender reaches it,
    every message queued before it has been handed to the Kafka client."""

    def __init__(self) -> None:
        self.reached: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.message = self.channel = self

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        if not self.reached.done():
            self.reached.set_result(None)


async def flush_buffered(producer: Any) -> None:
    """Deliver every message buffered until now, and no more. Faust's own flush waits until
    its buffer is empty but gives up once no message went out for 0.1 s: it returned with
    messages still buffered (under exactly_once they then joined the next transaction, after
    the offsets that cover them) and, while agents kept adding messages, did not return at all
    (a 64 s commit outlived its transaction's 60 s timeout and fenced the worker)."""
    buffer = producer.buffer
    if buffer.state != "running":
        raise RuntimeError("cannot flush: the producer buffer is not running")
    # Queued even when the buffer looks empty: the message its sender took last may still be
    # on its way to the client, and the mark is reached only after it.
    mark = _FlushMark()
    buffer.put(mark)
    await mark.reached
    for client in (producer._producer, *producer._transaction_producers.values()):
        if client is not None:
            await client.flush()


class FlushingTransactionManager(TransactionManager):
    async def commit(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        """Faust's commit, flushing first and committing each partition's transaction on its
        own: one that was fenced is lost to this worker (`GuardedProducer.fence`) where Faust
        crashed the worker, and the others still commit."""
        t0 = time.monotonic()
        await flush_buffered(self.app.producer)
        t1 = time.monotonic()
        if stall_guard.stood_still():
            return False  # left open, aborted when the worker gives the partitions up
        group_id = self.app.conf.id
        by_tid: dict[str, dict[TP, int]] = {}
        for tp, offset in offsets.items():
            group = self.app.assignor.group_for_topic(tp.topic)
            by_tid.setdefault(f"{group_id}-{group}-{tp.partition}", {})[tp] = offset
        producer = self.app.producer
        for tid, tid_offsets in sorted(by_tid.items()):
            if tid in producer.fenced:
                continue
            try:
                await producer.commit_transactions(
                    {tid: tid_offsets}, group_id, start_new_transaction=start_new_transaction
                )
            except FENCED_ERRORS as exc:
                producer.fence(tid, exc)
        t2 = time.monotonic()
        if t2 - t0 > SLOW_COMMIT_S:
            log.warning(
                "slow transaction commit: %.1f s flushing, %.1f s committing %d partitions",
                t1 - t0,
                t2 - t1,
                len(by_tid),
            )
        return True

    async def abort_open(self, revoked: set[TP]) -> None:
        """Abort the open transactions of revoked partitions and begin empty ones: a send
        that reaches a producer out of a transaction fails and crashes the worker (seen under
        load), and Faust's next begin, for a partition assigned again, only logs that one is
        open already. The producer of a partition lost is stopped by Faust. A fenced one is
        left alone: starting it again would fence the worker that owns the partition now (a
        worker paused past its session timeout did so on waking up)."""
        producer = self.app.producer
        await flush_buffered(producer)
        for tid in sorted(self._tps_to_transactional_ids(revoked) - producer.fenced):
            await producer.abort_transaction(tid)
            # Faust drops the producer if the abort found it fenced.
            if tid in producer._transaction_producers:
                await producer.begin_transaction(tid)

    async def on_rebalance(
        self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP]
    ) -> None:
        # Faust starts a producer for each assigned partition that has none, and reuses the
        # one it has. A fenced producer is past use, and so is one kept from an earlier
        # assignment of a partition newly assigned: another worker's producer has fenced it
        # since, which this one learnt only when its sends failed.
        producer = self.app.producer
        stale = producer.fenced | self._tps_to_transactional_ids(newly_assigned)
        # So is one whose client has gone fatal (fenced while the worker stood still): its
        # abort at the revoke failed, and Faust keeps it.
        stale |= {
            tid
            for tid, client in producer._transaction_producers.items()
            if client._txn_manager is not None and client._txn_manager.is_fatal_error()
        }
        for tid in sorted(stale & set(producer._transaction_producers)):
            try:
                await producer.stop_transaction(tid)
            except Exception as exc:  # a fenced client may fail to stop cleanly; it is gone
                log.info("stopping the fenced producer %s: %r", tid, exc)
        producer.fenced.clear()
        await super().on_rebalance(assigned, revoked, newly_assigned)

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> Any:
        source = output_sources.get(topic)
        txn_partition = partition
        if source is None and topic in cross_sources:
            source, txn_partition = cross_sources[topic], source_partition(headers)
            if txn_partition is None:
                raise ValueError(f"a message to {topic} needs a {SOURCE_PARTITION_HEADER} header")
        if source is None:
            return await super().send(topic, key, value, partition, timestamp, headers)
        if partition is None:
            raise ValueError(f"a message to {topic} needs its partition under exactly_once")
        group = self.app.assignor.group_for_topic(source)
        return await self.producer.send(
            topic,
            key,
            value,
            partition,
            timestamp,
            headers,
            transactional_id=f"{self.app.conf.id}-{group}-{txn_partition}",
        )


async def revoke_with_states_still(
    revoked: set[TP],
    faust_revoke: Callable[[set[TP]], Awaitable[None]],
    transactions: Any,
    exactly_once: bool,
) -> set[int]:
    """Faust's revoke, with every agent still and no commit in flight, then the revoked
    partitions released in every agent; returns them. Their events not yet checkpointed are
    dropped, to be processed again from the committed offsets by whoever owns the partitions
    next; under exactly_once the outputs those events already sent sit in the partitions' open
    transactions, which are aborted. Faust leaves them open, and when a partition came straight
    back to the same worker they were committed later beside the repeats of the same outputs.
    Holding the agents still through Faust's part keeps a commit from taking a checkpoint
    between Faust dropping the partitions' acknowledgements and the release: its writes would be
    aborted, or its commit would meet a transaction just aborted and crash the worker."""
    async with AsyncExitStack() as stack:
        for state in partition_states:
            await stack.enter_async_context(state.still())
        await faust_revoke(revoked)
        topics = {state.topic for state in partition_states}
        mine = {tp for tp in revoked if tp.topic in topics}
        if mine and exactly_once:
            await transactions.abort_open(mine)
        for state in partition_states:
            gone = {tp.partition for tp in mine if tp.topic == state.topic}
            if gone:
                state.release(gone)
    partitions = {tp.partition for tp in mine}
    if partitions:
        log.info("released partitions %s", sorted(partitions))
    return partitions


# How long a worker waits, before it joins the group, for the broker's metadata to list the
# topics it subscribes to. Topics it has just created show within milliseconds; one that
# nobody creates ends the wait with a warning, and the worker goes on as Faust would.
TOPICS_LISTED_WAIT_S = 30.0
TOPICS_LISTED_POLL_S = 0.1


async def wait_for_topics_listed(
    list_partitions: Callable[[], Awaitable[Mapping[str, int]]],
    topics: set[str],
    wait_s: float = TOPICS_LISTED_WAIT_S,
    poll_s: float = TOPICS_LISTED_POLL_S,
) -> set[str]:
    """Wait until every topic in `topics` shows in the broker's metadata with partitions;
    return those still missing when `wait_s` runs out.

    A broker answers CreateTopics once its controller has the topic, and lists it in metadata a
    moment later. A worker that joined the group in between took a changelog it had just created
    as having no partitions; at the first commit Faust compared that 0 with the source topic's
    partitions, raised PartitionsMismatch in the commit handler and the worker died (seen in CI,
    tests/integration/test_dashboard.py)."""
    deadline = time.monotonic() + wait_s
    while True:
        listed = await list_partitions()
        missing = {topic for topic in topics if not listed.get(topic)}
        if not missing or time.monotonic() >= deadline:
            return missing
        await asyncio.sleep(poll_s)


class ConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust fixes the broker's longest wait for fetch data at 1.5 s. A partition that
        # still had records buffered is left out of the next fetch request; when records for
        # it arrive while that request waits on quiet partitions, they wait with it. One busy
        # instrument then ran 1-1.6 s behind for good (load_tests/bench_pipeline.py).
        consumer._fetch_max_wait_ms = int(self.app.fetch_wait_s * 1000)  # type: ignore[attr-defined]
        return consumer

    async def subscribe(self, topics: Any) -> None:
        wanted = set(topics)
        began = time.monotonic()
        # One call into the consumer's thread per request (the client lives on its loop), the
        # waiting between them here: the thread's call queue has two slots, and Faust's
        # fetches and commits need them.
        missing = await wait_for_topics_listed(
            lambda: self.call_thread(self._listed_partitions, wanted), wanted
        )
        waited = time.monotonic() - began
        if not missing:
            log.info("the broker lists all %d topics subscribed to (%.2f s)", len(wanted), waited)
        else:
            log.warning(
                "joining the group though the broker's metadata does not list %s after %.0f s",
                sorted(missing),
                TOPICS_LISTED_WAIT_S,
            )
        await super().subscribe(wanted)

    async def _listed_partitions(self, wanted: set[str]) -> Mapping[str, int]:
        # A metadata request for every topic, apart from the set aiokafka tracks: asking for
        # specific topics could auto-create them on a broker that allows it. A broker that
        # does not answer lists nothing this time; the wait asks again until its deadline,
        # where before this wait a subscription never needed the broker at all.
        try:
            cluster = await self._ensure_consumer()._client.fetch_all_metadata()
        except (TimeoutError, KafkaError, OSError) as exc:
            log.info("metadata for the subscription not read (%s); asking again", exc)
            return {}
        return {topic: len(cluster.partitions_for_topic(topic) or ()) for topic in wanted}

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        # Faust, inside a transaction, answers from the last stable offset of aiokafka's last
        # fetch, which is None for a partition not fetched since it was assigned: Faust took
        # that as -1, so a worker taking over partitions at a rebalance restored none of their
        # changelog and failed its consistency check ("persisted offset ... is higher than the
        # last offset in that topic (highwater) (39 > -1)"). Asking the broker instead gives,
        # read_committed, the last stable offset: what recovery may read.
        consumer = self._ensure_consumer()
        if not self.app.in_transaction:
            return await consumer.end_offsets(partitions)  # type: ignore[no-any-return]
        return await self._settled_offsets(consumer, partitions)

    async def _settled_offsets(self, consumer: Any, partitions: list[TP]) -> Mapping[TP, int]:
        """Last stable offsets, asked again until two answers SETTLE_S apart agree (at most
        SETTLE_TRIES times). A commit returns before its markers reach the partitions it wrote,
        so asked right after the previous owner's last commit the offset could stop short of
        that commit's changelog writes while its input offsets were already committed: the new
        owner restored older state and skipped those events."""
        stable = await consumer.end_offsets(partitions)
        for _ in range(SETTLE_TRIES):
            await asyncio.sleep(SETTLE_S)
            again = await consumer.end_offsets(partitions)
            if again == stable:
                break
            stable = again
        return stable  # type: ignore[no-any-return]


class ReadOffsets(defaultdict):
    """Faust's read offsets (below its read offset, Faust's drain loop drops a partition's
    messages without a word), held at a seek's offset until the message sought arrives.

    The drain loop hands out a fetched batch one message at a time and sets the read offset
    after each: a seek made meanwhile (`Checkpointer._in_sequence` seeking back over a hole,
    or the seek that ends `perform_seek`) was undone by the rest of the batch, and the
    messages sought then came again below the read offset and were all dropped. The
    partition stood still until newer data came (seen in CI: books two minutes stale after a
    restart, a joining worker's partition stopped for good at the end of a replay)."""

    def __init__(self) -> None:
        super().__init__(lambda: None)
        self.held: dict[TP, int] = {}

    def hold(self, tp: TP, offset: int) -> None:
        self.held[tp] = offset
        super().__setitem__(tp, offset or None)

    def __setitem__(self, tp: TP, offset: int | None) -> None:
        held = self.held.get(tp)
        if held is not None:
            if offset != held:
                return  # the rest of a batch fetched before the seek
            del self.held[tp]
        super().__setitem__(tp, offset)

    def update(self, *args: Any, **kwargs: Any) -> None:
        # Faust's perform_seek sets the read offsets of the new assignment this way
        new = dict(*args, **kwargs)
        for tp in new:
            self.held.pop(tp, None)
        super().update(new)

    def pop(self, tp: TP, *default: Any) -> Any:
        self.held.pop(tp, None)
        return super().pop(tp, *default)


class CheckpointingConsumer(aiokafka_driver.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_offset = ReadOffsets()
        # The consumer generation whose assignment perform_seek has sought.
        self.sought_generation: int | None = None

    def _new_consumer_thread(self) -> aiokafka_driver.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _seek(self, partition: TP, offset: int) -> None:
        """aiokafka's seek, made in the consumer's thread like every other call into it.
        Faust made it from the event loop's thread, and aiokafka's seek drops what it has
        buffered for the partition while the consumer's thread may be handing that out: the
        fetcher then deleted the partition's records twice, and the KeyError crashed the worker
        (chaos seed 3, at a rebalance's seek). Never called from within a rebalance callback,
        during which the consumer's thread waits on this one."""
        await self._thread.call_thread(self._thread.seek, partition, offset)

    async def seek(self, partition: TP, offset: int) -> None:
        """Faust's seek, with the read offset held at `offset` (`ReadOffsets`)."""
        await self._seek(partition, offset)
        self._read_offset.hold(ensure_TP(partition), offset)

    async def force_commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        if stall_guard.stood_still():
            return False
        t0 = time.monotonic()
        async with AsyncExitStack() as stack:
            for guard in commit_guards:
                await stack.enter_async_context(guard())
            t1 = time.monotonic()
            # Asked again: the checkpoint may have waited out a stall, after which the offsets
            # it covers may be another worker's to commit.
            if stall_guard.stood_still():
                return False
            done = await super().force_commit(topics, start_new_transaction=start_new_transaction)
            t2 = time.monotonic()
        if time.monotonic() - t0 > SLOW_COMMIT_S:
            log.warning(
                "slow commit: %.1f s checkpointing, %.1f s committing offsets, %.1f s releasing",
                t1 - t0,
                t2 - t1,
                time.monotonic() - t2,
            )
        return bool(done)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        await revoke_with_states_still(
            revoked, super().on_partitions_revoked, self.transactions, self.app.in_transaction
        )

    def ack(self, message: Any) -> bool:
        return acknowledgeable(self.app, message) and bool(super().ack(message))

    async def perform_seek(self) -> None:
        """After the seek to the committed offsets, before any event of the assignment is
        taken: the log start of every contiguous input partition with nothing committed,
        where its first event must be. Without it a checkpointed agent took whatever came
        first as the start (seen in the chaos run: a partition taken over before its first
        commit lost its first 4,269 records, handed out from past them after a rebalance).

        Then each of those inputs is sought to its start again: what the fetcher brought
        while Faust sought was dropped (`assignment_sought`), and aiokafka leaves a partition
        with nothing committed wherever its fetcher was."""
        generation = self.app.consumer_generation_id
        await super().perform_seek()
        mine = {tp for tp in self.assignment() if tp.topic in contiguous_inputs()}
        fresh = {tp for tp in mine if committed_offset(self.app, tp) is None}
        if fresh:
            await log_starts.add(self.app, fresh)
        # Faust also calls this from getmany, uncancelled: an older call ending late must not
        # mark a newer assignment sought
        if self.app.consumer_generation_id != generation:
            return
        self.sought_generation = generation
        for tp in sorted(mine & self.assignment()):
            start = start_offset(self.app, tp)
            # a log start not learned: from offset 0, which the broker moves to its start
            await self.seek(tp, 0 if start is None else start)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Faust records the offsets its drain loop passes over as a gap, which a commit
        then passes whether or not they were acknowledged (`Consumer._new_offset` takes in
        every gap interval below the highest acknowledgement, whole). A contiguous input has
        no gaps of its own: what the loop passes over there is a stale batch ahead of a seek
        back, not yet applied (`Checkpointer._in_sequence`), and a hold on the read offset
        (`ReadOffsets`) widened it to the whole batch. Only `pass_over` makes such a gap."""
        if tp.topic not in contiguous_inputs():
            await super()._add_gap(tp, offset_from, offset_to)

    def pass_over(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Let commits pass offsets `offset_from` to `offset_to - 1` of a contiguous input,
        which the broker no longer has, and end the seek's hold."""
        self._gap[tp].addi(offset_from, offset_to)
        self._gap[tp].merge_overlaps()
        self._read_offset.held.pop(tp, None)


def contiguous_inputs() -> set[str]:
    """The input topics whose offsets have no gaps: written outside transactions, and read
    by an agent that checks each message follows the last."""
    return {state.topic for state in partition_states if state.contiguous}


def acknowledgeable(app: Any, message: Any) -> bool:
    """Whether an acknowledgement of `message` may count towards the committed offset.

    Faust's streams acknowledge the events they skip (fetched before a rebalance, or handed out
    while the flow is stopped) even where the agent acknowledges its own. Recorded after a
    revoke cleared the partition's acknowledgements, such an offset was committed before the
    event was checkpointed, or inside a transaction just aborted. Seen under at_least_once: a
    worker that gave two partitions up (a hole) skipped and acknowledged another partition's
    next 17 messages in the rebalance that followed, and resumed past them with state that had
    never applied them. So on a checkpointed agent's input only the checkpoint acknowledges.
    Under exactly_once that left a partition whose messages Faust skipped twice in a row (a hole
    found again) with an offset no acknowledgement could pass, and its commits stopped; there
    the earlier rule stands (stale events and events skipped during a rebalance)."""
    if (
        not checkpoint_acks.active
        and not app.in_transaction
        and any(message.topic == state.topic for state in partition_states)
    ):
        return False
    stale = message.generation_id != app.consumer_generation_id
    return not (stale or (app.rebalancing and not app.flow_control.is_active()))


class GuardedProducer(aiokafka_driver.Producer):
    """An output message over the producer's size limit fails its send, and a failed send
    stops the worker: such a message goes to the dead-letter topic instead (same partition,
    same transaction), with its size and the start of its payload, and is counted.

    Under exactly_once, a partition's transactions are fenced when the broker gives its
    transactional id to a newer producer (another worker took the partition over while this
    one was unresponsive) or aborts a transaction left open past its timeout. Faust then
    crashed the worker. Here the partition is lost to this worker instead (`lose_partitions`)
    and the messages still bound for its transactions are dropped: its owner processes their
    events again from the committed offsets."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fenced: set[str] = set()  # transactional ids fenced since the last rebalance

    def fence(self, transactional_id: str, exc: BaseException) -> None:
        if transactional_id in self.fenced:
            return
        self.fenced.add(transactional_id)
        partition = int(transactional_id.rsplit("-", 1)[1])
        metrics.partitions_fenced.inc()
        log.warning(
            "partition %d: its transactions were fenced (%s: %s); dropping its uncommitted "
            "work and rejoining the group",
            partition,
            type(exc).__name__,
            exc,
        )
        give_up(self.app, {partition})

    def _assigned(self, transactional_id: str) -> bool:
        partition = int(transactional_id.rsplit("-", 1)[1])
        inputs = {state.topic for state in partition_states}
        return any(
            tp.partition == partition and tp.topic in inputs
            for tp in self.app.consumer.assignment()
        )

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> Any:
        if transactional_id is not None and (
            transactional_id in self.fenced or transactional_id not in self._transaction_producers
        ):
            if transactional_id not in self.fenced and self._assigned(transactional_id):
                # Faust lost the producer of a partition still assigned here (it drops one
                # whose begin found it fenced): nothing of it can commit any more.
                self.fence(transactional_id, RuntimeError("no transactional producer"))
            # Bound for a transaction this worker can no longer commit: the events behind it
            # are processed again, from the committed offsets, by the partition's owner.
            metrics.messages_dropped_fenced.inc()
            return _dropped(transactional_id)
        # the record's own overhead and headers fit in the margin the app adds to the limit
        limit = self.app.conf.producer_max_request_size - OUTPUT_MARGIN
        # A table's changelog is left to fail loudly: a write missing from it would restore
        # as older state. Table values are bounded by design (pages, one key per part).
        oversized = len(value or b"") + len(key or b"") > limit
        if oversized and not topic.endswith("-changelog"):
            from app.dead_letters import oversized_output
            from app.topics import DEAD_LETTERS

            value = oversized_output(topic, key, value, partition, limit)
            topic, headers = DEAD_LETTERS, None
        try:
            return await super().send(
                topic, key, value, partition, timestamp, headers, transactional_id=transactional_id
            )
        except (*FENCED_ERRORS, ProducerSendError) as exc:
            cause = exc.__cause__ if isinstance(exc, ProducerSendError) else exc
            if transactional_id is None or not isinstance(cause, FENCED_ERRORS):
                raise
            self.fence(transactional_id, cause)
            metrics.messages_dropped_fenced.inc()
            return _dropped(transactional_id)


# What a commit or send meets once the broker fenced a transactional producer: ProducerFenced
# from the broker, then IllegalOperation from the client, whose transaction state is fatal.
FENCED_ERRORS = (ProducerFenced, IllegalOperation)

# Tasks started from synchronous code, kept referenced until done.
_background: set[asyncio.Future[Any]] = set()


def committed_offset(app: Any, tp: TP) -> int | None:
    """The offset Faust sought the partition to at its assignment, or last committed for
    it since (Faust keeps it privately)."""
    offset = app.consumer._committed_offset.get(tp)
    return None if offset is None else int(offset)


class LogStarts:
    """The first offset of the log of partitions with nothing committed: where the group's
    consumer begins them (auto_offset_reset earliest). Faust keeps a committed offset of 0 as
    None, like none at all. Asked of the broker once per assignment."""

    def __init__(self) -> None:
        self.generation: int | None = None
        self.starts: dict[TP, int] = {}

    async def add(self, app: Any, partitions: set[TP]) -> None:
        if self.generation != app.consumer_generation_id:
            self.generation = app.consumer_generation_id
            self.starts.clear()
        wanted = partitions - set(self.starts)
        if not wanted:
            return
        try:
            got = await app.consumer.earliest_offsets(*wanted)
        except Exception as exc:  # the broker may be away a moment; asked again later
            log.warning("log start offsets of %s unknown: %r", sorted(wanted), exc)
            return
        self.starts.update({tp: o for tp, o in got.items() if o is not None and o >= 0})

    def get(self, app: Any, tp: TP) -> int | None:
        if self.generation != app.consumer_generation_id:
            return None
        return self.starts.get(tp)


log_starts = LogStarts()


def assignment_sought(app: Any) -> bool:
    """Whether the current assignment's partitions have been sought to where the group goes
    on in them. Faust resumes them before it seeks and hands out what the fetcher brings
    meanwhile, while their committed offsets are not known yet: taken for the start of a
    partition with nothing committed, the log start (which the lag metric learns early) made
    a worker seek back to offset 0 and read the partition again."""
    return bool(app.consumer.sought_generation == app.consumer_generation_id)


def start_offset(app: Any, tp: TP) -> int | None:
    """Where the group goes on in the partition since its assignment: the committed offset,
    else the start of its log; None while neither is known. Known only once
    `assignment_sought`."""
    committed = committed_offset(app, tp)
    return committed if committed is not None else log_starts.get(app, tp)


def table_owner(app: Any, table: Any, key: str) -> Any | None:
    """The web URL of the worker that owns `key` in `table`; None while that cannot be known:
    before the assignor has a map of the group (Faust raises KeyError) or while this worker's
    producer has no metadata for the table's changelog topic yet (aiokafka's partitioner then
    iterates None and raises TypeError: the first seconds of a worker)."""
    try:
        return app.router.key_store(table.name, key)
    except (KeyError, TypeError):
        return None


async def send_output(
    app: Any, topic: str, key: bytes | None, value: bytes, partition: int
) -> None:
    """Hand one output message to the Kafka client now, past Faust's producer buffer.

    `send_soon` queues a FutureMessage for a task that hands it to the client later, with
    Faust's sensors and backpressure on the way: at full speed that took about an eighth of the
    worker's event loop, and each output waited an event-loop turn. Sent here, under
    exactly_once the message still goes through the transaction manager into the transaction
    of `partition` (the agent holds its event, so no commit runs meanwhile), and under
    at_least_once it is in the client before any checkpoint after it, whose flush waits for it.
    What the client then fails to deliver is logged and counted, as Faust's buffer logged it.
    A send the client refuses outright (not a fenced partition's: GuardedProducer drops those)
    stops the worker."""
    producer = await app.maybe_start_producer()
    try:
        delivered = await producer.send(topic, key, value, partition, None, None)
    except Exception as exc:
        # As when Faust's buffer could not hand a message over: the worker stops, and starts
        # again from its committed offsets and state.
        await app.crash(exc)
        raise
    delivered.add_done_callback(functools.partial(_undelivered, topic))


def _undelivered(topic: str, delivered: asyncio.Future[Any]) -> None:
    if delivered.cancelled():
        return
    exc = delivered.exception()
    if exc is None or isinstance(exc, ProducerFenced):  # fenced: counted where dropped
        return
    metrics.outputs_undelivered.labels(topic).inc()
    log.warning("an output to %s was not delivered: %r", topic, exc)


def _dropped(transactional_id: str) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_exception(ProducerFenced(f"dropped: transactions of {transactional_id} were fenced"))
    return fut


def give_up(app: Any, partitions: set[int]) -> None:
    """`lose_partitions` in the background, from synchronous code. If the
    partitions cannot be given up cleanly the worker crashes: a restart starts from the
    changelogs."""

    def done(task: asyncio.Future[Any]) -> None:
        _background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            crash = asyncio.ensure_future(app.crash(task.exception()))
            _background.add(crash)
            crash.add_done_callback(_background.discard)

    task = asyncio.ensure_future(lose_partitions(app, partitions))
    _background.add(task)
    task.add_done_callback(done)


class StallGuard:
    """A worker whose event loop stood still about as long as the group's session timeout
    may have been dropped from the group, its partitions handed to others (app/pauses.py).
    From the moment it notices, nothing of that consumer generation is committed: no offsets,
    no transaction, no new checkpoint. It gives up all its partitions, wiping their local
    tables (which may hold writes that never reached the changelog, or reached it only in a
    transaction the broker aborts), and rejoins; whatever it gets at the next assignment is
    restored from the changelogs, and the partitions' owners process its uncommitted events
    again.

    What was already on its way out is let go rather than dropped: a checkpoint cut in two
    would restore a book ahead of the counts and flow state derived from it, and the book,
    which decides what a redelivered message repeats, would then keep them from catching up.
    Under exactly_once the broker fences those sends. Under at_least_once a checkpoint that
    was leaving as the worker stopped lands late in the changelog; the new owner writes the
    same keys again at its next checkpoint of those instruments."""

    def __init__(self) -> None:
        self.app: Any = None
        self.generation: int | None = None  # the consumer generation a stall was noticed in

    def start(self, app: Any) -> None:
        self.app = app
        session = float(app.conf.broker_session_timeout)
        # The last heartbeat may have gone out up to one interval before the loop stopped.
        limit = max(session - float(app.conf.broker_heartbeat_interval), session / 2)
        pause_clock.start(limit, self._stalled)

    def stood_still(self) -> bool:
        """Whether the current generation is one this worker stood still in."""
        if self.app is None:
            return False
        pause_clock.observe()
        return self.generation is not None and self.generation == self.app.consumer_generation_id

    def _stalled(self, seconds: float) -> None:
        app = self.app
        if app is None or self.generation == app.consumer_generation_id:
            return
        inputs = {state.topic for state in partition_states}
        partitions = {tp.partition for tp in app.consumer.assignment() if tp.topic in inputs}
        if not partitions:
            return  # nothing held (starting, or between assignments): nothing to give up
        self.generation = app.consumer_generation_id
        log.warning(
            "this worker stood still for %.1f s, about the group's session timeout (%.0f s): "
            "its partitions %s may be another's now; dropping their uncommitted work and local "
            "tables and rejoining the group",
            seconds,
            app.conf.broker_session_timeout,
            sorted(partitions),
        )
        metrics.pauses_past_session_timeout.inc()
        give_up(app, partitions)


stall_guard = StallGuard()


async def lose_partitions(app: Any, partitions: set[int]) -> None:
    """Give up partitions this worker can no longer commit for: with every agent still, drop
    their state and events (`PartitionState.fence`) and their local tables, which may hold a
    checkpoint's writes that never reached the changelog (or reached it only in a transaction
    the broker aborted); then rejoin the group. A partition that comes back is restored from
    its changelog like any newly assigned."""
    async with AsyncExitStack() as stack:
        for state in partition_states:
            await stack.enter_async_context(state.still())
        for state in partition_states:
            state.fence(partitions)
        for partition in sorted(partitions):
            wipe_local_partition(app, partition)
    # Even while a rebalance is under way: the partitions are refused until the next
    # assignment, which this one may already have been.
    thread = app.consumer._thread
    client = thread._ensure_consumer()
    thread.thread_loop.call_soon_threadsafe(client._coordinator.request_rejoin)


def wipe_local_partition(app: Any, partition: int) -> None:
    for table in app.tables.values():
        store = table.data
        dbs = getattr(store, "_dbs", None)
        if dbs is None:  # the memory store cannot tell one partition's keys from another's
            raise RuntimeError(
                f"partition {partition} was fenced and its local state cannot be wiped "
                f"from a {type(store).__name__}; restart the worker"
            )
        dbs.pop(partition, None)  # RocksDB closes the partition's database when it goes
        shutil.rmtree(store.partition_path(partition), ignore_errors=True)
        # Faust remembers how far it restored each changelog partition and, for one assigned
        # again, reads on from there: it must read this one from the start.
        for topic in table.changelog_topic.topics:
            app.tables.recovery.revoke(TP(topic, partition))


# A commit slower than this is logged with where its time went.
SLOW_COMMIT_S = 5.0

# Recovery's highwaters under exactly_once: asked again this far apart until they agree.
SETTLE_S = 0.2
SETTLE_TRIES = 15

# What the producer's request limit allows beyond a message's key and value (App sets the
# limit to the largest message plus this).
OUTPUT_MARGIN = 65_536


class SeekingRecovery(Recovery):
    """Table recovery that never seeks a changelog partition to an offset aiokafka refuses.
    faust-streaming 0.15 keeps None as the start of a partition with no persisted offset
    whose earliest offset it did not learn (`Recovery._add`, then `_build_offsets`), and
    `_seek_offsets` passes it on: `seek` raised "Offset must be a positive integer" and the
    worker crashed while starting its standby partitions (seen in the chaos run, on a worker
    whose state had been wiped, after broker restarts). Such a partition is read from its
    start, as a new standby or a wiped worker's would be anyway."""

    async def _seek_offsets(self, consumer: Any, tps: Any, offsets: Any, title: str) -> None:
        await super()._seek_offsets(consumer, tps, seekable_offsets(tps, offsets), title)


def seekable_offsets(tps: Any, offsets: Mapping[TP, int | None]) -> Counter[TP]:
    """Each partition's offset to read from: -1 and None (nothing known) as the start."""
    out: Counter[TP] = Counter()
    for tp in tps:
        offset = offsets.get(tp)
        out[tp] = offset if isinstance(offset, int) and offset >= 0 else 0
    return out


class TableManager(faust.tables.TableManager):
    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SeekingRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


class Transport(aiokafka_driver.Transport):
    Consumer = CheckpointingConsumer
    Producer = GuardedProducer
    TransactionManager = FlushingTransactionManager


# What must hold before a worker starts anything (agents/access.py adds its rules): each
# returns the reason it must not, or None.
start_checks: list[Callable[[Any], str | None]] = []

# What a worker prepares before it joins its group (agents/instruments.py adds the kernels'
# compile): slow synchronous work that, done later on the event loop, stood a member of the
# group still past its session timeout.
before_joining: list[Callable[[], None]] = []


class Worker(faust.Worker):
    """`faust worker` without the terminal spinner. At the default log level (WARN) Faust
    installs a spinner handler that sets the root logger to DEBUG, so every debug call in
    Faust, aiokafka and mode built a LogRecord only to drop it: about 4% of a busy worker's
    CPU. Without it the root logger keeps the level asked for."""

    def _setup_spinner_handler(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None

    async def on_execute(self) -> None:
        for check in start_checks:
            problem = check(self.app)
            if problem:
                log.critical("the worker will not start: %s", problem)
                raise SystemExit(1)
        for prepare in before_joining:
            prepare()
        if self.app.wait_for_broker is not None:
            try:
                await self.app.wait_for_broker()
            except BrokerUnreachable as exc:
                log.critical("the worker will not start: %s", exc)
                raise SystemExit(1) from None
        # after Faust changed to --workdir, which a relative data directory is read from
        exactly_once = self.app.conf.processing_guarantee == ProcessingGuarantee.EXACTLY_ONCE
        open_local_state(Path(self.app.conf.tabledir), exactly_once)
        stall_guard.start(self.app)
        await super().on_execute()

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        freeze_heap()


def freeze_heap() -> None:
    """Exempt everything alive now (modules, Faust's services, compiled kernels: about a
    million objects) from the garbage collector. A full collection walked them all and
    stopped the worker for 70-150 ms, the largest delays in bench_pipeline's latency."""
    gc.collect()
    gc.freeze()


class App(faust.App):
    # The broker's longest wait for fetch data (`ConsumerThread`); app.faust_app sets it.
    fetch_wait_s: float = 0.02
    # Awaited before Faust's start-up, which makes one attempt at the broker.
    wait_for_broker: Callable[[], Awaitable[None]] | None = None

    def _new_transport(self) -> TransportT:
        return Transport(self.conf.broker_consumer, self)
