"""Every key of every table, in one place. Keys are bytes; an instrument's key is its id in
ASCII (byte for byte the raw topic's key, so a key's changelog partition is the partition its
events arrive on), a group's its name (the `options.parts` key). Values are JSON (the standard
json module where sums can pass 64 bits) except book pages.

books             <iid>                            an instrument's books: position, held records,
                                                   per publisher the scalars and page list
                  <iid>/<publisher>/<page>/<gen>   one page of a book's orders
                  <iid>/tops                       the top levels last published and the open
                                                   second (tables/deltas.py, BookSeconds)
                  ~partition/<p>/open-seconds      the partition's instruments with a second open
instrument-stats  <iid>                            the instrument's counts
bars              <iid>                            open windows, price tracks, indicators, patterns
                  <iid>/bars/<interval>            the last bars (the /bars/ view)
                  <iid>/patterns                   the last pattern signals (/signals/)
                  ~partition/<p>                   watermark, late count, last offset, instruments
ifd               <iid>                            side-rule memory, open pressure windows,
                                                   cooldowns, an option's definition
                  <iid>/baseline/<bucket>          the bucket's last sessions
                  <iid>/signals                    the last signals (/signals/)
                  ~partition/<p>                   watermark, late count, instruments
deltas            <iid>/<second>                   a second's parts waiting for the watermark
                  ~partition/<p>                   watermarks, seconds published, pending seconds
options           <group>                          pending windows' parts, cooldowns, buckets
                  <group>/baseline/<bucket>        the bucket's last sessions
                  <group>/signals                  the last signals (/options/)
                  ~partition/<p>                   sources' watermarks, published, groups

`~` sorts a partition's own record after every instrument key.
"""

from __future__ import annotations

from models.intervals import interval_name
from models.mbo import instrument_key

__all__ = [
    "bars_key",
    "baseline_key",
    "group_baseline_key",
    "group_key",
    "group_signals_key",
    "instrument_key",
    "open_seconds_key",
    "page_key",
    "partition_key",
    "patterns_key",
    "pending_key",
    "signals_key",
    "tops_key",
]


def partition_key(partition: int) -> bytes:
    return f"~partition/{partition}".encode()


def page_key(instrument_id: int, publisher_id: int, page: int, gen: int) -> bytes:
    return f"{instrument_id}/{publisher_id}/{page}/{gen}".encode()


def tops_key(instrument_id: int) -> bytes:
    return instrument_key(instrument_id) + b"/tops"


def open_seconds_key(partition: int) -> bytes:
    return partition_key(partition) + b"/open-seconds"


def bars_key(instrument_id: int, interval_ns: int) -> bytes:
    return instrument_key(instrument_id) + f"/bars/{interval_name(interval_ns)}".encode()


def patterns_key(instrument_id: int) -> bytes:
    return instrument_key(instrument_id) + b"/patterns"


def baseline_key(instrument_id: int, bucket: int) -> bytes:
    return instrument_key(instrument_id) + f"/baseline/{bucket}".encode()


def signals_key(instrument_id: int) -> bytes:
    return instrument_key(instrument_id) + b"/signals"


def pending_key(instrument_id: int, second: int) -> bytes:
    return instrument_key(instrument_id) + f"/{second}".encode()


def group_key(group: str) -> bytes:
    return group.encode()


def group_baseline_key(group: str, bucket: int) -> bytes:
    return group_key(group) + f"/baseline/{bucket}".encode()


def group_signals_key(group: str) -> bytes:
    return group_key(group) + b"/signals"
