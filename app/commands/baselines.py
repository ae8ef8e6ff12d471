"""`faust -A app baselines INPUT... [--out FILE] [--load] [--force]`: flow-detection baselines
from historical files with no broker, and (`--load`) into the `ifd` table through its changelog
topic, so a fresh deployment scores its first windows against history.

The files run through the same logic as backfill (books, then pressure windows scored and
recorded). `--load` writes, per instrument, each baseline bucket under the key the workers read
(`tables/ifd_state.py`), an instrument entry naming its buckets, and each partition's list of
instruments, to the partition of the changelog that holds the instrument: a worker that starts
with no local state restores them as it restores any table. Only into a deployment whose `ifd`
changelog is empty (`--force` to add to one that is not: it overwrites the instruments' open
windows and cooldowns), since a running deployment's own state is newer than any file.

With option definitions among the inputs, the option groups' baselines (tables/options.py) are
built too and `--load` puts them in the `options` table the same way, under each group's key in
the partition of its changelog that holds the group.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson
from aiokafka import TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from faust.cli import argument, option

from app import kafka
from app.commands import exit_with
from app.commands.replay import ensure_topic
from app.faust_app import app
from app.feeds.mbo_files import InputError
from app.feeds.watermarks import partitioner
from app.file_driver import FileRun, run_files
from app.file_outputs import DiscardOutputs
from app.settings import Settings
from tables.ifd import IfdStage
from tables.ifd_state import IfdSet
from tables.options import OptionsAggregator
from tables.options_state import OptionsSet
from tables.state_keys import group_key

Rows = dict[int, list[tuple[bytes, bytes | None]]]  # changelog partition -> (key, value)


def table_rows(stage: IfdStage, partitions: int) -> Rows:
    """What the workers would have written for these baselines, by changelog partition: each
    partition's flow state holding its instruments' baselines, checkpointed."""
    of = partitioner(partitions)
    state = IfdSet(stage.config)
    baselines = stage.signals.baselines
    for iid, bucket in sorted(baselines.buckets()):
        p = of(iid)
        if not state.loaded(p):
            state.load(p, _nothing)
        state.add_baseline(p, iid, bucket, baselines.export(iid, bucket))
    return state.checkpoint()


def group_rows(agg: OptionsAggregator, partitions: int) -> Rows:
    """What the options agents would have written for the groups' baselines, by partition."""
    parts = list(range(partitions))
    choose = DefaultPartitioner()
    state = OptionsSet(agg.config, agg.sources)
    baselines = agg.signals.baselines
    for group, bucket in sorted(baselines.buckets()):
        p = int(choose(group_key(group), parts, parts))  # type: ignore[arg-type]
        if not state.loaded(p):
            state.load(p, _nothing)
        data = baselines.export(group, bucket)  # type: ignore[arg-type]
        state.add_baseline(p, group, bucket, data, agg.publishers.get(group))  # type: ignore[arg-type]
    return state.checkpoint()


def _nothing(key: bytes) -> bytes | None:
    return None


async def load(settings: Settings, tables: dict[str, Rows], force: bool) -> int:
    """Each table's rows into its changelog, once every changelog has been checked: nothing is
    written when any of them holds state (unless `force`)."""
    for table in tables:
        topic = f"{settings.app_id}-{table}-changelog"
        partitions = await ensure_topic(settings, topic, settings.partitions)
        if partitions != settings.partitions:
            raise ValueError(
                f"{topic} has {partitions} partitions, the deployment {settings.partitions}"
            )
        held = await _held(settings, topic, partitions)
        if held and not force:
            raise ValueError(
                f"{topic} already holds {held:,} records: this deployment has state of its own "
                "(--force to write over its entries anyway)"
            )
    producer = kafka.producer(settings, acks="all", enable_idempotence=True)
    await producer.start()
    written = 0
    try:
        for table, rows in tables.items():
            topic = f"{settings.app_id}-{table}-changelog"
            for p, part_rows in rows.items():
                for key, value in part_rows:
                    await producer.send(topic, value, key=key, partition=p)
                    written += 1
        await producer.flush()
    finally:
        await producer.stop()
    return written


async def _held(settings: Settings, topic: str, partitions: int) -> int:
    consumer = kafka.consumer(settings, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
    finally:
        await consumer.stop()
    return sum(ends[tp] - starts[tp] for tp in tps)


def build(paths: Sequence[str], settings: Settings, progress: bool) -> FileRun:
    # Only the final state is used: the rows are counted, not kept.
    return run_files(paths, settings, progress=progress, outputs=DiscardOutputs())


@app.command(
    argument("inputs", nargs=-1, required=True),
    option("--out", "out_path", default=None, help="Write the baselines as JSON lines here."),
    option(
        "--load",
        "load_into_table",
        is_flag=True,
        default=False,
        help="Load them into the ifd table (and the options table).",
    ),
    option("--force", is_flag=True, default=False, help="Load even if the table has state."),
    option("--no-progress", is_flag=True, default=False, help="No progress bar."),
)
async def baselines(
    self: object,
    inputs: tuple[str, ...],
    out_path: str | None,
    load_into_table: bool,
    force: bool,
    no_progress: bool,
) -> None:
    """Flow-detection baselines from historical MBO files (no broker), optionally loaded."""
    from app.faust_app import settings

    try:
        result = await asyncio.to_thread(build, inputs, settings, not no_progress)
    except InputError as exc:
        exit_with(str(exc))
    stage, agg = result.ifd, result.options
    assert stage is not None and agg is not None
    table = stage.baseline_rows()
    groups = agg.signals.baselines.rows("group")
    if out_path:
        Path(out_path).write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in table + groups))
    summary = {
        "instruments": len({r["instrument_id"] for r in table}),
        "buckets": len(table),
        "sessions": max((r["log_volume"]["n"] for r in table), default=0),
        "groups": len({r["group"] for r in groups}),
        "group_buckets": len(groups),
    }
    if load_into_table:
        try:
            tables = {"ifd": table_rows(stage, settings.partitions)}
            if groups:
                tables["options"] = group_rows(agg, settings.partitions)
            summary["loaded_records"] = await load(settings, tables, force)
        except ValueError as exc:
            exit_with(str(exc))
    print(orjson.dumps(summary).decode())
    print(
        f"baselines: {summary['buckets']:,} buckets of {summary['instruments']} instruments"
        + (" loaded into the ifd table" if load_into_table else ""),
        file=sys.stderr,
    )
