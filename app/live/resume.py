"""Where a restarted live source stopped, read from the raw topic itself.

The topic is the source's only checkpoint: every message the source sends (data or watermark
marker) carries its subscription's id in a `src` header, and the producer is idempotent, so
each partition holds a prefix of what was sent to it, whatever a kill -9 interrupted. Each
partition is read backwards from its end, in growing steps, until its records of this
subscription reach `window_ns` of event time below the partition's last one (or the partition's
start). The records read give the cursor's positions; the partition's floor (last `ts_event`
minus the window) stands for every instrument of the partition the tail did not show. The `wm`
header of the partition's last message (every partition gets a marker from the source's first
step on) bounds what the partition had still to receive: nothing received before it, which is
where the resumed stream must reach back to (see `app/live/cursor.py`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from app import kafka
from app.feeds.watermarks import WM_HEADER, header
from app.live.cursor import LiveCursor
from app.settings import Settings
from models import definitions
from models.mbo import F_SNAPSHOT, MBO_DTYPE, MBO_SIZE

log = logging.getLogger(__name__)

SOURCE_HEADER = "src"
# A gap marker (app/live/source.py) is the source's own record, not the gateway's: it has no
# place in the recovery rule's counts.
GAP_HEADER = "gap"
FIRST_STEP = 256  # messages read back at first; each further step reads four times as many
MAX_SCAN = 1_000_000  # messages: past this, a partition with none of ours is taken as empty
READ_TIMEOUT_S = 60.0


class ResumeError(Exception):
    pass


def subscription_id(dataset: str, schema: str, stype_in: str, symbols: list[str]) -> bytes:
    """Names a subscription in the `src` header: its dataset, schema and symbols, so a restart
    with the same arguments finds its own messages and no other source's."""
    text = "|".join([dataset, schema, stype_in, ",".join(sorted(symbols))])
    return hashlib.sha256(text.encode()).hexdigest()[:16].encode()


@dataclass
class Resumed:
    cursor: LiveCursor
    records: int = 0  # records of this subscription read back
    messages_scanned: int = 0

    @property
    def delivered(self) -> bool:
        return bool(self.cursor.tails)


async def read_positions(
    settings: Settings,
    topic: str,
    partitions: int,
    source: bytes,
    window_ns: int,
    partition_of: Callable[[int], int],
) -> Resumed:
    """The cursor of subscription `source`, from the tail of each partition of `topic`."""
    tails: dict[int, int] = {}
    floors: dict[int, int] = {}
    consumer = kafka.consumer(
        settings,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    found: list[np.ndarray] = []
    scanned = 0
    try:
        for p in range(partitions):
            tp = TopicPartition(topic, p)
            consumer.assign([tp])
            begin = (await consumer.beginning_offsets([tp]))[tp]
            end = (await consumer.end_offsets([tp]))[tp]
            recs, n, floor, bound = await _scan(consumer, tp, begin, end, source, window_ns)
            scanned += n
            if len(recs):
                found.append(recs)
            if bound is not None:
                tails[p] = bound
            if floor is not None:
                floors[p] = floor
    finally:
        await consumer.stop()
    cursor = LiveCursor(window_ns, tails, floors, partition_of)
    total = 0
    for recs in found:
        cursor.note_delivered(recs)
        total += len(recs)
    cursor.forget_below_floors()
    return Resumed(cursor, total, scanned)


def _last_event(recs: np.ndarray) -> int:
    """The highest ts_event of records other than a snapshot's (those carry their orders'
    own times); a tail of snapshot records alone counts from its receipt."""
    live = recs["ts_event"][(recs["flags"] & F_SNAPSHOT) == 0]
    return int(live.max()) if len(live) else int(recs["ts_recv"].max())


async def _scan(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    begin: int,
    end: int,
    source: bytes,
    window_ns: int,
) -> tuple[np.ndarray, int, int | None, int | None]:
    """This subscription's records in the tail of one partition (in offset order), messages
    read, the partition's floor (None: read to its start, so no floor is needed), and the
    watermark bound of its last message of this subscription (None: it has none).

    The scan goes back until a record was received (ts_recv) below the floor: every record
    before it was received earlier still, so its ts_event, which never exceeds its ts_recv, is
    below the floor too, and every record at or above the floor has been read."""
    chunks: list[np.ndarray] = []  # newest step first
    bound: int | None = None
    hi = end
    step = FIRST_STEP
    scanned = 0
    while hi > begin:
        lo = max(begin, hi - step)
        recs, last_bound = await _read_range(consumer, tp, lo, hi, source)
        if bound is None:
            bound = last_bound
        scanned += hi - lo
        if len(recs):
            chunks.append(recs)
        hi = lo
        step *= 4
        if chunks:
            floor = _last_event(np.concatenate(chunks)) - window_ns
            if int(chunks[-1]["ts_recv"].min()) < floor:
                return np.concatenate(chunks[::-1]), scanned, floor, bound
        elif scanned >= MAX_SCAN:
            log.warning("%s: none of this source's records in the last %d messages", tp, scanned)
            return np.empty(0, MBO_DTYPE), scanned, None, bound
    ordered = np.concatenate(chunks[::-1]) if chunks else np.empty(0, MBO_DTYPE)
    return ordered, scanned, None, bound


async def _read_range(
    consumer: AIOKafkaConsumer, tp: TopicPartition, lo: int, hi: int, source: bytes
) -> tuple[np.ndarray, int | None]:
    """The subscription's records in offsets [lo, hi), and the `wm` bound of its last
    message there."""
    consumer.seek(tp, lo)
    out: list[np.ndarray] = []
    bound: int | None = None
    pos = lo
    deadline = time.monotonic() + READ_TIMEOUT_S
    while pos < hi:
        if time.monotonic() > deadline:
            raise ResumeError(f"{tp}: offsets {pos}..{hi} not readable in {READ_TIMEOUT_S:.0f} s")
        batch = await consumer.getmany(tp, timeout_ms=1000, max_records=10_000)
        msgs = batch.get(tp, [])
        if not msgs:
            if await consumer.position(tp) >= hi:
                break
            continue
        for m in msgs:
            if m.offset >= hi:
                pos = hi
                break
            pos = m.offset + 1
            headers = list(m.headers or ())
            if (SOURCE_HEADER, source) not in headers:
                continue
            wm = header(headers, WM_HEADER)
            if wm is not None:
                bound = wm
            value = m.value or b""
            if not value or definitions.is_definition(value) or len(value) % MBO_SIZE:
                continue
            if any(k == GAP_HEADER for k, _ in headers):
                continue
            out.append(np.frombuffer(value, dtype=MBO_DTYPE))
    return (np.concatenate(out) if out else np.empty(0, MBO_DTYPE)), bound
