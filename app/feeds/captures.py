"""What the capture readers share: a capture is `<local receive ns> <json>` per line, plain or
gzipped (`app/feeds/depth_capture.py`, `app/feeds/tick_capture.py`)."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import numpy as np
import orjson

if TYPE_CHECKING:
    from app.feeds.mbo_files import MboFile


class BadMessage(ValueError):
    """A message that is not a well-formed Binance market-stream message."""


# A record's times are uint64 ns; a time is refused from 2^63 on, as models/ticks.py does, so
# that a record made of it fits every field and sum that holds one.
MAX_NS = 1 << 63


def receive_ns(stamp: bytes) -> int:
    """A capture line's local receive time."""
    if not stamp.isdigit() or len(stamp) > 19 or int(stamp) >= MAX_NS:
        raise BadMessage("not '<local ns> <json>'")
    return int(stamp)


def parse_line(line: bytes) -> tuple[int, Any]:
    """(local receive ns, decoded JSON) of one capture line."""
    stamp, _, body = line.partition(b" ")
    ts = receive_ns(stamp)
    if not body.strip():
        raise BadMessage("not '<local ns> <json>'")
    try:
        return ts, orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadMessage(f"bad JSON ({exc})") from None


def lines_of(raw: BinaryIO) -> BinaryIO:
    """The capture's text, gunzipped if it is gzip; `raw.tell()` stays the progress."""
    gz = raw.read(2) == b"\x1f\x8b"
    raw.seek(0)
    return gzip.GzipFile(fileobj=raw) if gz else raw  # type: ignore[return-value]


def first_line(path: Path) -> bytes:
    """The first line of a file that may be a capture (b"" if it cannot be read as one)."""
    name = path.name.lower()
    if not (name.endswith(".gz") or name.endswith(".jsonl") or name.endswith(".txt")):
        return b""
    try:
        with open(path, "rb") as raw:
            return lines_of(raw).readline(1 << 16)
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error):  # zlib: a corrupt deflate stream
        return b""


class RecordRows(Protocol):
    rows: list

    def take(self) -> np.ndarray: ...


def named(f: MboFile, instrument_id: int, symbol: str) -> None:
    """Note a capture's symbol under its id; a second symbol on the same id (a hash collision,
    tables/symbology.py) is refused rather than merged into the first one's records."""
    held = f.symbols.setdefault(instrument_id, symbol)
    if held != symbol:
        raise BadMessage(
            f"{symbol} and {held} share instrument id {instrument_id}: one capture cannot hold both"
        )


def capture_chunks(
    f: MboFile, chunk_records: int, books: RecordRows, take: Callable[[int, bytes], None]
) -> Iterator[np.ndarray]:
    """Read a capture line by line, `take(number, line)` turning each into `books`' rows, and
    yield them in chunks; a bad line or a corrupt gzip stream is an InputError naming the
    line."""
    from app.feeds.mbo_files import InputError

    number = 0
    with open(f.path, "rb") as raw:
        lines = lines_of(raw)
        while True:
            try:
                line = lines.readline()
            except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
                raise InputError(f.path, f"after line {number}", f"corrupt gzip ({exc})") from None
            if not line:
                break
            number += 1
            if not line.strip():
                continue
            try:
                take(number, line)
            except BadMessage as exc:
                raise InputError(f.path, f"line {number}", str(exc)) from None
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise InputError(f.path, f"line {number}", f"malformed ({exc!r})") from None
            if len(books.rows) >= chunk_records:
                f.bytes_read = raw.tell()
                chunk = books.take()
                f.records_read += len(chunk)
                yield chunk
    f.bytes_read = f.size
    chunk = books.take()
    if len(chunk):
        f.records_read += len(chunk)
        yield chunk
