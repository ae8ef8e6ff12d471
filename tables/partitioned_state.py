"""The contract every state kept per input partition follows (bars, flow detection, the delta
merge, option groups), and what they share: so each of them says only how to snapshot and
restore its own state.

A state holds one part per input partition, loaded when the partition's first message comes
and dropped when the partition goes to another worker. Between checkpoints a part marks what
changed (`Dirty`). `checkpoint()` turns that into table writes: each changed key's value, then
the partition's own record (`~partition/<p>`, naming what the part holds), then the keys to
delete. That order means a checkpoint cut short (a kill under at_least_once, where nothing is
transactional) leaves a record whose every key is present. Keys: tables/state_keys.py.
Values: JSON, in the codec the state names (`WIDE` or `FAST`).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import orjson

from tables.state_keys import partition_key

Write = tuple[bytes, bytes | None]  # a table write: (key, value), None deletes the key
Get = Callable[[bytes], bytes | None]  # reads a table
Value = Any  # a decoded value: JSON's types


@dataclass(frozen=True)
class Codec:
    encode: Callable[[Value], bytes]
    decode: Callable[[bytes], Value]


def _wide_encode(value: Value) -> bytes:
    return json.dumps(value).encode()


# Window sums and baselines can pass 64 bits: orjson refuses such an int on the way out and
# reads it back as a float, so states holding sums use the standard module.
WIDE = Codec(_wide_encode, json.loads)
# Rows, watermarks and offsets fit 64 bits.
FAST = Codec(orjson.dumps, orjson.loads)


class Dirty:
    """What changed in one part since its last checkpoint: items (an instrument, a bar series, a
    bucket...) in named sets, one per kind of key, and whether anything did, the partition's own
    record included."""

    __slots__ = ("_sets", "changed")

    def __init__(self, *kinds: str) -> None:
        self.changed = False
        self._sets: dict[str, set[Any]] = {kind: set() for kind in kinds}

    def touch(self) -> None:
        """Only the partition's own record changed (a watermark, an offset, a count)."""
        self.changed = True

    def add(self, kind: str, item: Hashable) -> None:
        self._sets[kind].add(item)
        self.changed = True

    def discard(self, kind: str, item: Hashable) -> None:
        self._sets[kind].discard(item)

    def items(self, kind: str) -> list[Any]:
        """The changed items of a kind, in order: a checkpoint writes keys in a stable order."""
        return sorted(self._sets[kind])

    def clear(self) -> None:
        for items in self._sets.values():
            items.clear()
        self.changed = False


K = TypeVar("K", bound=Hashable)


class Recent(Generic[K]):
    """The last `keep` rows per key (signals, bars): what the web views serve, checkpointed as
    one list per key."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.by_key: dict[K, deque[dict[str, Any]]] = {}

    def append(self, key: K, row: dict[str, Any]) -> None:
        rows = self.by_key.get(key)
        if rows is None:
            rows = self.by_key[key] = deque(maxlen=self.keep)
        rows.append(row)

    def restore(self, key: K, rows: list[dict[str, Any]]) -> None:
        self.by_key[key] = deque(rows, maxlen=self.keep)

    def get(self, key: K) -> deque[dict[str, Any]] | None:
        return self.by_key.get(key)

    def export(self, key: K) -> list[dict[str, Any]]:
        return list(self.by_key[key])

    def keys(self) -> set[K]:
        return set(self.by_key)

    def matching(self, key: K | None) -> list[dict[str, Any]]:
        """Every row of `key`, or of every key when it is None."""
        if key is not None:
            return list(self.by_key.get(key, ()))
        return [row for rows in self.by_key.values() for row in rows]


class Part(Protocol):
    dirty: Dirty


P = TypeVar("P", bound=Part)


class PartitionedState(ABC, Generic[P]):
    """Parts per input partition, loaded, checkpointed and evicted the one way. A subclass
    says how to make a fresh part, restore one from its record and keys, and snapshot what
    changed."""

    codec: Codec = WIDE

    def __init__(self) -> None:
        self.partitions: dict[int, P] = {}

    @abstractmethod
    def fresh(self) -> P:
        """A part for a partition with no checkpoint."""

    @abstractmethod
    def restore(self, part: P, record: Value, get: Callable[[bytes], Value | None]) -> None:
        """Fill `part` from its partition's record and the keys the record names; `get`
        returns a key's decoded value, or None when the table has no such key."""

    @abstractmethod
    def changes(self, part: P) -> tuple[list[tuple[bytes, Value | None]], Value]:
        """What a checkpoint writes for the part: each key marked dirty with its value (None
        deletes the key), and the partition's own record."""

    def loaded(self, partition: int) -> bool:
        return partition in self.partitions

    def load(self, partition: int, get: Get) -> P:
        """The partition's part from its checkpoint (`get` reads the table), or a fresh one."""
        part = self.fresh()
        raw = get(partition_key(partition))
        if raw is not None:
            decode = self.codec.decode

            def value(key: bytes) -> Value | None:
                got = get(key)
                return None if got is None else decode(got)

            self.restore(part, decode(raw), value)
        self.partitions[partition] = part
        return part

    def checkpoint(self) -> dict[int, list[Write]]:
        """What changed since the last checkpoint, by partition, as table writes."""
        out: dict[int, list[Write]] = {}
        encode = self.codec.encode
        for p, part in self.partitions.items():
            if not part.dirty.changed:
                continue
            values, record = self.changes(part)
            writes: list[Write] = [(k, encode(v)) for k, v in values if v is not None]
            writes.append((partition_key(p), encode(record)))
            writes += [(k, None) for k, v in values if v is None]
            out[p] = writes
            part.dirty.clear()
        return out

    def evict(self, partitions: set[int]) -> list[int]:
        gone = [p for p in partitions if p in self.partitions]
        for p in gone:
            del self.partitions[p]
        return gone

    def parts(self) -> Iterator[P]:
        return iter(self.partitions.values())
