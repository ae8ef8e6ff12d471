"""The fast L3 book engine: many books over flat arrays, applied by compiled kernels
(`tables.book_kernels`). Semantics are those of the reference `tables.order_book.OrderBook`,
which the tests hold it to, record for record, on generated and real data.

A book is identified by (publisher_id, instrument_id) and gets a dense index on first sight.
`apply` takes a run of MBO records; with `emit=True` it also returns what the books published at
each F_LAST: the L2 level changes of the event (the final size and order count of every level
the event touched, and a clear row for R) and the BBO when it changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from models.mbo import F_LAST, F_TOB, UNDEF_PRICE
from tables import book_kernels as K
from tables.order_book import ASK, BID


def _return_freed_arrays_to_the_os() -> None:
    """glibc raises its mmap threshold each time a large mmapped block is freed (up to 32 MiB),
    so once the engine has grown its arrays, later generations may come from the heap, and the
    old ones, freed, stay in RSS: the same books measured 110 or 155 bytes per order from run to
    run. Fixing the threshold at that 32 MiB keeps the engine's big arrays in mappings of their
    own, returned to the OS when freed (115 bytes per order, every run), while smaller
    temporaries keep reusing heap memory: at 128 KiB decoding ran at half speed, paying page
    faults on every fresh mapping (load_tests/bench_book.py)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        # Fixing the mmap threshold also freezes the trim threshold at 128 KiB, and the heap
        # would then be handed back and faulted in again around every large message; 64 MiB
        # is where glibc's own adjustment would have taken it.
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


_return_freed_arrays_to_the_os()

SIDE_INDEX = {BID: 0, ASK: 1}


class _State(NamedTuple):
    """Everything the kernels touch, in few arrays: numba passes each array argument with its
    reference count, so forty separate arrays made every kernel call several times slower."""

    sc: np.ndarray  # scalars, K.SC_*
    # Orders: one 40-byte row each, seen through two views of the same buffer (one cache line
    # per order instead of two): O64 (n, 5) int64 columns 0-1 are id and priority stamp; O32
    # (n, 10) int32 columns 4-9 are size, book, level, next, prev, page.
    O64: np.ndarray
    O32: np.ndarray
    oh: np.ndarray  # order hash, int64 entries (see book_kernels._ofind)
    L: np.ndarray  # levels (n, 11) int64: book, side, price, size, agg, count, head, tail,
    #                better, worse, touch
    lh: np.ndarray  # level hash
    PG: np.ndarray  # pages (n, 6) int32: book, number, live, fill, generation, dirty
    B: np.ndarray  # books (n, K.B_COLUMNS) int64
    PD: np.ndarray  # pending level changes of open events (n, 5): side, price, size0, count0, next
    DL: np.ndarray  # published level rows (n, 7): rec, book, side, price, size, count, event
    DB: np.ndarray  # published BBO rows (n, 8): rec, bid px, sz, ct, ask px, sz, ct, event


_O32_FILL = (0, 0, 0, 0, 0, -1, -1, -1, -1, -1)
_L_FILL = (-1, 0, 0, 0, 0, 0, -1, -1, -1, -1, -1)
_PG_FILL = (-1, 0, 0, 0, 0, 0)


def fresh_book_row() -> np.ndarray:
    row = np.zeros(K.B_COLUMNS, np.int64)
    row[[K.B_BEST, K.B_BEST + 1, K.B_WORST, K.B_WORST + 1]] = -1
    row[[K.B_OPEN_PAGE, K.B_PEND_HEAD, K.B_PEND_TAIL]] = -1
    row[[K.B_BBO, K.B_BBO + 3]] = UNDEF_PRICE
    return row


def _rows(n: int, fill: tuple[int, ...] | np.ndarray, dtype: Any) -> np.ndarray:
    out = np.empty((n, len(fill)), dtype=dtype)
    out[:] = np.asarray(fill, dtype=dtype)
    return out


def _grown(old: np.ndarray, n: int) -> np.ndarray:
    # Rows past the old end stay uninitialised (the kernels set every field of a row when they
    # take it), so the memory is not touched, and not resident, until it is used.
    new = np.empty((n, *old.shape[1:]), dtype=old.dtype)
    new[: len(old)] = old
    return new


def _order_views(rows: np.ndarray) -> dict[str, np.ndarray]:
    return {"O32": rows, "O64": rows.view(np.int64)}


