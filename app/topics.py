"""Every topic tapestream reads or writes, declared once.

All are partitioned by instrument with the key `instrument_key(instrument_id)` (ASCII decimal),
so one instrument's events are handled in order by one worker.
"""

from __future__ import annotations

from app.faust_app import app, settings

# Raw Databento MBO: each value is one or more consecutive 56-byte MBO records of one
# instrument, normally ending at an F_LAST boundary (see app/feeds/batching.py).
RAW_MBO = settings.topic("mbo.raw")
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
