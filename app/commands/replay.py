"""`faust -A app replay INPUT... [--speed X | --max] [--limit N]`: files to the raw MBO topic.

Messages are cut by `app.feeds.batching.Batcher` and keyed by instrument, and carry the
source watermark (`app.feeds.watermarks`); partitions with nothing to send get markers.
`--speed 1` sends each event when its `ts_recv` comes due (the recorded pace; 2 is twice as
fast), `--max` (the default) as fast as the broker takes them. Produced idempotently with
acks=all, so a retried send never duplicates or reorders a message. A file that turns out to be
truncated or malformed stops the replay after its whole events are delivered, and the error says
exactly what was sent.

Definition files (DBN, definition schema) among the inputs go first, each definition as a
message of its own to its instrument's partition (models/definitions.py), so a worker knows an
option's groups before its first trade.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from faust.cli import argument, option

from app import kafka
from app.commands import exit_with, wait_for_broker_or_exit
from app.faust_app import app
from app.feeds.batching import Batcher
from app.feeds.mbo_files import InputError, is_definition_file, open_mbo, read_definitions
from app.progress import Progress
from app.raw_sender import Delivered, RawSender, raw_producer
from app.settings import Settings
from app.topics import RAW_MBO_BASE

log = logging.getLogger(__name__)

PACE_TICK_S = 0.02  # paced replay sends what came due in each 20 ms of replay time


class ReplayError(Exception):
    pass


@dataclass
class FileSummary(Delivered):
    path: str = ""
    unsent_records: int = 0  # records of an unfinished event left unsent after an input error


@dataclass
class ReplaySummary:
    topic: str
    files: list[FileSummary] = field(default_factory=list)
    instruments: set[int] = field(default_factory=set)
    markers: int = 0  # watermark markers sent (header only; not counted as messages)
    definitions: int = 0  # instrument definitions sent (one message each; not counted)
    seconds: float = 0.0

    @property
    def records(self) -> int:
        return sum(f.records for f in self.files)

    @property
    def messages(self) -> int:
        return sum(f.messages for f in self.files)

    def as_dict(self) -> dict:
        return {
            "topic": self.topic,
            "files": len(self.files),
            "records": self.records,
            "messages": self.messages,
            "instruments": len(self.instruments),
            "markers": self.markers,
            "definitions": self.definitions,
            "seconds": round(self.seconds, 3),
            "records_per_s": round(self.records / self.seconds) if self.seconds > 0 else None,
        }


async def ensure_topic(
    settings: Settings, name: str, partitions: int, configs: dict[str, str] | None = None
) -> int:
    """Create the topic if it is missing (with the settings' topic configs, `configs` over
    them); return its partition count."""
    admin = kafka.admin(settings)
    await admin.start()
    try:
        if name not in await admin.list_topics():
            with contextlib.suppress(TopicAlreadyExistsError):  # a worker made it meanwhile
                topic = NewTopic(
                    name,
                    num_partitions=partitions,
                    replication_factor=settings.replication,
                    topic_configs={**settings.topic_configs(), **(configs or {})},
                )
                await admin.create_topics([topic])
        for _ in range(50):
            described = await admin.describe_topics([name])
            parts = described[0].get("partitions") or []
            if parts:
                return len(parts)
            await asyncio.sleep(0.1)
        raise ReplayError(f"topic {name} has no partitions after creation")
    finally:
        await admin.close()


async def ensure_source_topics(settings: Settings, topic: str, gaps: str) -> int:
    """The topics a long-running source writes (the raw topic, its gaps and dead letters);
    returns the raw topic's partition count. A source (re)started while its broker restarts
    waits for it (TAPESTREAM_BROKER_WAIT) instead of exiting."""
    await wait_for_broker_or_exit(settings)
    partitions = await ensure_topic(settings, topic, settings.partitions)
    await ensure_topic(settings, settings.topic(gaps), settings.partitions)
    await ensure_topic(settings, settings.topic("dead.letters"), settings.partitions)
    return partitions


async def delete_topics(bootstrap: str, prefixes: Sequence[str]) -> list[str]:
    """Delete every topic whose name starts with one of `prefixes` (a benchmark's or a test's
    own topics and changelogs); return the names deleted."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(tuple(prefixes))]
        if names:
            await admin.delete_topics(names)
        return names
    finally:
        await admin.close()


async def replay_files(paths: Sequence[str], settings: Settings, **options: Any) -> ReplaySummary:
    """Replay files (definition files first) with `replay_inputs`'s options."""
    # every file must exist before anything is sent
    defined = [read_definitions(p) for p in paths if is_definition_file(p)]
    files = [open_mbo(p) for p in paths if not is_definition_file(p)]
    return await replay_inputs(files, settings, defined=defined, **options)


