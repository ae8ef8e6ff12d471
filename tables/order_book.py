"""An L3 (market-by-order) book for one (publisher_id, instrument_id): the reference
implementation of Databento MBO semantics (../shared/design.md, "Order book semantics").

- A adds an order at the back of its price level.
- C subtracts the record's size from the order (partial cancels exist) and removes it at zero;
  executions reach the book as C records too.
- M sets a new price and/or size; the order loses queue priority if the price changes or the
  size increases, and keeps it if only the size decreases.
- R clears the book (session start, snapshot, recovery) and clears the `suspect` mark.
- T, F and N change nothing: applying F as well as the C that follows would count fills twice.
- F_MAYBE_BAD_BOOK marks the book suspect until the next R; so does a sequence gap.
- An order id the book does not know (C or M before any A, typical when a feed starts mid-day)
  is counted, never fatal; an M of an unknown order adds it, as the venue's state says it rests.
- F_TOB records (venues that publish only their top of book) are not orders: an A or M replaces
  every level on its side with one level of that price and size (none for UNDEF_PRICE), a C
  empties the side. F_MBP records set the aggregate size of one price level (A/M) or remove it
  (C). Both show in level sizes but not in order counts, as in Databento's own book example.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass, field

from models.mbo import F_MAYBE_BAD_BOOK, F_MBP, F_TOB, UNDEF_PRICE

BID, ASK = ord("B"), ord("A")
A, C, M, R = (ord(x) for x in "ACMR")


@dataclass(slots=True)
class Level:
    size: int = 0  # resting orders' sizes plus `agg`
    agg: int = 0  # size from F_TOB / F_MBP records, which are not orders
    # order id -> None, in queue priority (dicts keep insertion order)
    orders: dict[int, None] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.orders)


@dataclass
class BookCounters:
    unknown_orders: int = 0  # C or M of an order the book does not hold
    duplicate_adds: int = 0  # A of an order id already resting (replaced)
    gaps: int = 0  # sequence numbers skipped
    duplicates: int = 0  # records whose sequence went backwards
    bad_records: int = 0  # a side other than B/A on an order action, a non-positive size


class OrderBook:
    def __init__(self, publisher_id: int = 0, instrument_id: int = 0) -> None:
        self.publisher_id = publisher_id
        self.instrument_id = instrument_id
        # order id -> [side, price, size]
        self.orders: dict[int, list[int]] = {}
        self._levels: dict[int, dict[int, Level]] = {BID: {}, ASK: {}}
        self._prices: dict[int, list[int]] = {BID: [], ASK: []}  # ascending, both sides
        self.suspect = False
        self.last_sequence = 0
        self.counters = BookCounters()

    # -- applying records -----------------------------------------------------------------
    def apply(
        self,
        action: int,
        side: int,
        price: int,
        size: int,
        order_id: int,
        flags: int,
        sequence: int = 0,
    ) -> int | None:
        """Apply one MBO record. Returns the side whose levels changed (BID or ASK), 0 for both
        (R), or None when the book did not change."""
        self._check_sequence(sequence)
        if flags & F_MAYBE_BAD_BOOK:
            self.suspect = True
        if action == R:
            self.clear()
            return 0
        if flags & (F_TOB | F_MBP) and action in (A, C, M):
            if side not in (BID, ASK):
                self.counters.bad_records += 1
                return None
            if flags & F_TOB:
                self._clear_side(side)
                if action != C and price != UNDEF_PRICE and size > 0:
                    self._set_aggregate(side, price, size)
            else:
                self._set_aggregate(side, price, 0 if action == C else size)
            return side
        if action == A:
            return self._add(side, price, size, order_id)
        if action == C:
            return self._cancel(size, order_id)
        if action == M:
            return self._modify(side, price, size, order_id)
        return None  # T, F, N

    def clear(self) -> None:
        self.orders.clear()
        for s in (BID, ASK):
            self._levels[s].clear()
            self._prices[s].clear()
        self.suspect = False

    def _clear_side(self, side: int) -> None:
        for lv in self._levels[side].values():
            for oid in lv.orders:
                del self.orders[oid]
        self._levels[side].clear()
        self._prices[side].clear()

    def _set_aggregate(self, side: int, price: int, size: int) -> None:
        levels = self._levels[side]
        lv = levels.get(price)
        if lv is None:
            if size <= 0:
                return
            lv = levels[price] = Level()
            insort(self._prices[side], price)
        lv.size += size - lv.agg
        lv.agg = size
        self._drop_if_empty(side, price, lv)

    def _drop_if_empty(self, side: int, price: int, lv: Level) -> None:
        if not lv.orders and not lv.agg:
            del self._levels[side][price]
            prices = self._prices[side]
            del prices[bisect_left(prices, price)]

    def _check_sequence(self, sequence: int) -> None:
        if not sequence:
            return
        last = self.last_sequence
        if last and sequence > last + 1:
            self.counters.gaps += 1
            self.suspect = True
        elif last and sequence < last:
            self.counters.duplicates += 1
        if sequence > last:
            self.last_sequence = sequence

    def _add(self, side: int, price: int, size: int, order_id: int) -> int | None:
        if side not in (BID, ASK) or size <= 0 or price == UNDEF_PRICE:
            self.counters.bad_records += 1
            return None
        if order_id in self.orders:
            self.counters.duplicate_adds += 1
            self._remove(order_id)
        self._insert(order_id, side, price, size)
        return side

    def _cancel(self, size: int, order_id: int) -> int | None:
        order = self.orders.get(order_id)
        if order is None:
            self.counters.unknown_orders += 1
            return None
        side, price, resting = order
        left = resting - size
        if left <= 0:
            self._remove(order_id)
        else:
            order[2] = left
            self._levels[side][price].size -= size
        return side

    def _modify(self, side: int, price: int, size: int, order_id: int) -> int | None:
        order = self.orders.get(order_id)
        if order is None:
            self.counters.unknown_orders += 1
            return self._add(side, price, size, order_id)
        if side not in (BID, ASK) or price == UNDEF_PRICE:
            self.counters.bad_records += 1
            return None
        old_side, old_price, old_size = order
        if size <= 0:
            self._remove(order_id)
            return old_side
        if price != old_price or size > old_size or side != old_side:
            self._remove(order_id)  # loses priority: to the back of its (new) level
            self._insert(order_id, side, price, size)
            return old_side if old_side == side else 0
        order[2] = size
        self._levels[old_side][old_price].size -= old_size - size
        return old_side

    def _insert(self, order_id: int, side: int, price: int, size: int) -> None:
        self.orders[order_id] = [side, price, size]
        levels = self._levels[side]
        lv = levels.get(price)
        if lv is None:
            lv = levels[price] = Level()
            insort(self._prices[side], price)
        lv.orders[order_id] = None
        lv.size += size

    def _remove(self, order_id: int) -> None:
        side, price, size = self.orders.pop(order_id)
        levels = self._levels[side]
        lv = levels[price]
        del lv.orders[order_id]
        lv.size -= size
        self._drop_if_empty(side, price, lv)

    # -- reading --------------------------------------------------------------------------
    def best(self, side: int) -> tuple[int, int, int] | None:
        """(price, size, count) at the touch, or None for an empty side."""
        prices = self._prices[side]
        if not prices:
            return None
        p = prices[-1] if side == BID else prices[0]
        lv = self._levels[side][p]
        return p, lv.size, lv.count

    def levels(self, side: int, depth: int) -> list[tuple[int, int, int]]:
        """Top `depth` levels of a side, best first: (price, size, order count)."""
        prices = self._prices[side]
        chosen = prices[: -depth - 1 : -1] if side == BID else prices[:depth]
        lvs = self._levels[side]
        return [(p, lvs[p].size, lvs[p].count) for p in chosen]

    def resting(self, side: int) -> list[tuple[int, int, int]]:
        """(order id, price, size) of every order on a side, best level first, each level in
        queue priority: the order a snapshot lists them in."""
        out = []
        for price, _, _ in self.levels(side, len(self._prices[side])):
            out.extend(
                (oid, price, self.orders[oid][2]) for oid in self._levels[side][price].orders
            )
        return out

    def level_rank(self, side: int, price: int) -> int:
        """How many better levels the side has than `price` (0 = at or better than the touch)."""
        prices = self._prices[side]
        if side == BID:
            return len(prices) - bisect_left(prices, price + 1)
        return bisect_left(prices, price)

    def level_count(self, side: int, price: int) -> int:
        """Orders resting at a price (0 if no level there)."""
        lv = self._levels[side].get(price)
        return lv.count if lv else 0

    def queue_position(self, order_id: int) -> tuple[int, int] | None:
        """(orders ahead, size ahead) of an order at its level, or None if unknown."""
        order = self.orders.get(order_id)
        if order is None:
            return None
        side, price, _ = order
        size_ahead = 0
        for ahead, oid in enumerate(self._levels[side][price].orders):
            if oid == order_id:
                return ahead, size_ahead
            size_ahead += self.orders[oid][2]
        raise AssertionError("order missing from its level")

    @property
    def crossed(self) -> bool:
        b, a = self.best(BID), self.best(ASK)
        return b is not None and a is not None and b[0] >= a[0]
