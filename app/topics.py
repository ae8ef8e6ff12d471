"""Every topic tapestream reads or writes, declared once.

All are partitioned by instrument with the key `instrument_key(instrument_id)` (ASCII decimal),
so one instrument's events are handled in order by one worker.
"""

from __future__ import annotations

import faust
from aiokafka.partitioner import DefaultPartitioner

from app.faust_app import app, settings
from app.transport import cross_sources, output_sources
from models.intervals import interval_name
from pipeline.graph import COLUMNAR, GROUP, INSTRUMENT, public_topics
from tables.options import OPTION_PARTS

# Raw Databento MBO: each value is one or more consecutive 56-byte MBO records of one
# instrument, normally ending at an F_LAST boundary (see app/feeds/batching.py).
RAW_MBO_BASE = "mbo.raw"
RAW_MBO = settings.topic(RAW_MBO_BASE)
# Input that could not be processed, with the reason (JSON; see app/dead_letters.py).
DEAD_LETTERS = settings.topic("dead.letters")


def _topic(name: str, *, internal: bool = False) -> faust.TopicT:
    """A topic of raw bytes keyed by instrument. `internal`: tapestream owns it, and the worker
    creates it with the configured partitions."""
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
        replicas=settings.replication,
        config=settings.topic_configs(),
        internal=internal,
    )


def partition_of(key: bytes) -> int:
    """The partition of an instrument key on every instrument topic: Kafka's default (murmur2)
    partitioner, which replay's producer and Faust both use."""
    parts = list(range(settings.partitions))
    return int(DefaultPartitioner()(key, parts, parts))


raw_mbo = _topic(RAW_MBO, internal=True)
dead_letters = _topic(DEAD_LETTERS, internal=True)
# What the instruments agent publishes (the graph's stages keyed by instrument,
# pipeline/graph.py), every topic from the transaction of the raw partition it comes from.
# Books: columnar JSON, one message per input message and instrument (models/book_events.py).
BOOK_TOPICS = {name: _topic(settings.topic(name)) for name in COLUMNAR}
trades = BOOK_TOPICS["trades"]
# Rows: JSON, one message per bar, indicator update, late trade (models/bar_events.py),
# pressure window or signal (docs/flow-detection.md), or one-second delta (docs/topics.md).
_INTERVALS = [interval_name(iv) for iv in settings.bar_intervals_ns]
ROW_TOPICS = {
    name: _topic(settings.topic(name))
    for name in public_topics(_INTERVALS, INSTRUMENT)
    if name not in COLUMNAR
}
deltas = ROW_TOPICS["deltas"]
for _out in (dead_letters, *BOOK_TOPICS.values(), *ROW_TOPICS.values()):
    output_sources[_out.get_topic_name()] = RAW_MBO

# Options aggregated by group (tables/options.py): the flow stage sends each option's closed
# pressure windows, as parts of its groups, to the partition of each group on `options.parts`,
# with its partition's pressure watermark; the options agent adds them up into
# `options.pressure` and `options.signals`, keyed by group. A part joins the transaction of
# the raw partition it comes from (app/transport.py, `cross_sources`).
option_parts = _topic(settings.topic(OPTION_PARTS), internal=True)
cross_sources[option_parts.get_topic_name()] = RAW_MBO
OPTION_TOPICS = {name: _topic(settings.topic(name)) for name in public_topics(_INTERVALS, GROUP)}
for _out in OPTION_TOPICS.values():
    output_sources[_out.get_topic_name()] = RAW_MBO

# Topics agents only write. The worker declares the topics it consumes; these it declares at
# start, and `ensure_declared` covers a send that comes before that task has run.
OUTPUT_TOPICS = [
    dead_letters,
    *BOOK_TOPICS.values(),
    *ROW_TOPICS.values(),
    option_parts,
    *OPTION_TOPICS.values(),
]
_declared: set[str] = set()


async def ensure_declared(topic: faust.TopicT) -> None:
    name = topic.get_topic_name()
    if name not in _declared:
        await topic.maybe_declare()
        _declared.add(name)


@app.task
async def declare_output_topics() -> None:
    for topic in OUTPUT_TOPICS:
        await ensure_declared(topic)
