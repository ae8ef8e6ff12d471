"""The Kafka transport, with offsets never committed ahead of the table state they cover.

Under processing_guarantee="exactly_once", faust-streaming 0.15 commits a transaction's
offsets without first draining its producer buffer, where table changelog writes wait
(`send_soon`). Those writes then join the *next* transaction, after the offsets that cover
them: a worker killed in between restarts from the committed offsets with state that lacks
them, and the updates are lost. (At-least-once flushes first; see `Consumer._commit_offsets`.)
Flushing before the commit puts every changelog write in the transaction of the offsets it
belongs to, so state, outputs and offsets commit together.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from pathlib import Path
from typing import Any, Protocol

import faust
from faust.transport.consumer import TransactionManager
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP, TransportT
from faust.types.enums import ProcessingGuarantee

from app.local_state import open_local_state

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

    def still(self) -> AbstractAsyncContextManager[Any]:
        """Hold the agent still, with no checkpoint of it in flight."""
        ...

    def release(self, partitions: set[int]) -> None:
        """Forget the partitions' state and their events not yet checkpointed."""
        ...


# Every agent's state: a revoke runs with all of them still and releases the partitions in all.
partition_states: list[PartitionState] = []


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


class FlushingTransactionManager(TransactionManager):
    async def commit(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        await self.app.producer.flush()
        return await super().commit(offsets, start_new_transaction=start_new_transaction)

    async def abort_open(self, revoked: set[TP]) -> None:
        """Abort the open transactions of revoked partitions and begin empty ones: a send
        that reaches a producer out of a transaction fails and crashes the worker (seen under
        load), and Faust's next begin, for a partition assigned again, only logs that one is
        open already. The producer of a partition lost is stopped by Faust."""
        await self.app.producer.flush()
        for tid in sorted(self._tps_to_transactional_ids(revoked)):
            await self.producer.abort_transaction(tid)
            await self.producer.begin_transaction(tid)

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


class ConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust fixes the broker's longest wait for fetch data at 1.5 s. A partition that
        # still had records buffered is left out of the next fetch request; when records for
        # it arrive while that request waits on quiet partitions, they wait with it. One busy
        # instrument then ran 1-1.6 s behind for good (load_tests/bench_pipeline.py).
        consumer._fetch_max_wait_ms = int(self.app.fetch_wait_s * 1000)  # type: ignore[attr-defined]
        return consumer

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


class CheckpointingConsumer(aiokafka_driver.Consumer):
    def _new_consumer_thread(self) -> aiokafka_driver.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def force_commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        async with AsyncExitStack() as stack:
            for guard in commit_guards:
                await stack.enter_async_context(guard())
            return await super().force_commit(topics, start_new_transaction=start_new_transaction)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        await revoke_with_states_still(
            revoked, super().on_partitions_revoked, self.transactions, self.app.in_transaction
        )

    def ack(self, message: Any) -> bool:
        # Faust's streams acknowledge the stale events they skip (fetched before a rebalance)
        # even where the agent acknowledges its own. Recorded after a revoke cleared the
        # partition's acknowledgements, such an offset would be committed before the
        # redelivered event was checkpointed, or inside a transaction just aborted.
        stale = message.generation_id != self.app.consumer_generation_id
        if stale or (self.app.rebalancing and not self.app.flow_control.is_active()):
            return False
        return bool(super().ack(message))


class GuardedProducer(aiokafka_driver.Producer):
    """An output message over the producer's size limit fails its send, and a failed send
    stops the worker: such a message goes to the dead-letter topic instead (same partition,
    same transaction), with its size and the start of its payload, and is counted."""

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
        return await super().send(
            topic, key, value, partition, timestamp, headers, transactional_id=transactional_id
        )


# Recovery's highwaters under exactly_once: asked again this far apart until they agree.
SETTLE_S = 0.2
SETTLE_TRIES = 15

# What the producer's request limit allows beyond a message's key and value (App sets the
# limit to the largest message plus this).
OUTPUT_MARGIN = 65_536


class Transport(aiokafka_driver.Transport):
    Consumer = CheckpointingConsumer
    Producer = GuardedProducer
    TransactionManager = FlushingTransactionManager


class Worker(faust.Worker):
    """`faust worker` without the terminal spinner. At the default log level (WARN) Faust
    installs a spinner handler that sets the root logger to DEBUG, so every debug call in
    Faust, aiokafka and mode built a LogRecord only to drop it: about 4% of a busy worker's
    CPU. Without it the root logger keeps the level asked for."""

    def _setup_spinner_handler(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None

    async def on_execute(self) -> None:
        # after Faust changed to --workdir, which a relative data directory is read from
        exactly_once = self.app.conf.processing_guarantee == ProcessingGuarantee.EXACTLY_ONCE
        open_local_state(Path(self.app.conf.tabledir), exactly_once)
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

    def _new_transport(self) -> TransportT:
        return Transport(self.conf.broker_consumer, self)
