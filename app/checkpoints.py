"""Checkpoint-at-commit for an agent whose state lives in memory and whose table holds the
checkpoint (the instruments and options agents).

The agent applies events under `state_lock` without acknowledging them (`unacked`). At every
commit (`app.transport.commit_guards`) the states' changes since the last checkpoint are written
to their tables, as the last event of each partition they cover, and only then are those events
acknowledged: committed offsets never run ahead of table state. Under exactly_once the agent
stays still from the checkpoint until the transaction commits, or outputs of events after the
checkpoint would commit with it and repeat after a crash; under at_least_once only taking the
checkpoint stops it, and outputs are flushed before the checkpoint that covers them is written,
so a crash can repeat outputs but never lose them. There, each partition's checkpoint goes to
its journal first (app/checkpoint_journal.py), so a checkpoint cut short by a crash is completed
when the partition is taken up again instead of leaving the tables at two different positions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

from faust.types import EventT

from app import checkpoint_journal, metrics
from app.transport import (
    as_event,
    assignment_sought,
    checkpoint_acks,
    commit_guards,
    committed_offset,
    flush_buffered,
    partition_states,
    stall_guard,
    start_offset,
)

log = logging.getLogger(__name__)

Rows = list[tuple[bytes, bytes | None]]  # (key, value or None to delete)


SEEK_EVERY_S = 0.2  # a stale message seen this long after the last seek asks for another
SEEK_LIMIT_S = 30.0
_seeks: set[asyncio.Future[Any]] = set()  # seeks under way, kept from the collector


class CheckpointedState(Protocol):
    def checkpoint(self) -> dict[int, Rows]: ...

    def evict(self, partitions: set[int]) -> Any: ...


Writes = list[tuple[Any, bytes, bytes | None]]  # (table, key, value or None to delete)
Checkpoint = dict[int, tuple[list[EventT], Writes]]  # partition -> (events covered, writes)


class Checkpointer:
    def __init__(
        self,
        app: Any,
        name: str,
        states: list[tuple[Any, CheckpointedState]],
        topic: str,
        forget: Callable[[int], None] | None = None,
        contiguous: bool = False,
        journal: Any | None = None,
    ) -> None:
        """`topic`: the agent's input, whose partitions its state follows; `forget(p)`: what
        else of partition p the agent keeps, dropped when p is revoked; `contiguous`: whether
        the input's offsets run without gaps (written outside transactions, so no markers),
        which lets `admit` check that no message was skipped; `journal`: the table that makes
        at_least_once checkpoints whole (app/checkpoint_journal.py), shared by every agent."""
        self.app = app
        self.name = name
        self.states = states  # (table, state) pairs
        self.journal = journal
        self.tables = {table.name: table for table, _ in states} if journal is not None else {}
        # Partition -> the consumer generation in which its journal was last settled.
        self.settled: dict[int, int] = {}
        self.topic = topic
        self.forget = forget
        # Held while a message is applied and while a checkpoint is taken: a checkpoint never
        # sees half a message.
        self.state_lock = asyncio.Lock()
        # One checkpoint at a time: a commit on rebalance may start while the periodic one
        # flushes.
        self.checkpoint_lock = asyncio.Lock()
        self.unacked: dict[int, list[EventT]] = {}
        # Partition -> the offset after the last event handed to the agent (`position`).
        self.next_offset: dict[int, int] = {}
        # Partition -> the consumer generation in which it was lost (`fence`): its events
        # are refused until the group assigns partitions again.
        self.fenced: dict[int, int] = {}
        self.contiguous = contiguous
        # Partition -> (generation, the offset its next event must have), and the offsets at
        # which a hole was found (`_in_sequence`).
        self.expected: dict[int, tuple[int, int]] = {}
        # Partition -> (generation, offset sought, when the hole was found, last seek)
        self.seeking: dict[int, tuple[int, int, float, float]] = {}
        commit_guards.append(self.at_commit)
        partition_states.append(self)

    async def events(self, stream: Any) -> AsyncIterator[EventT]:
        """The agent loop every checkpointed agent runs: each event of `stream` it may apply
        (`admit`), handed out with `state_lock` held until the agent asks for the next one, so
        a checkpoint never sees half an event applied. Events are acknowledged by the
        checkpoint that covers them, never by Faust on the way in. Run it under
        `contextlib.aclosing`, so that an agent stopped mid-event releases the lock at once."""
        async for event in stream.noack().events():
            async with self.state_lock:
                if self.admit(event):
                    self._settle(event)
                    yield event

    def admit(self, event: EventT) -> bool:
        """Whether the agent may apply the event, which it then acknowledges with the next
        checkpoint. Faust drops events of an earlier consumer generation when it hands them
        out, but an agent may hold one while it waits for `state_lock`, which a commit and a
        revoke hold for long: applied after the rebalance, to state reloaded from the last
        checkpoint, it moved the position past messages to be redelivered, which were then
        skipped as repeats and lost. Such an event is dropped unacknowledged; the
        partition's owner gets it again from the committed offset. So is an event of a
        partition lost to this worker (`fence`) until the next assignment."""
        message = event.message
        # Faust's own condition for handing an event out, checked again now.
        current = message.generation_id == self.app.consumer_generation_id
        fenced = self.fenced.get(message.partition) == self.app.consumer_generation_id
        if not current or fenced or not self.app.flow_control.is_active():
            metrics.messages_stale.labels(self.name).inc()
            return False
        if self.contiguous and not self._in_sequence(message):
            return False
        self.unacked.setdefault(message.partition, []).append(event)
        self.next_offset[message.partition] = message.offset + 1
        return True

    def position(self, partition: int) -> int | None:
        """The offset after the last event of the partition handed to the agent in this
        assignment (None: none yet): where it goes on, which Faust's own position, the
        fetcher's, runs ahead of by everything fetched and buffered."""
        return self.next_offset.get(partition)

    def _in_sequence(self, message: Any) -> bool:
        """Whether no message of the partition was skipped before this one: the first of an
        assignment is the one at the committed offset (with nothing committed, at the log's
        start), each next one follows the last.

        Seen around rebalances, under both guarantees: after an assignment Faust hands out a
        batch it fetched before it, from past the committed offset, and fills the offsets it
        skipped in as gaps, so the next commit would pass over messages never applied. Giving
        the partition up did not help (the next assignment skipped the same way). Such
        messages are dropped unacknowledged, and the consumer is sought back to the offset
        expected, again while they keep coming (each seek resets Faust's read offset, which
        the rest of the stale batch moves on), until the expected one arrives. A hole that
        lasts SEEK_LIMIT_S is not a race (the broker no longer has those offsets): it is
        logged and the partition goes on."""
        partition, generation = message.partition, message.generation_id
        seen = self.expected.get(partition)
        if seen is not None and seen[0] == generation:
            expected: int | None = seen[1]
        elif not assignment_sought(self.app):
            # Dropped unacknowledged: the seek that ends the wait hands it out again.
            metrics.messages_stale.labels(self.name).inc()
            return False
        else:
            expected = start_offset(self.app, message.tp)
        if expected is None or message.offset <= expected:
            self.seeking.pop(partition, None)
            self.expected[partition] = (generation, max(message.offset + 1, expected or 0))
            return True
        now = time.monotonic()
        state = self.seeking.get(partition)
        if state is None or state[:2] != (generation, expected):
            log.warning(
                "%s: partition %d's next message is at offset %d, not %d: seeking back",
                self.name,
                partition,
                message.offset,
                expected,
            )
            metrics.assignment_holes.inc()
            state = (generation, expected, now, 0.0)
        if now - state[2] > SEEK_LIMIT_S:
            log.error(
                "%s: partition %d skips from offset %d to %d for %.0f s; going on",
                self.name,
                partition,
                expected,
                message.offset,
                now - state[2],
            )
            self.seeking.pop(partition, None)
            self.expected[partition] = (generation, message.offset + 1)
            self.app.consumer.pass_over(message.tp, expected, message.offset)
            return True
        if now - state[3] >= SEEK_EVERY_S:
            seek = asyncio.ensure_future(self.app.consumer.seek(message.tp, expected))
            _seeks.add(seek)
            seek.add_done_callback(_seeks.discard)
            state = (*state[:3], now)
        self.seeking[partition] = state
        self.expected[partition] = (generation, expected)
        return False

    def _take(self) -> Checkpoint:
        writes: dict[int, Writes] = {}
        for table, state in self.states:
            for partition, rows in state.checkpoint().items():
                writes.setdefault(partition, []).extend((table, k, v) for k, v in rows)
        taken = {}
        for partition, events in self.unacked.items():
            if events:
                taken[partition] = (list(events), writes.pop(partition, []))
                events.clear()
        if writes:
            log.error(
                "%s: checkpoint writes for partitions without events: %s", self.name, sorted(writes)
            )
        return taken

    @staticmethod
    def _write(taken: Checkpoint) -> None:
        for events, writes in taken.values():
            with as_event(events[-1]):
                _put(writes)
            with checkpoint_acks.granted():
                for ev in events:
                    ev.ack()

    def _write_journal(self, taken: Checkpoint) -> None:
        for partition, (events, writes) in taken.items():
            rows = [(table.name, key, value) for table, key, value in writes]
            offset = events[-1].message.offset
            chunks = checkpoint_journal.encode(checkpoint_journal.new_id(), rows, offset)
            with as_event(events[-1]):
                self._put_journal(partition, chunks)

    def _put_journal(self, partition: int, chunks: list[bytes]) -> None:
        for i, chunk in enumerate(chunks):
            self.journal[checkpoint_journal.key(self.name, partition, i)] = chunk
            metrics.checkpoint_journal_bytes.inc(len(chunk))

    def _settle(self, event: EventT) -> None:
        """Once per partition and assignment, before its state is read: the partition's last
        checkpoint made whole from its journal. Under at_least_once its chunks and rows are
        written again even where this worker's store holds them already: a worker killed
        with them on their way kept them in its local store while the changelog, which any
        other worker restores from, never got them. Under exactly_once a journal left by an
        at_least_once run is applied once and deleted (a later one would be stale)."""
        message = event.message
        partition, generation = message.partition, message.generation_id
        if self.journal is None or self.settled.get(partition) == generation:
            return
        self.settled[partition] = generation
        with as_event(event):
            try:
                chunks = checkpoint_journal.read(self.journal.get, self.name, partition)
                writes = [
                    (self.tables[name], key, value)
                    for chunk in chunks or ()
                    for name, key, value in checkpoint_journal.rows(chunk)
                ]
            except (checkpoint_journal.JournalError, KeyError) as exc:
                log.error(
                    "%s: partition %d's checkpoint journal is unreadable: %s",
                    self.name,
                    partition,
                    exc,
                )
                return
            if chunks is None:
                return
            covered = checkpoint_journal.header(chunks[0])[3]
            committed = committed_offset(self.app, message.tp)
            if committed is not None and covered + 1 < committed:
                # The newest checkpoint covers at least what was committed: this journal is
                # older, left by a worker that stood still and wrote it late.
                log.warning(
                    "%s: partition %d's journal covers offset %d, older than the committed %d: "
                    "left alone",
                    self.name,
                    partition,
                    covered,
                    committed,
                )
                return
            behind = any(table.get(key) != value for table, key, value in writes)
            if self.app.in_transaction:
                for i in range(len(chunks)):
                    del self.journal[checkpoint_journal.key(self.name, partition, i)]
            else:
                self._put_journal(partition, chunks)
        if stall_guard.stood_still():
            return  # the partition may be another worker's now; it is being given up
        # No flush between the journal and the rows here: the agent holds its lock and must
        # not wait on the producer (a commit waiting for the lock would wait with it). The
        # journal goes first in the producer's order; a second crash within the moment it
        # takes to leave could still land rows without their journal.
        with as_event(event):
            # Tombstones too, even for keys this store no longer holds: the changelog may
            # never have had them.
            _put(writes, tombstones=True)
        if behind:
            log.warning(
                "%s: partition %d's last checkpoint was cut short; completed from its journal",
                self.name,
                partition,
            )
            metrics.checkpoint_journal_replays.inc()
            # State read before the rows were put back (a view may have loaded a book) is
            # read again.
            for _, state in self.states:
                state.evict({partition})
            if self.forget is not None:
                self.forget(partition)

    @asynccontextmanager
    async def at_commit(self) -> AsyncIterator[None]:
        async with self.checkpoint_lock:
            if self.app.in_transaction:
                # Outputs, checkpoint and offsets commit in one transaction, which flushes
                # everything buffered once every agent is still.
                async with self.state_lock:
                    if any(self.unacked.values()):
                        t0 = time.perf_counter()
                        self._write(self._take())
                        metrics.checkpoint_seconds.observe(time.perf_counter() - t0)
                    yield
                return
            async with self.state_lock:
                t0 = time.perf_counter()
                taken = self._take()
                taken_s = time.perf_counter() - t0
            if taken:
                # Outputs first: a checkpoint never covers outputs that could be lost. Then the
                # journal, whole, before any row: a crash leaves either the rows of the last
                # checkpoint to be completed from it, or none of them.
                await flush_buffered(self.app.producer)
                if self.journal is not None and not stall_guard.stood_still():
                    self._write_journal(taken)
                    await flush_buffered(self.app.producer)
                if stall_guard.stood_still():
                    # A flush waited out a stall: the partitions may be another worker's now,
                    # and this checkpoint would land after its writes as stale state. Nothing
                    # is acknowledged; the partitions are being given up.
                    yield
                    return
                t0 = time.perf_counter()
                self._write(taken)
                metrics.checkpoint_seconds.observe(taken_s + time.perf_counter() - t0)
            yield

    @asynccontextmanager
    async def still(self) -> AsyncIterator[None]:
        async with self.checkpoint_lock, self.state_lock:
            yield

    def release(self, partitions: set[int]) -> None:
        for p in partitions:
            self.unacked.pop(p, None)
            self.next_offset.pop(p, None)
            if self.forget is not None:
                self.forget(p)
        for _, state in self.states:
            state.evict(partitions)

    def fence(self, partitions: set[int]) -> None:
        self.release(partitions)
        self.fenced.update(dict.fromkeys(partitions, self.app.consumer_generation_id))


def _put(writes: Writes, tombstones: bool = False) -> None:
    for table, key, value in writes:
        if value is None:
            if tombstones or table.get(key) is not None:
                with contextlib.suppress(KeyError):  # sent to the changelog before it raises
                    del table[key]
        else:
            table[key] = value
        metrics.checkpoint_writes.inc()