def fresh_book_rows(old: np.ndarray, n: int) -> np.ndarray:
    new = _rows(n, fresh_book_row(), np.int64)
    new[: len(old)] = old
    return new


def _pow2_at_least(n: int) -> int:
    return 1 << max(4, (int(n) - 1).bit_length())


COUNTER_NAMES = ("unknown_orders", "duplicate_adds", "gaps", "duplicates", "bad_records")


@dataclass(frozen=True, slots=True)
class Published:
    """What `apply(emit=True)` returns. Level rows: `rec` is the index of the event's F_LAST
    record in the input, `side` is B, A, or R (the book was cleared: drop every level, then
    apply the rows that follow for the same event); size and count are the level's values after
    the event (0 and 0: the level is gone). BBO rows: the touch after the event, when it
    changed (UNDEF_PRICE and 0 for an empty side). `event` numbers a book's events (its
    F_LAST records) from 0, across restarts: the key consumers drop repeats by."""

    rec: np.ndarray
    book: np.ndarray
    side: np.ndarray
    price: np.ndarray
    size: np.ndarray
    count: np.ndarray
    event: np.ndarray
    bbo_rec: np.ndarray
    bbo_book: np.ndarray
    bbo: np.ndarray  # (n, 6): bid px, sz, ct, ask px, sz, ct
    bbo_event: np.ndarray


