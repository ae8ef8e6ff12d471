"""Source watermarks: what a replay knows about time, told to each partition.

A partition's consumer cannot tell from the data when an event-time window is complete: the
batcher holds a quiet instrument's records until enough gather, so a busy instrument's messages
run ahead of them. The source can tell. Every raw message carries a `wm` header, a bound in
ts_recv nanoseconds: nothing the partition will receive after this message was received before
it. A partition with nothing to send gets a marker instead (no key, empty value, the header
only), and when a replay ends every partition gets one at the last ts_recv read, so the same
windows are closed live as by backfill over the same files.

The instruments agent hands the bound to every stage with the message it came on
(pipeline/run.py); the flow stage passes its pressure watermark on to the option groups in the
`wm` header of `options.parts` (app/option_parts.py), the one hop between agents.
"""

from __future__ import annotations

from collections.abc import Callable

from aiokafka.partitioner import DefaultPartitioner

from app.feeds.batching import Batcher
from models.mbo import instrument_key

WM_HEADER = "wm"


def encode_ns(ns: int) -> bytes:
    return ns.to_bytes(8, "big", signed=True)


def decode_ns(raw: bytes) -> int:
    if len(raw) != 8:
        raise ValueError(f"a time header holds 8 bytes, not {len(raw)}")
    return int.from_bytes(raw, "big", signed=True)


def header(headers: object, name: str) -> int | None:
    """A time or offset header of a consumed message (aiokafka gives (name, bytes) pairs)."""
    for k, v in headers or ():  # type: ignore[attr-defined]
        if k == name and v is not None:
            return decode_ns(v)
    return None


def partitioner(partitions: int) -> Callable[[int], int]:
    """instrument id -> partition, as the producer's default (murmur2) partitioner puts it."""
    parts = list(range(partitions))
    choose = DefaultPartitioner()
    cache: dict[int, int] = {}

    def of(instrument_id: int) -> int:
        p = cache.get(instrument_id)
        if p is None:
            p = cache[instrument_id] = int(choose(instrument_key(instrument_id), parts, parts))
        return p

    return of


class Passed:
    """Per partition, the last watermark passed downstream, and whether a new one is worth
    passing: when it reaches a new step (`step(wm)` grows: a second of event time, a window
    end; by default, any advance). Every hop that forwards a watermark keeps one of these."""

    def __init__(self, step: Callable[[int], int] = lambda wm: wm) -> None:
        self.step = step
        self.last: dict[int, int] = {}

    def due(self, partition: int, wm: int, more_than: int = 0) -> bool:
        """Whether `wm` is news: it reaches a new step, and moved more than `more_than` past
        the last one passed."""
        last = self.last.get(partition)
        return last is None or (self.step(wm) > self.step(last) and wm - last > more_than)

    def mark(self, partition: int, wm: int) -> None:
        last = self.last.get(partition)
        self.last[partition] = wm if last is None else max(wm, last)

    def forget(self, partition: int) -> None:
        self.last.pop(partition, None)


class SourceWatermarks:
    """Per partition, the lowest ts_recv the partition can still receive."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.partition_of = partitioner(partitions)
        self.read_through: int | None = None  # the latest ts_recv read (records come in order)
        self.told = Passed()  # partition -> the last bound sent to it

    def read(self, ts_recv: int) -> None:
        """The next record to be handed to the batcher was received at `ts_recv`."""
        if self.read_through is None or ts_recv > self.read_through:
            self.read_through = ts_recv

    def bounds(self, batcher: Batcher) -> dict[int, int]:
        """Before the batcher takes more records: what is still pending there, or not yet read,
        was received no earlier than this, per partition."""
        if self.read_through is None:
            return {}
        out = dict.fromkeys(range(self.partitions), self.read_through)
        for iid, first in batcher.pending_first_recv():
            p = self.partition_of(iid)
            if first < out[p]:
                out[p] = first
        return out

    def stamp(self, partition: int, bound: int) -> list[tuple[str, bytes]]:
        self.told.mark(partition, bound)
        return [(WM_HEADER, encode_ns(bound))]

    def behind(self, bounds: dict[int, int]) -> dict[int, int]:
        """Partitions whose bound moved past what they were last told: they get a marker."""
        return {p: b for p, b in bounds.items() if self.told.due(p, b)}
