"""Sending one partition's option parts and pressure watermark to `options.parts`
(tables/options.py says what a part is), from the instruments agent (the flow stage's parts).

Parts go to the partition of their group, in one message per target partition for what one
input message closed (more only past MAX_BATCH_BYTES): JSON `{"parts": [part, ...]}`, no key,
the source partition in the `src-part` header. The options agent closes a group's window only
when every source partition has passed its end, so each source tells every target partition its
watermark in the `wm` header (of its last message there, or of an empty one), but only when the
watermark has passed another window end: windows end on multiples of the interval, so nothing
closes any sooner for hearing more often. One producer per source partition sends its parts and
watermarks in order, so a watermark never arrives before the parts it covers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from app.feeds.watermarks import WM_HEADER, Passed, encode_ns
from app.topics import option_parts, partition_of
from app.transport import SOURCE_PARTITION_HEADER
from tables.options import Part, check_part

MAX_BATCH_BYTES = 256 * 1024


class OptionPartSender:
    def __init__(self, interval_ns: int, partitions: int) -> None:
        self.interval_ns = interval_ns
        self.partitions = partitions
        self._told = Passed(lambda wm: wm // interval_ns)  # news once it passes a window end

    def send(self, partition: int, parts: list[list[Any]], watermark: int | None) -> None:
        by_target: dict[int, list[list[Any]]] = {}
        for part in parts:
            by_target.setdefault(partition_of(part[0].encode()), []).append(part)
        wm = None
        if watermark is not None and self._told.due(partition, watermark):
            self._told.mark(partition, watermark)
            wm = (WM_HEADER, encode_ns(watermark))
        source = (SOURCE_PARTITION_HEADER, encode_ns(partition))
        for target in range(self.partitions) if wm else sorted(by_target):
            send_batched(option_parts, target, by_target.get(target, []), source, wm)

    def forget(self, partition: int) -> None:
        self._told.forget(partition)


def send_batched(
    topic: Any,
    partition: int,
    items: Sequence[Any],
    source: tuple[str, bytes],
    wm: tuple[str, bytes] | None,
) -> None:
    """Items in as few messages as `json_batches` allows (one empty one for none), each with
    the `source` header, the last also with `wm`: a watermark never precedes what it covers."""
    batches = json_batches(items) if items else [b""]
    for i, value in enumerate(batches):
        last = i == len(batches) - 1
        topic.send_soon(
            key=None,
            value=value,
            partition=partition,
            headers=[source, wm] if last and wm else [source],
        )


def json_batches(items: Sequence[Any]) -> list[bytes]:
    """Items as `{"parts": [item, ...]}` JSON messages of about MAX_BATCH_BYTES at most."""
    encoded = [orjson.dumps(item) for item in items]
    out, batch, size = [], [], 0
    for item in encoded:
        if batch and size + len(item) > MAX_BATCH_BYTES:
            out.append(b'{"parts":[' + b",".join(batch) + b"]}")
            batch, size = [], 0
        batch.append(item)
        size += len(item) + 1
    out.append(b'{"parts":[' + b",".join(batch) + b"]}")
    return out


def parts_of(value: bytes) -> list[Part]:
    """Every part of an `options.parts` message, checked before any is applied; ValueError
    for one that is not as `send_batched` makes."""
    body = orjson.loads(value)
    if not isinstance(body, dict) or not isinstance(body.get("parts"), list):
        raise ValueError('an options.parts message is a JSON object with a "parts" list')
    return [check_part(item) for item in body["parts"]]
