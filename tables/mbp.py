"""MBP-N (top N price levels) derived from MBO records, as Databento publishes MBP-10.

Which records make a row follows Databento's own MBP-10 as the real file in
../shared/data/xnas-itch shows it, row for row (tests/unit/test_order_book.py):
- every R, and every trade;
- every A, C or M that changes the top N levels;
- every A or C at the level just below the top N (depth N, 0-based): its row shows an unchanged
  top N, because the publisher's book is one level deeper than what it prints;
- on the bid side only, a C that empties the level at depth N+1. This looks like an off-by-one
  in the publisher's bid-side depth; it is reproduced because users diff our output against
  Databento's files, and it changes no level values, only whether a row appears.
A trade's records travel as T (aggressor side, traded size), then an F and a C for each resting
order it filled; the trade makes one row, keyed by its T, carrying the book after its last C,
and those F and C records make none of their own. A T that no C follows (a hidden execution)
makes its row with the book as it stands.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from models.mbo import F_LAST, F_SNAPSHOT, UNDEF_PRICE
from tables.order_book import ASK, BID, OrderBook

T, F, C, R = (ord(x) for x in "TFCR")
Levels = list[tuple[int, int, int]]


RECORD_COLUMNS = [
    "ts_recv",
    "ts_event",
    "instrument_id",
    "action",
    "side",
    "price",
    "size",
    "order_id",
    "flags",
    "sequence",
]


def columns(depth: int) -> list[str]:
    """An MBP-N row's columns, as in Databento's MBP-10 CSV: the record's own, then each
    level's bid and ask price, size and order count."""
    cols = list(RECORD_COLUMNS)
    for i in range(depth):
        cols += [f"bid_px_{i:02d}", f"bid_sz_{i:02d}", f"bid_ct_{i:02d}"]
        cols += [f"ask_px_{i:02d}", f"ask_sz_{i:02d}", f"ask_ct_{i:02d}"]
    return cols


@dataclass(frozen=True, slots=True)
class MbpRow:
    record: tuple  # the MBO record's own fields (MBO_DTYPE order)
    bids: Levels
    asks: Levels

    def values(self, depth: int) -> list:
        """The row's values in `columns(depth)` order: an empty level is UNDEF_PRICE, 0, 0."""
        (_, _, _, iid, ts_event, oid, price, size, flags, _, action, side, ts_recv, _, seq) = (
            self.record
        )
        out = [ts_recv, ts_event, iid, chr(action), chr(side), price, size, oid, flags, seq]
        for i in range(depth):
            for lv in (self.bids, self.asks):
                out += lv[i] if i < len(lv) else (UNDEF_PRICE, 0, 0)
        return out


class MbpBuilder:
    """`every_event=True` makes one row per event (at each F_LAST, snapshots excluded) instead:
    the LOBSTER convention, one row per message."""

    def __init__(self, depth: int = 10, every_event: bool = False) -> None:
        if not 1 <= depth <= 50:
            raise ValueError("depth must be between 1 and 50")
        self.depth = depth
        self.every_event = every_event
        self.books: dict[tuple[int, int], OrderBook] = {}
        self._trade: dict[tuple[int, int], tuple[tuple, set[int]]] = {}

    def book(self, publisher_id: int, instrument_id: int) -> OrderBook:
        key = (publisher_id, instrument_id)
        b = self.books.get(key)
        if b is None:
            b = self.books[key] = OrderBook(publisher_id, instrument_id)
        return b

    def add(self, records: np.ndarray) -> Iterator[MbpRow]:
        for rec in records.tolist():
            yield from self._one(rec)

    def finish(self) -> Iterator[MbpRow]:
        for key in list(self._trade):
            yield self._flush_trade(key)

    def _row(self, rec: tuple, book: OrderBook) -> MbpRow:
        return MbpRow(rec, book.levels(BID, self.depth), book.levels(ASK, self.depth))

    def _flush_trade(self, key: tuple[int, int]) -> MbpRow:
        rec, _ = self._trade.pop(key)
        return self._row(rec, self.books[key])

    def _one(self, rec: tuple) -> Iterator[MbpRow]:
        (_, _, pub, iid, _, oid, price, size, flags, _, action, side, _, _, seq) = rec
        key = (pub, iid)
        book = self.book(pub, iid)
        if self.every_event:
            book.apply(action, side, price, size, oid, flags, seq)
            if flags & F_LAST and not flags & F_SNAPSHOT:
                yield self._row(rec, book)
            return
        pending = self._trade.get(key)
        if pending is not None:
            _, filled = pending
            if action == F:
                filled.add(oid)
                book.apply(action, side, price, size, oid, flags, seq)
                return
            if action == C and oid in filled:
                book.apply(action, side, price, size, oid, flags, seq)
                filled.discard(oid)
                if not filled:
                    yield self._flush_trade(key)
                return
            yield self._flush_trade(key)
        if action == T:
            self._trade[key] = (rec, set())
            book.apply(action, side, price, size, oid, flags, seq)
            return
        if action == R:
            book.apply(action, side, price, size, oid, flags, seq)
            yield self._row(rec, book)
            return
        if side in (BID, ASK):
            rank = book.level_rank(side, price)
            level_orders = book.level_count(side, price)
        else:
            rank, level_orders = self.depth + 2, 0
        before = (book.levels(BID, self.depth), book.levels(ASK, self.depth))
        changed = book.apply(action, side, price, size, oid, flags, seq)
        if changed is None:
            return
        after = (book.levels(BID, self.depth), book.levels(ASK, self.depth))
        if (
            after != before
            or rank <= self.depth
            or (action == C and side == BID and level_orders == 1 and rank == self.depth + 1)
        ):
            yield MbpRow(rec, after[0], after[1])
