"""Order books and instrument counts from the raw MBO topic: `book.deltas`, `bbo` and `trades`
out, books (tables/book_state.py) and counts (tables/instrument_stats.py) kept as checkpointed
table state. One agent reads the raw topic once for both: Faust's cost per message is what
limits a worker, not the counting.

Books and counts live in memory; the `books` and `instrument-stats` tables hold their
checkpoint. Events are acknowledged only when a checkpoint covering them is written, and
checkpoints are written at the commit boundary (`app.transport.commit_guards`), so committed
offsets never run ahead of table state; a message redelivered after a restart is recognised by
its offset, which the checkpoint stores, and skipped. Under exactly_once the checkpoint, the
outputs and the offsets commit in one transaction; under at_least_once outputs are delivered
before the checkpoint that covers them is written, so a crash can repeat outputs (consumers
drop repeats by (publisher_id, event)) but never lose them.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from faust.streams import _current_event
from faust.types import TP, EventT

from app import metrics
from app.dead_letters import send_dead_letter
from app.faust_app import app
from app.topics import BOOK_TOPICS, RAW_MBO, ensure_declared, raw_mbo
from app.transport import commit_guards
from models import book_events
from models.mbo import MalformedMessage, parse_message
from tables.book_state import BookSet, warm_up
from tables.declarations import books as books_table
from tables.declarations import instrument_stats as stats_table
from tables.instrument_stats import StatsSet

AGENT = "books"
log = logging.getLogger(__name__)

book_set = BookSet()
stats_set = StatsSet()
# Held while a message is applied and while a commit checkpoints: a commit never sees half a
# message, and no message is applied between a checkpoint and the commit that follows it.
state_lock = asyncio.Lock()
# Events applied but not yet covered by a checkpoint, by partition (acked at the checkpoint).
unacked: dict[int, list[EventT]] = {}


@contextmanager
def _as_event(event: EventT) -> Any:
    """Table writes go to the changelog partition of the current event; a checkpoint runs
    outside any event, so it writes as the last event of the partition it covers."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


@app.task
async def _load_kernels() -> None:
    # Loading the compiled kernels from numba's cache takes a second or two; a worker pays it
    # while it starts, not on the first message of a partition.
    log.info("books: kernels ready in %.1f s", warm_up())


def ensure_loaded(instrument_id: int, partition: int) -> None:
    if not book_set.loaded(instrument_id):
        t0 = time.perf_counter()
        book_set.load(instrument_id, partition, books_table.get)
        metrics.book_load_seconds.observe(time.perf_counter() - t0)
    if not stats_set.loaded(instrument_id):
        stats_set.load(instrument_id, partition, stats_table.get)


@app.agent(raw_mbo, name=AGENT)
async def maintain_books(stream):  # type: ignore[no-untyped-def]
    for topic in BOOK_TOPICS.values():
        await ensure_declared(topic)
    async for event in stream.noack().events():
        async with state_lock:
            partition = event.message.partition
            unacked.setdefault(partition, []).append(event)
            try:
                records = parse_message(event.key, event.value)
            except MalformedMessage as exc:
                await send_dead_letter(AGENT, event, exc.kind, str(exc))
                continue
            iid = int(event.key)
            ensure_loaded(iid, partition)
            applied = book_set.process(iid, records, event.message.offset)
            if applied is None:
                metrics.messages_duplicate.labels(AGENT).inc()
                continue
            stats_set.apply(iid, records, event.message.offset)
            for base, message in book_events.messages(iid, applied, book_set).items():
                # Same key, partitioner and partition count as the input, so the same
                # partition; explicit, or exactly_once would send outside the transaction
                # (app/dead_letters.py says why).
                BOOK_TOPICS[base].send_soon(
                    key=event.key, value=book_events.encode(message), partition=partition
                )
            metrics.records_processed.labels(AGENT).inc(len(records))
            metrics.messages_processed.labels(AGENT).inc()


# One checkpoint at a time: a commit on rebalance may start while the periodic one flushes.
checkpoint_lock = asyncio.Lock()


Writes = list[tuple[Any, bytes, bytes | None]]  # (table, key, value or None to delete)
Checkpoint = dict[int, tuple[list[EventT], Writes]]  # partition -> (events covered, writes)


def _take_checkpoint() -> Checkpoint:
    """The events not yet covered, by partition, with the table writes that cover them;
    called under `state_lock`, so the writes are exactly the state those events left."""
    writes: dict[int, Writes] = {}
    for table, state in ((books_table, book_set), (stats_table, stats_set)):
        for partition, rows in state.checkpoint().items():
            writes.setdefault(partition, []).extend((table, k, v) for k, v in rows)
    taken = {}
    for partition, events in unacked.items():
        if events:
            taken[partition] = (list(events), writes.pop(partition, []))
            events.clear()
    if writes:
        log.error("checkpoint writes for partitions without events: %s", sorted(writes))
    return taken


def _write_checkpoint(taken: Checkpoint) -> None:
    for events, writes in taken.values():
        with _as_event(events[-1]):
            for table, key, value in writes:
                if value is None:
                    del table[key]
                else:
                    table[key] = value
                metrics.checkpoint_writes.inc()
        for ev in events:
            ev.ack()


@asynccontextmanager
async def checkpoint_at_commit() -> AsyncIterator[None]:
    async with checkpoint_lock:
        if app.in_transaction:
            # exactly_once: the agent stays still until the transaction commits, or outputs of
            # events after the checkpoint would commit with it and repeat after a crash.
            async with state_lock:
                if any(unacked.values()):
                    # Outputs first: a checkpoint never covers outputs that could be lost.
                    await app.producer.flush()
                    t0 = time.perf_counter()
                    _write_checkpoint(_take_checkpoint())
                    metrics.checkpoint_seconds.observe(time.perf_counter() - t0)
                yield
            return
        # at_least_once: only taking the checkpoint stops the agent. Events applied while the
        # outputs flush and the offsets commit stay unacked for the next checkpoint.
        async with state_lock:
            t0 = time.perf_counter()
            taken = _take_checkpoint()
            taken_s = time.perf_counter() - t0
        if taken:
            await app.producer.flush()
            t0 = time.perf_counter()
            _write_checkpoint(taken)
            metrics.checkpoint_seconds.observe(taken_s + time.perf_counter() - t0)
        yield


commit_guards.append(checkpoint_at_commit)


@app.on_partitions_revoked.connect
async def _evict_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
    gone = {tp.partition for tp in revoked if tp.topic == RAW_MBO}
    if not gone:
        return
    # After any checkpoint in flight has written: its writes belong to the partitions' owner.
    async with checkpoint_lock, state_lock:
        for p in gone:
            unacked.pop(p, None)
        dropped = book_set.evict(gone)
        stats_set.evict(gone)
    if dropped:
        log.info("books: released %d instruments of partitions %s", len(dropped), sorted(gone))
