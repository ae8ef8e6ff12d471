"""Every topic tapestream reads or writes, declared once.

All are partitioned by instrument with the key `instrument_key(instrument_id)` (ASCII decimal),
so one instrument's events are handled in order by one worker.
"""

from __future__ import annotations

import faust
from aiokafka.partitioner import DefaultPartitioner

from app.faust_app import app, settings
from app.transport import cross_sources, output_sources
from models.bar_events import INDICATORS, LATE_TRADES, bars_topic
from tables.ifd import PRESSURE, SIGNALS
from tables.options import OPTION_PARTS, OPTIONS_PRESSURE, OPTIONS_SIGNALS

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
        internal=internal,
    )


def partition_of(key: bytes) -> int:
    """The partition of an instrument key on every instrument topic: Kafka's default (murmur2)
    partitioner, which replay's producer and Faust both use."""
    parts = list(range(settings.partitions))
    return int(DefaultPartitioner()(key, parts, parts))


raw_mbo = _topic(RAW_MBO, internal=True)
dead_letters = _topic(DEAD_LETTERS, internal=True)
# What the books agent publishes: columnar JSON, one message per input message and instrument
# (models/book_events.py describes the fields).
book_deltas = _topic(settings.topic("book.deltas"))
bbo = _topic(settings.topic("bbo"))
trades = _topic(settings.topic("trades"))
BOOK_TOPICS = {"book.deltas": book_deltas, "bbo": bbo, "trades": trades}
for _out in (dead_letters, book_deltas, bbo, trades):
    output_sources[_out.get_topic_name()] = RAW_MBO
# What the bars agent publishes from `trades`: JSON, one message per bar, indicator update or
# late trade (models/bar_events.py describes them).
BAR_TOPICS = {
    name: _topic(settings.topic(name))
    for name in [*(bars_topic(iv) for iv in settings.bar_intervals_ns), INDICATORS, LATE_TRADES]
}
for _out in BAR_TOPICS.values():
    output_sources[_out.get_topic_name()] = trades.get_topic_name()
# What the books agent publishes for institutional flow detection: JSON, one message per closed
# pressure window or signal (docs/flow-detection.md describes them).
IFD_TOPICS = {name: _topic(settings.topic(name)) for name in (PRESSURE, SIGNALS)}
for _out in IFD_TOPICS.values():
    output_sources[_out.get_topic_name()] = RAW_MBO

# The one-second delta stream (tables/deltas.py): the books and bars agents write their parts
# of each second to `delta.parts` (JSON, with the writer and its watermark in headers), and the
# deltas agent merges them into `deltas` (docs/topics.md, "The delta topic"). Every topic with this
# partition count falls in one of Faust's copartitioned groups, so both writers of a
# `delta.parts` partition share the transaction of that partition's raw input.
delta_parts = _topic(settings.topic("delta.parts"), internal=True)
deltas = _topic(settings.topic("deltas"))
for _out in (delta_parts, deltas):
    output_sources[_out.get_topic_name()] = RAW_MBO

# Options aggregated by group (tables/options.py): the books agent sends each option's closed
# pressure windows, as parts of its groups, to the partition of each group on `options.parts`,
# with its partition's pressure watermark; the options agent adds them up into
# `options.pressure` and `options.signals`, keyed by group. A part joins the transaction of
# the raw partition it comes from (app/transport.py, `cross_sources`).
option_parts = _topic(settings.topic(OPTION_PARTS), internal=True)
cross_sources[option_parts.get_topic_name()] = RAW_MBO
OPTION_TOPICS = {name: _topic(settings.topic(name)) for name in (OPTIONS_PRESSURE, OPTIONS_SIGNALS)}
for _out in OPTION_TOPICS.values():
    output_sources[_out.get_topic_name()] = RAW_MBO

# Topics agents only write. The worker declares the topics it consumes; these it declares at
# start, and `ensure_declared` covers a send that comes before that task has run.
OUTPUT_TOPICS = [
    dead_letters,
    book_deltas,
    bbo,
    trades,
    *BAR_TOPICS.values(),
    *IFD_TOPICS.values(),
    delta_parts,
    deltas,
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
