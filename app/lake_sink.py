"""The lake sink: chosen topics to Parquet files, each record exactly once (docs/lake.md).

Each topic partition has at most one file open, in memory: whole messages with consecutive
offsets, all of one hour of event time. It is written (app/lake_files.py: whole, or not at all)
when a message of another hour comes, when it holds `file_bytes` of input, when it has been open
`roll_s`, when its partition goes to another sink, and when the sink stops. The files on disk
say where each partition resumes; the sink commits no offsets (a commit that failed mid-rebalance
asked the group to rebalance again).

No Faust here: `run` drives an aiokafka consumer in its own group, so the sink never holds up
the market path, and `LakeSink` holds the files and their rules. With a `Yield`
(app/cpu_priority.py) the sink also waits, its partitions paused, while the workers leave too
little CPU spare, so it does not slow them either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError

from app import metrics
from app.cpu_priority import Yield
from app.lake_files import Lake, Span, Superseded
from app.lake_rows import BadMessage, Layout, hour_of

log = logging.getLogger(__name__)


@dataclass
class OpenFile:
    hour: int
    first: int
    last: int
    opened: float
    pieces: list[Any] = field(default_factory=list)
    input_bytes: int = 0


@dataclass(frozen=True)
class Ready:
    """A file closed in memory, to be written."""

    topic: str  # the lake's name for it: the topic without the deployment's prefix
    hour: int
    span: Span
    layout: Layout
    pieces: list[Any]


class LakeSink:
    def __init__(
        self,
        layouts: dict[str, tuple[str, Layout]],
        roll_s: float,
        file_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`layouts`: topic -> (its name in the lake, its layout)."""
        self.layouts = layouts
        self.roll_s = roll_s
        self.file_bytes = file_bytes
        self.clock = clock
        self.open: dict[tuple[str, int], OpenFile] = {}

    def add(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> list[Ready]:
        """One message; the files it closed. A message that is not of its topic's layout
        leaves no row (the workers dead-letter it) and is counted; its offset still counts
        as read."""
        name, layout = self.layouts[topic]
        try:
            piece = layout.rows(key, value, partition, offset)
            hour = hour_of(layout.event_ns(piece)) if piece is not None else 0
        except (BadMessage, ValueError, IndexError) as exc:
            left_out(name, partition, offset, exc)
            piece = None
        current = self.open.get((topic, partition))
        if piece is None:  # a marker or a bad message: only the range moves on
            if current is not None:
                current.last = offset
            return []
        ready = []
        if current is not None and (current.hour != hour or current.input_bytes >= self.file_bytes):
            ready += self._close(topic, partition)
            current = None
        if current is None:
            current = self.open[(topic, partition)] = OpenFile(hour, offset, offset, self.clock())
        current.pieces.append(piece)
        current.last = offset
        current.input_bytes += len(value or b"")
        return ready

    def due(self) -> list[Ready]:
        """The files open longer than `roll_s`."""
        now = self.clock()
        old = [k for k, f in self.open.items() if now - f.opened >= self.roll_s]
        return [r for topic, partition in old for r in self._close(topic, partition)]

    def close(self, partitions: set[tuple[str, int]] | None = None) -> list[Ready]:
        """The open files of the given (topic, partition)s, or of all."""
        keys = [k for k in self.open if partitions is None or k in partitions]
        return [r for topic, partition in keys for r in self._close(topic, partition)]

    def discard(self, topic: str, partition: int) -> None:
        """Forget the partition's open file: its records are read again."""
        self.open.pop((topic, partition), None)

    def _close(self, topic: str, partition: int) -> list[Ready]:
        f = self.open.pop((topic, partition))
        if not f.pieces:
            return []
        name, layout = self.layouts[topic]
        return [Ready(name, f.hour, Span(partition, f.first, f.last), layout, f.pieces)]


def left_out(name: str, partition: int, offset: int, exc: Exception) -> None:
    metrics.lake_bad_messages.labels(name).inc()
    log.warning("lake: %s[%d] offset %d left out: %s", name, partition, offset, exc)


def _table(ready: Ready) -> pa.Table:
    """The file's rows. A message whose rows cannot be typed (a field that is a number in one
    message and text in the next, a time past 2262) is left out and counted, one message at a
    time; the others are written."""
    try:
        return ready.layout.table(ready.pieces)
    except (BadMessage, pa.ArrowException, ValueError, OverflowError):
        pass
    tables = []
    for piece in ready.pieces:
        try:
            t = ready.layout.table([piece])
            if tables:
                pa.concat_tables([tables[0], t], promote_options="permissive")
            tables.append(t)
        except (BadMessage, pa.ArrowException, ValueError, OverflowError) as exc:
            offset = _offset_of(piece)
            left_out(ready.topic, ready.span.partition, offset, exc)
    if not tables:
        return pa.table({"kafka_offset": pa.array([], pa.int64())})
    return pa.concat_tables(tables, promote_options="permissive")


def _offset_of(piece: Any) -> int:
    """The offset of the message a piece came from (every layout ends its piece with it)."""
    return int(piece["kafka_offset"] if isinstance(piece, dict) else piece[-1])


def write(lake: Lake, ready: Ready) -> tuple[str, int, int]:
    """Write one closed file; (path, bytes, rows)."""
    table = _table(ready)
    path, size = lake.write(ready.topic, ready.hour, ready.span, table)
    metrics.lake_records.labels(ready.topic).inc(table.num_rows)
    metrics.lake_files.labels(ready.topic).inc()
    metrics.lake_bytes.labels(ready.topic).inc(size)
    return path, size, table.num_rows


@dataclass
class Progress:
    records: int = 0
    files: int = 0
    bytes: int = 0
    input_bytes: int = 0
    waited_s: float = 0.0  # waiting for the workers to leave CPU spare


BEHIND_EVERY_S = 5.0
WAIT_CHECK_S = 0.5  # how often a waiting sink asks again whether CPU is spare


def _partitions(tps: set[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps)) or "nothing"


async def records_behind(consumer: Any, partitions: list[TopicPartition]) -> dict[str, int]:
    """Per topic, how many records the broker held, at the last fetch, past the sink's
    position: the sink at idle priority falls behind while the workers are busy, and this says
    by how much, before the raw topic's retention could overtake it. Read committed, the end
    is the last stable offset; position, not the last record taken, since a transaction's
    commit marker takes an offset too. A partition not fetched yet counts 0."""
    behind: dict[str, int] = defaultdict(int)
    for tp in partitions:
        end = consumer.last_stable_offset(tp)
        if end is None or end < 0:  # -1: read uncommitted
            end = consumer.highwater(tp)
        if end is None:
            continue
        try:
            at = await consumer.position(tp)
        except IllegalStateError:
            continue  # revoked since
        behind[tp.topic] += max(end - at, 0)
    return dict(behind)


async def run(
    consumer: AIOKafkaConsumer,
    lake: Lake,
    sink: LakeSink,
    stop: asyncio.Event,
    report_s: float = 30.0,
    yielding: Yield | None = None,
) -> Progress:
    """Read the sink's topics into the lake until `stop`; then write what is open. With
    `yielding`, wait while it says to."""
    progress = Progress()
    topics = list(sink.layouts)
    for topic in topics:
        gone = lake.remove_leftovers(sink.layouts[topic][0])
        if gone:
            log.info("lake: removed %d temporary file(s) a crash left in %s", gone, topic)

    # Partition -> the offset its next message must have at least: what the lake resumes
    # from, then past each message taken. A message fetched before a rebalance and handed
    # out after it (the partition sought back to where the lake ends) is below it, and so is
    # one of a partition no longer assigned.
    expected: dict[TopicPartition, int] = {}
    writing = asyncio.Lock()

    async def put(ready: list[Ready]) -> None:
        # In order, one at a time (a rebalance writes too): a partition's files must land in
        # offset order, or a crash between two could leave a hole the next start steps over.
        async with writing:
            await _put(ready)

    async def _put(ready: list[Ready]) -> None:
        refused: set[tuple[str, int]] = set()
        for r in ready:
            if (r.topic, r.span.partition) in refused:
                continue  # after a refused file, a later one would leave a hole before it
            try:
                _, size, rows = await asyncio.to_thread(write, lake, r)
            except Superseded as exc:
                refused.add((r.topic, r.span.partition))
                await _reread(r, exc)
                continue
            progress.files += 1
            progress.bytes += size
            progress.records += rows

    topic_of = {name: topic for topic, (name, _) in sink.layouts.items()}
    sought: set[TopicPartition] = set()

    async def _reread(r: Ready, exc: Superseded) -> None:
        """Another sink put part of this file's span in place first: one of the two stood
        still past the session timeout, and the partition was written from the same offset
        twice. The file is dropped, and the partition, if it is still this sink's, is read
        again from where the lake now ends."""
        metrics.lake_files_superseded.labels(r.topic).inc()
        log.warning("lake: %s: file dropped, %s", r.topic, exc)
        tp = TopicPartition(topic_of[r.topic], r.span.partition)
        sink.discard(tp.topic, tp.partition)
        at = (await asyncio.to_thread(lake.resume_offsets, r.topic)).get(tp.partition, 0)
        # Asked after the listing: a revoke may have come meanwhile
        if tp not in expected:
            return
        consumer.seek(tp, at)
        expected[tp] = at
        sought.add(tp)

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
            for tp in revoked:
                expected.pop(tp, None)
            log.info("lake: revoked %s", _partitions(revoked))
            await put(sink.close({(tp.topic, tp.partition) for tp in revoked}))

        async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
            # Under the write lock: where each partition resumes is read from files that a
            # write under way could still be adding to.
            async with writing:
                await self._assigned(assigned)

        async def _assigned(self, assigned: set[TopicPartition]) -> None:
            resume: dict[str, dict[int, int]] = {}
            for tp in sorted(assigned):
                name = sink.layouts[tp.topic][0]
                if name not in resume:
                    resume[name] = await asyncio.to_thread(lake.resume_offsets, name)
                at = resume[name].get(tp.partition)
                if at is None:
                    await consumer.seek_to_beginning(tp)
                    expected[tp] = 0
                else:
                    consumer.seek(tp, at)
                    expected[tp] = at
            # Which sink holds what, and from where: the first thing to read when two disagree
            starts = (f"{tp.topic}[{tp.partition}] from {expected[tp]}" for tp in sorted(assigned))
            log.info("lake: assigned %s", ", ".join(starts) or "nothing")

    consumer.subscribe(topics, listener=Listener())
    await consumer.start()
    behind: dict[str, int] = {}

    async def watch_behind() -> None:
        # Beside the loop, not in it: a partition's position can take a moment to be known
        # after a rebalance, and the loop must not wait for a gauge.
        while True:
            try:
                now_behind = await records_behind(consumer, list(expected))
            except Exception as exc:  # a gauge must not end the sink; the loop sees real errors
                log.debug("lake: records behind not read: %s", exc)
                now_behind = dict(behind)
            behind.clear()
            behind.update(now_behind)
            for topic in topics:
                metrics.lake_behind.labels(sink.layouts[topic][0]).set(behind.get(topic, 0))
            await asyncio.sleep(BEHIND_EVERY_S)

    watching = asyncio.create_task(watch_behind())
    t0 = last_report = time.monotonic()
    waiting = False
    try:
        while not stop.is_set():
            if yielding is not None and yielding.should_wait():
                # Paused, the consumer fetches nothing meanwhile; it still heartbeats, so
                # the group keeps the partitions here. Again each time: a rebalance meanwhile
                # assigns partitions unpaused.
                consumer.pause(*consumer.assignment())
                waiting = True
                metrics.lake_waiting.set(1)
                t_wait = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), WAIT_CHECK_S)
                metrics.lake_waited.inc(time.monotonic() - t_wait)
                progress.waited_s += time.monotonic() - t_wait
                continue
            if waiting:
                consumer.resume(*consumer.paused())
                waiting = False
                metrics.lake_waiting.set(0)
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            sought.clear()
            for tp, messages in batch.items():
                if tp not in expected:
                    log.warning("lake: %d messages of %s (not assigned) left", len(messages), tp)
                    continue
                for m in messages:
                    # Sought back after a dropped file, or revoked while a file was written
                    # (the rebalance callbacks run beside this loop): the rest is not to take.
                    if tp in sought or tp not in expected:
                        break
                    if m.offset < expected[tp]:
                        continue
                    expected[tp] = m.offset + 1
                    progress.input_bytes += len(m.value or b"")
                    await put(sink.add(tp.topic, tp.partition, m.offset, m.key, m.value))
            await put(sink.due())
            now = time.monotonic()
            if now - last_report >= report_s:
                log.info(
                    "lake: %d records in %d files (%.1f MB) so far, %.0f records/s, %d behind, "
                    "%.0f s waited for spare CPU",
                    progress.records,
                    progress.files,
                    progress.bytes / 1e6,
                    progress.records / max(now - t0, 1e-9),
                    sum(behind.values()),
                    progress.waited_s,
                )
                last_report = now
        await put(sink.close())
    finally:
        metrics.lake_waiting.set(0)
        watching.cancel()
        await consumer.stop()
    return progress
