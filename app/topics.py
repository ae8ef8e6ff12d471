"""Every topic tapestream reads or writes, declared once.

All are partitioned by instrument with the key `instrument_key(instrument_id)` (ASCII decimal),
so one instrument's events are handled in order by one worker.
"""

from __future__ import annotations

import faust

from app.faust_app import app, settings

# Raw Databento MBO: each value is one or more consecutive 56-byte MBO records of one
# instrument, normally ending at an F_LAST boundary (see app/feeds/batching.py).
RAW_MBO_BASE = "mbo.raw"
RAW_MBO = settings.topic(RAW_MBO_BASE)
# Input that could not be processed, with the reason (JSON; see app/dead_letters.py).
DEAD_LETTERS = settings.topic("dead.letters")

raw_mbo = app.topic(
    RAW_MBO,
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
    partitions=settings.partitions,
    internal=True,  # tapestream owns it: the worker creates it with the configured partitions
)
dead_letters = app.topic(
    DEAD_LETTERS,
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
    partitions=settings.partitions,
    internal=True,  # tapestream owns it: the worker creates it with the configured partitions
)

# Topics agents only write. The worker declares the topics it consumes; these it declares at
# start, and `ensure_declared` covers a send that comes before that task has run.
OUTPUT_TOPICS = [dead_letters]
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
