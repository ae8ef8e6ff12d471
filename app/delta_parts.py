"""Sending an agent's parts of the one-second deltas to `delta.parts` (tables/deltas.py says
what goes in them), shared by the books and bars agents.

A part is JSON `{"instrument_id", "second", ...}`; every message carries its writer in the
`delta-src` header. After an agent has sent every part of the seconds before its watermark, it
sends the watermark: a marker (no key, empty value) with the `wm` header, at most once per
second of event time per partition. Parts go out before the watermark that covers them, on the
same partition, from one producer, so the deltas agent never sees a watermark before the parts
it covers.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.feeds.watermarks import WM_HEADER, encode_ns, header
from app.topics import delta_parts
from tables.deltas import SOURCES, Part, released_through

SOURCE_HEADER = "delta-src"


class PartSender:
    def __init__(self, source: str) -> None:
        self.source = source
        self._source_header = (SOURCE_HEADER, encode_ns(SOURCES.index(source)))
        self._told: dict[int, int] = {}  # partition -> the second its last watermark released

    def send(self, partition: int, parts: list[tuple[int, int, Part]]) -> None:
        for iid, second, part in parts:
            delta_parts.send_soon(
                key=str(iid).encode(),
                value=orjson.dumps({"instrument_id": iid, "second": second, **part}),
                partition=partition,
                headers=[self._source_header],
            )

    def due(self, partition: int, bound: int) -> bool:
        """Whether `bound` completes a second the last watermark sent did not."""
        return released_through(bound) > self._told.get(partition, -1)

    def watermark(self, partition: int, bound: int) -> None:
        if not self.due(partition, bound):
            return
        self._told[partition] = released_through(bound)
        delta_parts.send_soon(
            key=None,
            value=b"",
            partition=partition,
            headers=[self._source_header, (WM_HEADER, encode_ns(bound))],
        )

    def forget(self, partition: int) -> None:
        self._told.pop(partition, None)


def source_of(headers: Any) -> str:
    """The writer of a `delta.parts` message; ValueError when it names none."""
    index = header(headers, SOURCE_HEADER)
    if index is None or not 0 <= index < len(SOURCES):
        raise ValueError(f"no valid {SOURCE_HEADER} header")
    return SOURCES[index]
