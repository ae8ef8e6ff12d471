"""An L2 book kept from a venue's diff-depth stream, by the procedure Binance documents for its
USD-M futures ("How to manage a local order book correctly"):

1. buffer the stream's updates;
2. take a REST snapshot (`lastUpdateId`);
3. drop buffered updates whose last id `u` is below `lastUpdateId`;
4. start at the update with `U <= lastUpdateId <= u` (or, since ids skip between updates, the
   one whose `pu` is at or below `lastUpdateId`: the snapshot fell between two updates);
5. then each update's `pu` must equal the previous update's `u`; otherwise the book is suspect
   and is rebuilt from a new snapshot, again from step 3.

Quantities are absolute; zero removes a level, and a zero for a level the book does not hold
is normal (the snapshot is only so deep). A snapshot older than every update still buffered
(its `lastUpdateId` below the first one's `U`) cannot be joined to the stream: it is refused
and another is needed.

`DepthSync` holds one instrument's levels as price -> size per side and says what each message
changed, as `Change`s the feed turns into MBO records for the L3 engine (F_MBP level sizes).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

BID, ASK = ord("B"), ord("A")
MAX_BUFFERED = 20_000  # updates kept while waiting for a snapshot; the oldest go first


@dataclass(frozen=True)
class DepthUpdate:
    first_id: int  # U
    last_id: int  # u
    previous_id: int  # pu: the `u` of the update before it
    ts_event: int  # ns
    bids: list[tuple[int, int]]  # (price, size): absolute, 0 removes the level
    asks: list[tuple[int, int]]


@dataclass(frozen=True)
class DepthSnapshot:
    last_update_id: int
    ts_event: int
    bids: list[tuple[int, int]]
    asks: list[tuple[int, int]]


class LevelChange(NamedTuple):  # a tuple: hundreds of thousands a second are made
    side: int
    price: int
    size: int  # the level's new size; 0: removed
    old_size: int  # 0: the level is new


class Kind(Enum):
    SNAPSHOT = "snapshot"  # the book was rebuilt: clear, then `changes` are its levels
    UPDATE = "update"
    GAP = "gap"  # the stream skipped updates: the book is suspect until the next snapshot


@dataclass(frozen=True)
class Change:
    kind: Kind
    ts_event: int
    last_id: int  # the book's update id after it (for a gap: the last good one)
    changes: list[LevelChange] = field(default_factory=list)


class State(Enum):
    WAITING = "waiting"  # for a snapshot that joins the stream
    SYNCED = "synced"


@dataclass
class DepthCounters:
    updates: int = 0  # applied
    dropped_stale: int = 0  # buffered updates older than the snapshot
    gaps: int = 0  # pu breaks: each one needs a new snapshot
    snapshots: int = 0  # applied
    snapshots_refused: int = 0  # too old to join the buffered stream
    buffer_overflow: int = 0  # updates dropped from a full buffer


class DepthSync:
    def __init__(self, max_buffered: int = MAX_BUFFERED) -> None:
        self.levels: dict[int, dict[int, int]] = {BID: {}, ASK: {}}
        self.state = State.WAITING
        self.last_id: int | None = None
        self.joining = False
        self.buffer: deque[DepthUpdate] = deque()
        self.max_buffered = max_buffered
        self.counters = DepthCounters()

    @property
    def synced(self) -> bool:
        return self.state is State.SYNCED

    def update(self, u: DepthUpdate) -> list[Change]:
        if self.state is State.WAITING:
            if len(self.buffer) >= self.max_buffered:
                self.buffer.popleft()
                self.counters.buffer_overflow += 1
            self.buffer.append(u)
            return []
        last = self.last_id or 0
        if u.last_id < last or (u.last_id == last and not self.joining):
            self.counters.dropped_stale += self.joining
            return []  # older than the snapshot, or an update resent
        if self.joining:
            # Ids skip between updates: the snapshot may sit in a hole between them
            joins = u.first_id <= last or u.previous_id <= last
        else:
            joins = u.previous_id == last
        if not joins:
            self.counters.gaps += 1
            self.state = State.WAITING
            self.buffer.append(u)
            return [Change(Kind.GAP, u.ts_event, last)]
        self.joining = False
        return [self._apply(u)]

    def snapshot(self, s: DepthSnapshot) -> list[Change]:
        """Join the stream at `s` if it can be; otherwise nothing changes and a newer snapshot
        is still needed (`needs_snapshot`)."""
        if self.state is State.SYNCED:
            return []  # in step with the stream already: a snapshot adds nothing
        while self.buffer and self.buffer[0].last_id < s.last_update_id:
            self.buffer.popleft()
            self.counters.dropped_stale += 1
        first = self.buffer[0] if self.buffer else None
        if first is not None and not (
            first.first_id <= s.last_update_id or first.previous_id <= s.last_update_id
        ):
            self.counters.snapshots_refused += 1  # the updates between them are lost
            return []
        out = [self._rebuild(s)]
        pending, self.buffer = self.buffer, deque()
        for u in pending:
            out += self.update(u)
        return out

    @property
    def needs_snapshot(self) -> bool:
        return self.state is State.WAITING

    def _rebuild(self, s: DepthSnapshot) -> Change:
        self.levels = {BID: {}, ASK: {}}
        changes = []
        for side, rows in ((BID, s.bids), (ASK, s.asks)):
            book = self.levels[side]
            for price, size in rows:
                if size > 0:
                    book[price] = size
                    changes.append(LevelChange(side, price, size, 0))
        self.state = State.SYNCED
        self.joining = True  # the next update may start before the snapshot and end after it
        self.last_id = s.last_update_id
        self.counters.snapshots += 1
        return Change(Kind.SNAPSHOT, s.ts_event, s.last_update_id, changes)

    def _apply(self, u: DepthUpdate) -> Change:
        changes = []
        for side, rows in ((BID, u.bids), (ASK, u.asks)):
            book = self.levels[side]
            for price, size in rows:
                old = book.get(price, 0)
                if size == old:
                    continue  # a removal of a level it never had, or no change
                if size:
                    book[price] = size
                else:
                    del book[price]
                changes.append(LevelChange(side, price, size, old))
        self.last_id = u.last_id
        self.counters.updates += 1
        return Change(Kind.UPDATE, u.ts_event, u.last_id, changes)

    def best(self, side: int) -> tuple[int, int] | None:
        """(price, size) of the best level, or None for an empty side."""
        book = self.levels[side]
        if not book:
            return None
        price = max(book) if side == BID else min(book)
        return price, book[price]
