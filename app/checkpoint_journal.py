"""The journal that makes an at-least-once checkpoint of a partition all or nothing.

A checkpoint writes rows to several tables, whose changelogs are separate topics; under
at_least_once nothing is transactional, so a worker killed while the rows are on their way
leaves some tables at the new checkpoint and others at the one before. The stages then disagree
about what was applied: the books skip a redelivered message as already applied while the bars
never counted its trades, which are lost (seen as a 1-minute bar short of its first 13 trades
after a kill -9, and as an instrument's counts 214 records short).

So every row of a partition's checkpoint is first written to the journal table, in chunks under
the keys `<agent>:<partition>:<chunk>`, each stamped with the checkpoint's random id and the
number of chunks. Only once the whole journal has reached the broker are the rows written to
their tables. When a partition is taken up, a complete journal (every chunk carrying the same
id) is the last checkpoint, whole: rows that did not land are written again. An incomplete one
means the checkpoint never wrote a row, and the tables hold the one before it whole.

This module holds the journal's format; app/checkpoints.py writes and reads it.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable, Iterator

# (table name, key, value or None to delete)
Row = tuple[str, bytes, bytes | None]

# checkpoint id, chunk index, chunk count, the input offset of the last event it covers
_HEADER = struct.Struct(">QIIq")
_ROW = struct.Struct(">HIi")  # table name length, key length, value length (-1: delete)
# A chunk is cut once it holds this many bytes (a longer row travels alone): well under the
# broker's and the producer's message size limits, which the rows already respect one by one.
CHUNK_BYTES = 512 * 1024


class JournalError(ValueError):
    """A journal chunk that cannot be read."""


def key(agent: str, partition: int, chunk: int) -> bytes:
    return f"{agent}:{partition}:{chunk}".encode()


def new_id() -> int:
    """A checkpoint's id: random, so that a chunk left from an older checkpoint (or another
    worker's) never passes for part of a newer one."""
    return secrets.randbits(64)


def encode(
    checkpoint_id: int, rows: list[Row], offset: int = -1, chunk_bytes: int = CHUNK_BYTES
) -> list[bytes]:
    """The journal of one partition's checkpoint, covering its input up to `offset`, as chunk
    values in chunk order."""
    bodies: list[list[bytes]] = [[]]
    size = 0
    for table, k, value in rows:
        name = table.encode()
        parts = [
            _ROW.pack(len(name), len(k), -1 if value is None else len(value)),
            name,
            k,
            value or b"",
        ]
        row_size = sum(map(len, parts))
        if size and size + row_size > chunk_bytes:
            bodies.append([])
            size = 0
        bodies[-1] += parts
        size += row_size
    count = len(bodies)
    return [
        _HEADER.pack(checkpoint_id, i, count, offset) + b"".join(body)
        for i, body in enumerate(bodies)
    ]


def header(chunk: bytes) -> tuple[int, int, int, int]:
    """(checkpoint id, chunk index, chunk count, input offset covered) of a chunk."""
    if len(chunk) < _HEADER.size:
        raise JournalError(f"a journal chunk of {len(chunk)} bytes has no header")
    return _HEADER.unpack_from(chunk)


def rows(chunk: bytes) -> Iterator[Row]:
    view = memoryview(chunk)
    at = _HEADER.size
    while at < len(view):
        if at + _ROW.size > len(view):
            raise JournalError(f"a journal chunk ends inside a row header at byte {at}")
        name_len, key_len, value_len = _ROW.unpack_from(view, at)
        at += _ROW.size
        end = at + name_len + key_len + max(value_len, 0)
        if end > len(view):
            raise JournalError(f"a journal row at byte {at} runs past the chunk's end")
        name = bytes(view[at : at + name_len]).decode()
        k = bytes(view[at + name_len : at + name_len + key_len])
        value = None if value_len < 0 else bytes(view[at + name_len + key_len : end])
        yield name, k, value
        at = end


def read(get: Callable[[bytes], bytes | None], agent: str, partition: int) -> list[bytes] | None:
    """The partition's journal as its chunk values when it is complete; None when there is
    none or it was cut short (its checkpoint then wrote no row)."""
    first = get(key(agent, partition, 0))
    if first is None:
        return None
    checkpoint_id, _, count, _ = header(first)
    chunks = [first]
    for i in range(1, count):
        chunk = get(key(agent, partition, i))
        if chunk is None or header(chunk)[:2] != (checkpoint_id, i):
            return None
        chunks.append(chunk)
    return chunks