class BookEngine:
    def __init__(self, orders: int = 1 << 14, levels: int = 1 << 12, books: int = 16) -> None:
        self._keys: dict[tuple[int, int], int] = {}
        self.book_keys: list[tuple[int, int]] = []
        self._key_lookup = np.zeros(0, np.uint64)  # sorted (publisher << 32 | instrument)
        self._key_index = np.zeros(0, np.int32)
        sc = np.zeros(16, np.int64)
        sc[[K.SC_O_FREE, K.SC_L_FREE, K.SC_P_FREE]] = -1
        self.S = _State(
            sc=sc,
            **_order_views(_rows(orders, _O32_FILL, np.int32)),
            oh=np.zeros(_pow2_at_least(2 * orders), np.int64),
            L=_rows(levels, _L_FILL, np.int64),
            lh=np.zeros(_pow2_at_least(2 * levels), np.int32),
            PG=_rows(max(16, orders // 256), _PG_FILL, np.int32),
            B=_rows(books, fresh_book_row(), np.int64),
            PD=np.zeros((0, 5), np.int64),
            DL=np.zeros((0, 7), np.int64),
            DB=np.zeros((0, 8), np.int64),
        )
        self._scratch(1024)

    # -- capacity -------------------------------------------------------------------------
    def _scratch(self, n: int) -> None:
        self.S = self.S._replace(
            PD=np.zeros((n, 5), np.int64),
            DL=np.zeros((n, 7), np.int64),
            DB=np.zeros((n, 8), np.int64),
        )

    def reserve(self, orders: int, levels: int, pages: int) -> None:
        S = self.S
        changes: dict[str, np.ndarray] = {}
        need_o = int(S.sc[K.SC_O_LIVE]) + orders
        if need_o > len(S.O32) or 2 * need_o > len(S.oh):
            cap = max(need_o, int(len(S.O32) * 1.5))
            changes.update(_order_views(_grown(S.O32, cap)))
            changes["oh"] = np.zeros(_pow2_at_least(2 * cap), np.int64)
        need_l = int(S.sc[K.SC_L_LIVE]) + levels
        if need_l > len(S.L) or 2 * need_l > len(S.lh):
            cap = max(need_l, len(S.L) * 2)
            changes["L"] = _grown(S.L, cap)
            changes["lh"] = np.zeros(_pow2_at_least(2 * cap), np.int32)
        if int(S.sc[K.SC_P_HWM]) + pages > len(S.PG):
            cap = max(int(S.sc[K.SC_P_HWM]) + pages, len(S.PG) * 2)
            changes["PG"] = _grown(S.PG, cap)
        if changes:
            self.S = S._replace(**changes)
            if "oh" in changes or "lh" in changes:
                K.rehash(self.S)

    # -- books ----------------------------------------------------------------------------
    def book_index(self, publisher_id: int, instrument_id: int) -> int:
        key = (int(publisher_id), int(instrument_id))
        b = self._keys.get(key)
        if b is None:
            b = self._keys[key] = len(self.book_keys)
            self.book_keys.append(key)
            if b >= len(self.S.B):
                self.S = self.S._replace(B=fresh_book_rows(self.S.B, 2 * len(self.S.B)))
            packed = (np.uint64(key[0]) << np.uint64(32)) | np.uint64(key[1])
            pos = int(np.searchsorted(self._key_lookup, packed))
            self._key_lookup = np.insert(self._key_lookup, pos, packed)
            self._key_index = np.insert(self._key_index, pos, b)
        return b

    def find(self, publisher_id: int, instrument_id: int) -> int | None:
        return self._keys.get((int(publisher_id), int(instrument_id)))

    def _books_of(self, records: np.ndarray) -> np.ndarray:
        pub = records["publisher_id"]
        iid = records["instrument_id"]
        if (pub == pub[0]).all() and (iid == iid[0]).all():
            return np.full(len(records), self.book_index(int(pub[0]), int(iid[0])), np.int32)
        packed = (pub.astype(np.uint64) << np.uint64(32)) | iid.astype(np.uint64)
        pos = np.searchsorted(self._key_lookup, packed)
        known = pos < len(self._key_lookup)
        known[known] = self._key_lookup[pos[known]] == packed[known]
        if not known.all():
            for key in np.unique(packed[~known]).tolist():
                self.book_index(key >> 32, key & 0xFFFFFFFF)
            pos = np.searchsorted(self._key_lookup, packed)
        return self._key_index[pos]

    # -- applying -------------------------------------------------------------------------
    def apply(self, records: np.ndarray, emit: bool = False) -> Published | None:
        n = len(records)
        if not n:
            return None
        books = self._prepare(records, emit)
        K.apply_records(self.S, books, *_columns(records))
        return self._published(books) if emit else None

    def apply_with_tops(
        self, records: np.ndarray, cuts: np.ndarray, books_read: np.ndarray, depth: int
    ) -> tuple[Published, np.ndarray, np.ndarray]:
        """Apply (emitting) complete events, and read the top `depth` levels of each book of
        `books_read` just before each record index in `cuts`: levels[k, j, side] holds
        [price, size, count] rows (side 0 bids, 1 asks), counts[k, j, side] how many."""
        books = self._prepare(records, True)
        levels = np.zeros((len(cuts), len(books_read), 2, depth, 3), np.int64)
        counts = np.zeros((len(cuts), len(books_read), 2), np.int64)
        K.apply_with_tops(
            self.S,
            books,
            *_columns(records),
            cuts.astype(np.int64),
            books_read.astype(np.int64),
            levels,
            counts,
        )
        return self._published(books), levels, counts

    def _prepare(self, records: np.ndarray, emit: bool) -> np.ndarray:
        n = len(records)
        books = self._books_of(records)
        self.reserve(n, n, n)
        scratch = 0
        if emit:
            # worst case of one call: two level changes per record, plus every level of a side
            # for each F_TOB record (it replaces the side)
            n_tob = int(np.count_nonzero(records["flags"] & F_TOB))
            widest = int(self.S.B[:, K.B_NLEV : K.B_NLEV + 2].max()) if n_tob else 0
            scratch = 2 * n + n_tob * (widest + 1) + 64
            if scratch > len(self.S.PD):
                self._scratch(scratch)
        sc = self.S.sc
        sc[K.SC_ON] = 1 if emit else 0
        sc[K.SC_DN] = 0
        sc[K.SC_DNB] = 0
        return books

    def _published(self, books: np.ndarray) -> Published:
        sc = self.S.sc
        if sc[K.SC_ACTIVE]:
            raise ValueError("records end inside an event (no F_LAST); use complete_events()")
        # Column by column, each contiguous: consumers serialise them as arrays.
        rows = np.ascontiguousarray(self.S.DL[: int(sc[K.SC_DN])].T)
        bbo = self.S.DB[: int(sc[K.SC_DNB])]
        return Published(
            rec=rows[0],
            book=rows[1],
            side=rows[2],
            price=rows[3],
            size=rows[4],
            count=rows[5],
            event=rows[6],
            bbo_rec=bbo[:, 0].copy(),
            bbo_book=books[bbo[:, 0]],
            bbo=bbo[:, 1:7].copy(),
            bbo_event=bbo[:, 7].copy(),
        )

    def abandon_open_events(self) -> None:
        """Forget the level changes of events left open by an apply that failed part-way, so
        the next apply of any book starts clean (an open event counted here made every later
        apply fail). The books keep what was applied; the caller marks them suspect."""
        S = self.S
        S.sc[K.SC_ACTIVE] = 0
        S.sc[K.SC_PN] = 0
        S.sc[K.SC_ON] = 0
        n = len(self.book_keys)
        S.B[:n, [K.B_PEND_HEAD, K.B_PEND_TAIL]] = -1
        S.B[:n, K.B_PEND_CLEAR] = 0
        # A level touched by the abandoned event carries that event's number, which the book's
        # next event reuses: left so, its change in that event would not be published.
        S.L[: S.sc[K.SC_L_HWM], 10] = -1

    def mark_suspect(self, book: int) -> None:
        """Until the book's next clear (R), as a sequence gap does."""
        self.S.B[book, K.B_SUSPECT] = 1
        self.S.B[book, K.B_DIRTY] = 1

    # -- reading --------------------------------------------------------------------------
    def levels(self, book: int, side: int, depth: int) -> list[tuple[int, int, int]]:
        depth = max(0, min(depth, self.level_count(book, side)))
        out = np.zeros((depth, 3), np.int64)
        n = K.top_levels(self.S, book, SIDE_INDEX[side], depth, out)
        return [tuple(row) for row in out[:n].tolist()]  # type: ignore[misc]

    def best(self, book: int, side: int) -> tuple[int, int, int] | None:
        top = self.levels(book, side, 1)
        return top[0] if top else None

    def queue_position(self, book: int, order_id: int) -> tuple[int, int] | None:
        ahead, size_ahead = K.queue_position(self.S, book, np.uint64(order_id).astype(np.int64))
        return None if ahead < 0 else (int(ahead), int(size_ahead))

    def order_count(self, book: int | None = None) -> int:
        if book is None:
            return int(self.S.sc[K.SC_O_LIVE])
        return int(self.S.B[book, K.B_ORDERS])

    def level_count(self, book: int, side: int) -> int:
        return int(self.S.B[book, K.B_NLEV + SIDE_INDEX[side]])

    def suspect(self, book: int) -> bool:
        return bool(self.S.B[book, K.B_SUSPECT])

    def last_sequence(self, book: int) -> int:
        return int(self.S.B[book, K.B_LAST_SEQ])

    def counters(self, book: int) -> dict[str, int]:
        row = self.S.B[book, K.B_CNT : K.B_CNT + K.N_COUNTERS].tolist()
        return dict(zip(COUNTER_NAMES, row, strict=True))

    def crossed(self, book: int) -> bool:
        b, a = self.best(book, BID), self.best(book, ASK)
        return b is not None and a is not None and b[0] >= a[0]

    def bbo(self, book: int) -> tuple[int, ...]:
        """The BBO last published (at the book's last F_LAST)."""
        return tuple(self.S.B[book, K.B_BBO : K.B_BBO + 6].tolist())


def _columns(records: np.ndarray) -> tuple[np.ndarray, ...]:
    """The record fields the apply kernels take, in their order."""
    return (
        records["action"],
        records["side"],
        records["price"],
        records["size"],
        records["order_id"].astype(np.int64),
        records["flags"],
        records["sequence"],
    )


def complete_events(records: np.ndarray) -> int:
    """How many leading records form complete events: every book's records up to the cut end
    with an F_LAST. The rest waits for the records that complete it."""
    n = len(records)
    if not n:
        return 0
    last = records["flags"] & F_LAST
    if last[-1]:
        pub, iid = records["publisher_id"], records["instrument_id"]
        if (pub == pub[0]).all() and (iid == iid[0]).all():
            return n
    packed = (records["publisher_id"].astype(np.uint64) << np.uint64(32)) | records[
        "instrument_id"
    ].astype(np.uint64)
    positions = [np.flatnonzero(packed == key) for key in np.unique(packed)]
    cut, moved = n, True
    while moved:  # a cut can open another book's event, so repeat until none is open
        moved = False
        for idx in positions:
            before = idx[idx < cut]
            if len(before) and not last[before[-1]]:
                closed = before[last[before] != 0]
                cut = int(closed[-1]) + 1 if len(closed) else 0
                moved = True
    return cut
