"""The state the `deltas` topic describes, rebuilt by applying it, and its snapshots.

Standard library only (and aiokafka to read the snapshot topic), so that a consumer outside
tapestream can copy this one file: the example consumer (load_tests/delta_consumer.py) uses it,
and so does the snapshot writer (`faust -A app snapshots`), so a snapshot is exactly what a
consumer that applied every delta holds. docs/topics.md ("The delta topic", "Snapshots for
late joiners") documents both records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

UNDEF_PRICE = (1 << 63) - 1


@dataclass
class Book:
    bids: list[list[int]] = field(default_factory=list)  # [price, size, count], best first
    asks: list[list[int]] = field(default_factory=list)


@dataclass
class DeltaState:
    """Everything the deltas say, as of the last one applied."""

    books: dict[tuple[int, int], Book] = field(default_factory=dict)  # (instrument, publisher)
    bars: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)  # (iid, interval)
    indicators: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)
    pressure: dict[int, dict[str, Any]] = field(default_factory=dict)
    signals: list[dict[str, Any]] = field(default_factory=list)
    last_start: dict[int, int] = field(default_factory=dict)
    applied: int = 0
    repeats: int = 0
    keep_signals: bool = True  # False for a process that runs for ever (the snapshot writer)

    def apply(self, delta: dict[str, Any]) -> bool:
        """Apply one delta; False for a repeat (an instrument's deltas come in time order)."""
        iid, start = delta["instrument_id"], delta["start"]
        if start <= self.last_start.get(iid, -1):
            self.repeats += 1
            return False
        self.last_start[iid] = start
        for change in delta.get("books", ()):
            book = self.books.setdefault((iid, change["publisher_id"]), Book())
            book.bids = _levels(book.bids, change["bid_depth"], change["bids"])
            book.asks = _levels(book.asks, change["ask_depth"], change["asks"])
        for bar in delta.get("bars", ()):
            self.bars[(iid, bar["interval"])] = bar
        for row in delta.get("indicators", ()):
            self.indicators[(iid, row["interval"])] = row
        for row in delta.get("pressure", ()):
            self.pressure[iid] = row
        if self.keep_signals:
            self.signals.extend(delta.get("signals", ()))
        self.applied += 1
        return True

    def snapshot(self, instrument_id: int) -> dict[str, Any]:
        """One instrument's state as a snapshot record (signals are events, not state: they
        stay in the delta topic)."""
        iid = instrument_id
        return {
            "instrument_id": iid,
            "start": self.last_start[iid],
            "books": [
                {"publisher_id": pub, "bids": b.bids, "asks": b.asks}
                for (i, pub), b in sorted(self.books.items())
                if i == iid
            ],
            "bars": [row for (i, _), row in sorted(self.bars.items()) if i == iid],
            "indicators": [row for (i, _), row in sorted(self.indicators.items()) if i == iid],
            "pressure": self.pressure.get(iid),
        }

    def load(self, snapshot: dict[str, Any]) -> None:
        """An instrument's state from its snapshot, in place of what this state held of it."""
        iid = snapshot["instrument_id"]
        for held in (self.books, self.bars, self.indicators):
            for key in [k for k in held if k[0] == iid]:
                del held[key]
        for b in snapshot["books"]:
            self.books[(iid, b["publisher_id"])] = Book(
                [list(lv) for lv in b["bids"]], [list(lv) for lv in b["asks"]]
            )
        for row in snapshot["bars"]:
            self.bars[(iid, row["interval"])] = row
        for row in snapshot["indicators"]:
            self.indicators[(iid, row["interval"])] = row
        if snapshot["pressure"] is not None:
            self.pressure[iid] = snapshot["pressure"]
        else:
            self.pressure.pop(iid, None)
        self.last_start[iid] = snapshot["start"]

    def same_as(self, other: DeltaState) -> bool:
        """The same books, bars, indicators and pressure (not the counts or the signals)."""
        return (
            self.books == other.books
            and self.bars == other.bars
            and self.indicators == other.indicators
            and self.pressure == other.pressure
        )


async def partitions(consumer: Any, topic: str) -> list[Any]:
    """Every partition of the topic, once the consumer knows them."""
    from aiokafka import TopicPartition

    await consumer._client.force_metadata_update()  # the topic's partitions, known now
    known = consumer.partitions_for_topic(topic) or ()
    return [TopicPartition(topic, p) for p in sorted(known)]


async def read_snapshots(
    bootstrap: str, topic: str, state: DeltaState | None = None
) -> tuple[DeltaState, dict[int, int], dict[int, int]]:
    """The state the snapshot topic holds, read to its end (compacted: each instrument's
    latest); the delta offset each instrument's snapshot covers; and where each partition of
    the delta topic goes on from (after the earliest delta a snapshot in it covers)."""
    from aiokafka import AIOKafkaConsumer

    state = DeltaState() if state is None else state
    covered: dict[int, int] = {}  # instrument -> delta offset its snapshot covers
    resume: dict[int, int] = {}  # delta partition -> offset to read on from
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        tps = await partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for rec in records:
                    if rec.value is None:
                        continue
                    snap = json.loads(rec.value)
                    state.load(snap)
                    covered[snap["instrument_id"]] = snap["offset"]
                    p = snap["partition"]
                    resume[p] = min(resume.get(p, snap["offset"] + 1), snap["offset"] + 1)
    finally:
        await consumer.stop()
    return state, covered, resume


async def read_deltas_from(consumer: Any, topic: str, resume: dict[int, int]) -> None:
    """Assign every partition of the delta topic to the consumer, each at its `resume` offset
    (`read_snapshots`), or at its start."""
    tps = await partitions(consumer, topic)
    consumer.assign(tps)
    for tp in tps:
        if tp.partition in resume:
            consumer.seek(tp, resume[tp.partition])
        else:
            await consumer.seek_to_beginning(tp)


def _levels(levels: list[list[int]], depth: int, changes: list[list[int]]) -> list[list[int]]:
    """A side after a change: cut (or padded) to `depth` levels, then each [level, price, size,
    count] set."""
    out = [list(lv) for lv in levels[:depth]]
    out += [[UNDEF_PRICE, 0, 0]] * (depth - len(out))
    for i, price, size, count in changes:
        out[i] = [price, size, count]
    return out