async def replay_inputs(
    files: Sequence[Any],
    settings: Settings,
    *,
    defined: Sequence[Any] = (),
    speed: float | None = None,
    limit: int | None = None,
    progress: bool = True,
    topic: str | None = None,
    on_pace_start: Callable[[float, int], None] | None = None,
) -> ReplaySummary:
    """Replay inputs already open to `topic` (default: the raw MBO topic named by
    `settings`): anything with an MboFile's `path`, `size`, `bytes_read`, `chunks()` and
    `definitions()` (load_tests/soak.py replays a generated stream through it); `defined`:
    definitions to send first.

    `on_pace_start(t0_wall, t0_event)`: with `speed`, called once the pace clock starts: a
    record with ts_recv T is due at t0_wall + (T - t0_event) / (speed * 1e9), monotonic time
    (benchmarks measure latency from it)."""
    topic = topic or settings.topic(RAW_MBO_BASE)
    if speed is not None and speed <= 0:
        raise ReplayError("--speed must be positive")
    defined = [*defined, *(d for d in (f.definitions() for f in files) if d)]  # a lake's
    summary = ReplaySummary(topic=topic)
    partitions = await ensure_topic(settings, topic, settings.partitions)
    producer = raw_producer(settings, paced=speed is not None)
    await producer.start()
    sender = RawSender(producer, topic, summary, partitions)
    clock = _PaceClock(speed, on_pace_start) if speed is not None else None
    remaining = limit
    t0 = time.monotonic()
    try:
        for records in defined:
            await sender.define(records)
        for f in files:
            fs = FileSummary(path=str(f.path))
            summary.files.append(fs)
            bar = Progress(f.path.name, f.size, enabled=progress)
            batcher = Batcher(settings.batch_records, settings.max_message_bytes)
            try:
                for chunk in f.chunks():
                    if remaining is not None:
                        chunk = chunk[:remaining]
                        remaining -= len(chunk)
                    if clock is None:
                        await sender.step(batcher, chunk, fs)
                    else:
                        for piece in clock.slices(chunk):
                            await clock.wait(piece)
                            await sender.step(batcher, piece, fs, flush=True)
                    bar.update(f.bytes_read, fs.records + sender.pending(fs))
                    if remaining == 0:
                        break
            except InputError as exc:
                await sender.send(batcher.flush_complete(), fs)
                await sender.drain()
                fs.unsent_records = batcher.pending_records
                bar.close()
                raise ReplayError(
                    f"{exc}\nreplay stopped: {fs.records:,} records of {f.path} were delivered "
                    f"in {fs.messages:,} messages (every whole event before the error); "
                    f"{fs.unsent_records:,} records of an unfinished event were not sent"
                    + _earlier(summary)
                ) from None
            await sender.send(batcher.flush_all(), fs, sender.wm.bounds(batcher))
            await sender.drain()
            bar.update(f.bytes_read, fs.records, force=True)
            bar.close()
            if remaining == 0:
                break
        # Everything is sent: every partition hears the last arrival read.
        await sender.mark(sender.wm.bounds(Batcher()))
        await sender.drain()
    except ReplayError:
        raise
    except Exception as exc:
        raise ReplayError(
            f"replay failed: {exc!r}\ndelivered before the failure: {summary.records:,} records "
            f"in {summary.messages:,} messages ({_per_file(summary)})"
        ) from exc
    finally:
        summary.seconds = time.monotonic() - t0
        await producer.stop()
    return summary


def _per_file(summary: ReplaySummary) -> str:
    return ", ".join(f"{f.path}: {f.records:,}" for f in summary.files) or "none"


def _earlier(summary: ReplaySummary) -> str:
    done = summary.files[:-1]
    if not done:
        return ""
    return "; earlier files were sent whole: " + ", ".join(
        f"{f.path} ({f.records:,} records)" for f in done
    )


class _PaceClock:
    """Maps ts_recv to wall time at `speed` times the recorded pace."""

    def __init__(self, speed: float, on_start: Callable[[float, int], None] | None = None) -> None:
        self.speed = speed
        self.on_start = on_start
        self.t0_event: int | None = None
        self.t0_wall = 0.0
        self.high = 0  # ts_recv may step back (F_BAD_TS_RECV): the clock never does

    def slices(self, chunk: np.ndarray) -> list[np.ndarray]:
        if not len(chunk):
            return []
        ts = np.maximum.accumulate(np.maximum(chunk["ts_recv"].astype(np.int64), self.high))
        self.high = int(ts[-1])
        if self.t0_event is None:
            self.t0_event = int(ts[0])
            self.t0_wall = time.monotonic()
            if self.on_start is not None:
                self.on_start(self.t0_wall, self.t0_event)
        due = (ts - self.t0_event) / (self.speed * 1e9)
        ticks = np.floor(due / PACE_TICK_S).astype(np.int64)
        cuts = np.flatnonzero(np.diff(ticks)) + 1
        return np.split(chunk, cuts)

    async def wait(self, piece: np.ndarray) -> None:
        assert self.t0_event is not None
        first = max(int(piece["ts_recv"][0]), self.t0_event)
        target = self.t0_wall + (first - self.t0_event) / (self.speed * 1e9)
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


@app.command(
    argument("inputs", nargs=-1, required=True),
    option(
        "--speed",
        type=float,
        default=None,
        help="Replay at this multiple of the recorded pace (1 = as recorded).",
    ),
    option(
        "--max",
        "max_speed",
        is_flag=True,
        default=False,
        help="Replay as fast as possible (the default).",
    ),
    option("--limit", type=int, default=None, help="Stop after this many records."),
    option("--no-progress", is_flag=True, default=False, help="No progress bar."),
)
async def replay(
    self: object,
    inputs: tuple[str, ...],
    speed: float | None,
    max_speed: bool,
    limit: int | None,
    no_progress: bool,
) -> None:
    """Replay MBO files (.dbn, .dbn.zst, Databento CSV), and definition files first, to the raw
    MBO topic."""
    from app.faust_app import settings

    if speed is not None and max_speed:
        exit_with("give either --speed or --max, not both", 2)
    if limit is not None and limit < 1:
        exit_with("--limit must be at least 1", 2)
    try:
        summary = await replay_files(
            inputs, settings, speed=speed, limit=limit, progress=not no_progress
        )
    except (InputError, ReplayError) as exc:
        exit_with(str(exc))
    d = summary.as_dict()
    print(
        f"replayed {d['records']:,} records in {d['messages']:,} messages, "
        f"{d['instruments']} instruments, {d['seconds']} s ({d['records_per_s'] or 0:,} records/s) "
        f"to {summary.topic}",
        file=sys.stderr,
    )
    print(orjson.dumps(d).decode())
