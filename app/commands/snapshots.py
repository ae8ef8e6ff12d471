"""`faust -A app snapshots [--interval 1m]`: the warm tier. Applies the `deltas` topic as any
consumer does (models/delta_state.py) and writes each instrument's state to the compacted
`deltas.snapshots` topic each time its deltas cross into a new `--interval` of event time (and
at its first delta, and every `--interval` of wall time for an instrument whose latest deltas no
snapshot covers yet), stamped with the delta second it covers and that delta's partition and
offset. A consumer that starts at any time reads the snapshots, then the deltas after them, and
holds what a consumer that read the delta topic from its start holds (docs/topics.md,
"Snapshots for late joiners"; load_tests/delta_consumer.py --snapshots).

A long-running process beside the workers, one per deployment. The snapshot topic is also its
checkpoint: it starts from the snapshots it wrote, reading the deltas after them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from typing import Any

import orjson
from faust.cli import option

from app import kafka
from app.commands import exit_with
from app.commands.replay import ensure_topic
from app.faust_app import app, settings
from app.settings import Settings
from models.delta_state import DeltaState, read_deltas_from, read_snapshots
from models.intervals import parse_interval

log = logging.getLogger(__name__)
SNAPSHOTS = "deltas.snapshots"


class SnapshotWriter:
    """When an instrument's state goes out as a snapshot, and what it holds."""

    def __init__(
        self,
        interval_ns: int,
        state: DeltaState | None = None,
        covered: dict[int, int] | None = None,
    ) -> None:
        self.interval_ns = interval_ns
        self.state = state or DeltaState(keep_signals=False)
        self.covered = dict(covered or {})  # instrument -> delta offset its snapshot covers
        self.last = dict(self.state.last_start)  # instrument -> start of its last snapshot
        # Instruments with deltas no snapshot covers yet: (partition, offset) of the last.
        self.pending: dict[int, tuple[int, int]] = {}

    def add(self, partition: int, offset: int, delta: dict[str, Any]) -> dict[str, Any] | None:
        """One delta; the instrument's snapshot if this one starts a new interval."""
        iid = delta["instrument_id"]
        if offset <= self.covered.get(iid, -1):
            return None  # in the instrument's snapshot already
        self.state.apply(delta)
        self.covered[iid] = offset
        last, start = self.last.get(iid), self.state.last_start[iid]
        if last is not None and start // self.interval_ns == last // self.interval_ns:
            self.pending[iid] = (partition, offset)
            return None
        return self._snapshot(iid, partition, offset)

    def flush(self) -> list[dict[str, Any]]:
        """A snapshot of every instrument with deltas no snapshot covers: an instrument that
        went quiet mid-interval would otherwise leave its last deltas only in the delta topic,
        until retention removes them."""
        return [self._snapshot(iid, *at) for iid, at in list(self.pending.items())]

    def _snapshot(self, iid: int, partition: int, offset: int) -> dict[str, Any]:
        self.pending.pop(iid, None)
        self.last[iid] = self.state.last_start[iid]
        return {**self.state.snapshot(iid), "partition": partition, "offset": offset}


async def run(settings: Settings, interval_ns: int, stop: asyncio.Event) -> dict[str, int]:
    deltas, snapshots = settings.topic("deltas"), settings.topic(SNAPSHOTS)
    await ensure_topic(settings, deltas, settings.partitions)
    await ensure_topic(
        settings, snapshots, settings.partitions, configs={"cleanup.policy": "compact"}
    )
    state, covered, resume = await read_snapshots(
        settings.bootstrap_servers, snapshots, DeltaState(keep_signals=False)
    )
    writer = SnapshotWriter(interval_ns, state, covered)
    log.info("snapshots: %d instruments restored; resuming at %s", len(covered), resume)
    producer = kafka.producer(settings, acks="all", enable_idempotence=True)
    consumer = kafka.consumer(
        settings,
        enable_auto_commit=False,
        isolation_level="read_committed",
        # Where a snapshot's offset is gone (retention), from the earliest still there.
        auto_offset_reset="earliest",
    )
    counts = {"deltas": 0, "snapshots": 0}
    await producer.start()
    await consumer.start()
    try:
        await read_deltas_from(consumer, deltas, resume)

        async def send(snaps: list[dict[str, Any]]) -> None:
            for snap in snaps:
                key = str(snap["instrument_id"]).encode()
                await producer.send_and_wait(snapshots, orjson.dumps(snap), key=key)
                counts["snapshots"] += 1

        last_report = last_flush = time.monotonic()
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, records in batch.items():
                for rec in records:
                    counts["deltas"] += 1
                    snap = writer.add(tp.partition, rec.offset, orjson.loads(rec.value))
                    await send([snap] if snap is not None else [])
            if time.monotonic() - last_flush > interval_ns / 1e9:
                await send(writer.flush())
                last_flush = time.monotonic()
            if time.monotonic() - last_report > 30:
                log.info("snapshots: %s", counts)
                last_report = time.monotonic()
        await send(writer.flush())
    finally:
        await consumer.stop()
        await producer.stop()
    return counts


@app.command(
    option("--interval", default="1m", help="Event time between an instrument's snapshots."),
)
async def snapshots(self: object, interval: str) -> None:
    """Write each instrument's state, as the delta topic describes it, to deltas.snapshots."""
    try:
        interval_ns = parse_interval(interval)
    except ValueError as exc:
        exit_with(f"--interval: {exc}", 2)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(s, stop.set)
    counts = await run(settings, interval_ns, stop)
    print(orjson.dumps(counts).decode(), file=sys.stderr)
