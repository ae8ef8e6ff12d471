"""The Faust tables, declared once. The state they hold is defined by the plain classes
beside this module; this is the only module under tables/ that knows about Faust."""

from __future__ import annotations

from app.faust_app import app, settings

# Keys and values are bytes, which Faust stores raw: keys are instrument ids in ASCII, byte for
# byte the raw topic's keys, so a key's changelog partition (what web routing computes) is the
# partition its events arrive on; values are JSON encoded by the state classes themselves.

# instrument id -> InstrumentStats.to_bytes()
instrument_stats = app.Table(
    "instrument-stats",
    key_type=bytes,
    value_type=bytes,
    partitions=settings.partitions,
    default=None,
    help="record and action counts per instrument",
)
