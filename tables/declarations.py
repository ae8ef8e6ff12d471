"""The Faust tables, declared once. The state they hold is defined by the plain classes
beside this module; this is the only module under tables/ that knows about Faust."""

from __future__ import annotations

import faust

from app.faust_app import app, settings

# instrument id (ASCII) -> InstrumentStats.to_dict(). The raw key serializer makes the table's
# key bytes equal the raw topic's, so web requests route to the worker that owns the key.
instrument_stats = app.Table(
    "instrument-stats",
    schema=faust.Schema(
        key_type=str, value_type=bytes, key_serializer="raw", value_serializer="orjson"
    ),
    partitions=settings.partitions,
    default=None,
    help="record and action counts per instrument",
)
