"""Per-instrument record and action counts: the state of the `instruments` agent."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.mbo import ACTIONS, instrument_key
from tables.partitioned_state import FAST


@dataclass
class InstrumentStats:
    """Counts for one instrument, and the input position they include.

    `position` is the last input position applied (the raw topic's offset on the live path, a
    message counter in backfill). State and position are stored together, so a message
    redelivered after a crash is recognised and not counted twice.
    """

    instrument_id: int
    records: int = 0
    messages: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    publishers: list[int] = field(default_factory=list)
    first_ts_recv: int | None = None
    last_ts_recv: int | None = None
    last_sequence: int | None = None
    position: int = -1

    def apply(self, records: np.ndarray, position: int) -> bool:
        """Count a message's records; False (and no change) if position was already applied."""
        if position <= self.position:
            return False
        self.position = position
        if not len(records):
            return True
        self.messages += 1
        self.records += len(records)
        counts = np.bincount(records["action"], minlength=256)
        for code in np.flatnonzero(counts).tolist():
            key = chr(code)
            self.actions[key] = self.actions.get(key, 0) + int(counts[code])
        pubs = records["publisher_id"]
        if not (pubs == pubs[0]).all() or int(pubs[0]) not in self.publishers:
            self.publishers = sorted(set(self.publishers) | set(np.unique(pubs).tolist()))
        ts = records["ts_recv"]
        lo, hi = int(ts.min()), int(ts.max())
        self.first_ts_recv = lo if self.first_ts_recv is None else min(self.first_ts_recv, lo)
        self.last_ts_recv = hi if self.last_ts_recv is None else max(self.last_ts_recv, hi)
        self.last_sequence = int(records["sequence"][-1])
        return True

    def to_dict(self) -> dict[str, Any]:
        return {
            "instrument_id": self.instrument_id,
            "records": self.records,
            "messages": self.messages,
            "actions": {a: self.actions[a] for a in ACTIONS if a in self.actions},
            "publishers": self.publishers,
            "first_ts_recv": self.first_ts_recv,
            "last_ts_recv": self.last_ts_recv,
            "last_sequence": self.last_sequence,
            "position": self.position,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InstrumentStats:
        return cls(
            instrument_id=d["instrument_id"],
            records=d["records"],
            messages=d["messages"],
            actions=dict(d["actions"]),
            publishers=list(d["publishers"]),
            first_ts_recv=d["first_ts_recv"],
            last_ts_recv=d["last_ts_recv"],
            last_sequence=d["last_sequence"],
            position=d["position"],
        )

    def to_bytes(self) -> bytes:
        return FAST.encode(self.to_dict())

    @classmethod
    def from_bytes(cls, raw: bytes) -> InstrumentStats:
        return cls.from_dict(FAST.decode(raw))

    def public(self) -> dict[str, Any]:
        """What the web view and backfill output show: everything but the input position,
        which differs between the live path and backfill by design."""
        d = self.to_dict()
        del d["position"]
        return d


class StatsSet:
    """The InstrumentStats of the instruments a worker owns, held in memory and written to
    their table at checkpoints (with the books they are counted alongside)."""

    def __init__(self) -> None:
        self._stats: dict[int, InstrumentStats] = {}
        self._partition: dict[int, int] = {}
        self._dirty: set[int] = set()

    def loaded(self, instrument_id: int) -> bool:
        return instrument_id in self._stats

    def load(
        self, instrument_id: int, partition: int, get: Callable[[bytes], bytes | None]
    ) -> None:
        raw = get(instrument_key(instrument_id))
        self._stats[instrument_id] = (
            InstrumentStats.from_bytes(raw) if raw else InstrumentStats(instrument_id)
        )
        self._partition[instrument_id] = partition

    def apply(self, instrument_id: int, records: np.ndarray, position: int) -> bool:
        """Count a message (see InstrumentStats.apply); the instrument must be loaded."""
        if not self._stats[instrument_id].apply(records, position):
            return False
        self._dirty.add(instrument_id)
        return True

    def public_rows(self) -> list[dict[str, Any]]:
        """Every instrument's counts as the view shows them, by instrument."""
        return [self._stats[iid].public() for iid in sorted(self._stats)]

    def checkpoint(self) -> dict[int, list[tuple[bytes, bytes]]]:
        """Table writes for what changed since the last checkpoint, by partition."""
        writes: dict[int, list[tuple[bytes, bytes]]] = {}
        for iid in sorted(self._dirty):
            writes.setdefault(self._partition[iid], []).append(
                (instrument_key(iid), self._stats[iid].to_bytes())
            )
        self._dirty.clear()
        return writes

    def evict(self, partitions: set[int]) -> list[int]:
        gone = [iid for iid, p in self._partition.items() if p in partitions]
        for iid in gone:
            del self._stats[iid], self._partition[iid]
            self._dirty.discard(iid)
        return gone
