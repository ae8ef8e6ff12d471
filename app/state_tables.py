"""The Faust tables, declared once. The state they hold is defined by the plain classes under
tables/, which know nothing of Faust."""

from __future__ import annotations

from typing import Any

from app.faust_app import app, settings

# Keys and values are bytes, which Faust stores raw: keys are instrument ids in ASCII, byte for
# byte the raw topic's keys, so a key's changelog partition (what web routing computes) is the
# partition its events arrive on; values are JSON encoded by the state classes themselves.


def _bytes_table(name: str, help: str) -> Any:
    return app.Table(
        name,
        key_type=bytes,
        value_type=bytes,
        partitions=settings.partitions,
        default=None,
        help=help,
    )


# instrument id -> InstrumentStats.to_bytes()
instrument_stats = _bytes_table("instrument-stats", "record and action counts per instrument")
# Book checkpoints: the instrument's meta under its key, its pages under
# "<iid>/<publisher>/<page>/<gen>" (tables/book_state.py).
books = _bytes_table("books", "L3 order books: per-instrument meta and pages of orders")
# Bars, indicators and recent bars per partition (tables/bar_state.py gives the keys).
bars = _bytes_table("bars", "open bar windows, indicator state and recent bars per instrument")
# Institutional flow detection per partition (tables/ifd_state.py gives the keys).
ifd = _bytes_table("ifd", "pressure windows, baselines, cooldowns and recent signals")
# The deltas agent's merge per partition (tables/deltas.py).
deltas = _bytes_table("deltas", "one-second delta parts waiting for both writers' watermarks")
# Options aggregation per aggregating partition (tables/options_state.py). Keys are group
# names, which are also the key of `options.parts`.
options = _bytes_table("options", "option groups' pending windows, baselines and signals")
