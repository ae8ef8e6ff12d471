"""Sending an agent's parts of the one-second deltas to `delta.parts` (tables/deltas.py says
what goes in them), shared by the books and bars agents.

What one input message produced goes out as one message (more only past `MAX_BATCH_BYTES`):
JSON `{"parts": [[instrument_id, second, part], ...]}`, no key, the writer in the `delta-src`
header. Faust's cost per message is what limits a worker, and a sparse instrument can have a
part in every second: one message per part cost the books agent most of its time at a high
replay speed. Once an agent has sent every part of the seconds before its watermark, the
watermark goes out in the `wm` header of its last message (or of an empty one), at most once
per second of event time per partition. Parts and watermarks travel in order on one partition
from one producer, so the deltas agent never sees a watermark before the parts it covers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from app.feeds.watermarks import WM_HEADER, Passed, encode_ns, header
from app.topics import delta_parts
from tables.deltas import SOURCES, Part, released_through

SOURCE_HEADER = "delta-src"
MAX_BATCH_BYTES = 256 * 1024


class PartSender:
    def __init__(self, source: str) -> None:
        self.source = source
        self._source_header = (SOURCE_HEADER, encode_ns(SOURCES.index(source)))
        self._told = Passed(released_through)  # a watermark is news once it closes a second

    def send(
        self, partition: int, parts: list[tuple[int, int, Part]], bound: int | None = None
    ) -> None:
        """The parts, then the watermark `bound` if it completes a second."""
        wm = None
        if bound is not None and self._told.due(partition, bound):
            self._told.mark(partition, bound)
            wm = (WM_HEADER, encode_ns(bound))
        if not parts and wm is None:
            return
        send_batched(delta_parts, partition, parts, self._source_header, wm)

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


def source_of(headers: Any) -> str:
    """The writer of a `delta.parts` message; ValueError when it names none."""
    index = header(headers, SOURCE_HEADER)
    if index is None or not 0 <= index < len(SOURCES):
        raise ValueError(f"no valid {SOURCE_HEADER} header")
    return SOURCES[index]


def parts_of(value: bytes) -> list[tuple[int, int, Part]]:
    """The parts of a `delta.parts` message; ValueError for one that is not as `send` makes."""
    body = orjson.loads(value)
    if not isinstance(body, dict) or not isinstance(body.get("parts"), list):
        raise ValueError('a delta.parts message is a JSON object with a "parts" list')
    out = []
    for item in body["parts"]:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[2], dict)):
            raise ValueError("a delta part is [instrument_id, second, {...}]")
        iid, second, part = item
        if not isinstance(iid, int) or not isinstance(second, int):
            raise ValueError("a delta part needs integer instrument_id and second")
        if not all(isinstance(part.get(k, []), list) for k in ("books", "items")):
            raise ValueError("a delta part's books and items must be lists")
        out.append((iid, second, part))
    return out
