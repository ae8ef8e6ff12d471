"""Compiled (numba) kernels of the L3 book engine: the same semantics as the reference
`tables.order_book.OrderBook`, over flat arrays instead of Python objects.

Why arrays: a Python object per order costs about 190 bytes and a dict lookup per event; here an
order is 40 bytes (a row of `O64` and of `O32`) plus 8 bytes of open-addressing hash table, and
an event is a few array reads. `tables.book_engine.BookEngine` owns the arrays (`S`, a
namedtuple of a few 2-D arrays, described in its `_State`) and is the only caller.

Structure (slots are row numbers, -1 for none):
- orders: id, priority stamp; size, book, level, FIFO neighbours (prev/next), page. Free slots
  are chained through `next`, with book -1.
- levels: book, side (0 bid, 1 ask), price, size, aggregate size (F_TOB/F_MBP), order count,
  FIFO head/tail, neighbours in price order (better/worse). Each book side is a doubly linked
  list from best to worst: the touch is O(1), and a new level is placed by a walk from the best
  (new levels appear near the touch) unless it lies beyond the worst.
- two hash tables (linear probing, backward-shift deletion) map (book, order id) and
  (book, side, price) to slots; entries are slot + 1, 0 is empty.
- pages group a book's orders by arrival (PAGE_ORDERS adds per page): a checkpoint rewrites
  only pages that changed, and short-lived orders, which are most orders, churn only the newest.

Kernels that never allocate are compiled with `_nrt=False`: with numba's reference counting,
each array a helper touched cost an atomic increment and decrement per call, and the engine ran
about three times slower (2M instead of 6M events/s on the generated benchmark file).
"""

from __future__ import annotations

import numpy as np
from numba import njit

BID_CODE, ASK_CODE = 66, 65
A_CODE, C_CODE, M_CODE, R_CODE = 65, 67, 77, 82
F_LAST, F_TOB, F_MBP, F_MAYBE_BAD_BOOK = 128, 64, 16, 4
UNDEF_PRICE = np.int64((1 << 63) - 1)
PAGE_ORDERS = 1024

# scalars (S.sc) indices
(
    SC_O_FREE,
    SC_O_HWM,
    SC_L_FREE,
    SC_L_HWM,
    SC_PRIO,
    SC_P_FREE,
    SC_P_HWM,
    SC_O_LIVE,
    SC_L_LIVE,
    SC_ON,
    SC_PN,
    SC_ACTIVE,
    SC_DN,
    SC_DNB,
) = range(14)
# book columns (S.B)
B_BEST, B_WORST, B_NLEV = 0, 2, 4  # two columns each: bid, ask
(
    B_ORDERS,
    B_LAST_SEQ,
    B_SUSPECT,
    B_OPEN_PAGE,
    B_NEXT_PAGE,
    B_DIRTY,
    B_EVENT,
    B_PEND_HEAD,
    B_PEND_TAIL,
    B_PEND_CLEAR,
) = range(6, 16)
B_CNT = 16  # N_COUNTERS columns
B_BBO = 21  # six columns: bid px, sz, ct, ask px, sz, ct
B_COLUMNS = 27
# per-book counters (columns B_CNT + i)
CNT_UNKNOWN, CNT_DUP_ADD, CNT_GAPS, CNT_DUPLICATES, CNT_BAD = range(5)
N_COUNTERS = 5

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


@njit(inline="always", cache=True)
def _mix(x: np.uint64) -> np.uint64:
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


@njit(inline="always", cache=True)
def _order_hash(book: int, oid: np.int64) -> np.uint64:
    return _mix(np.uint64(oid) ^ (np.uint64(book) * _GOLD))


@njit(inline="always", cache=True)
def _level_hash(book: int, side: int, price: np.int64) -> np.uint64:
    return _mix(np.uint64(price) ^ (np.uint64(book * 2 + side + 1) * _GOLD))


# ---------------------------------------------------------------------------------- orders hash
# An entry is (32 bits of the key's hash) << 32 | (slot + 1): probing and backward-shift
# deletion compare and re-home entries without reading order rows, which at a million orders
# are cache misses.
_LOW32 = 0xFFFFFFFF


@njit(inline="always", cache=True, _nrt=False)
def _order_tag(book, oid):  # type: ignore[no-untyped-def]
    return np.int64(_order_hash(book, oid) & np.uint64(_LOW32))


@njit(cache=True, _nrt=False, inline="always")
def _ofind(S, book, oid):  # type: ignore[no-untyped-def]
    O64 = S.O64
    O32 = S.O32
    oh = S.oh
    mask = len(oh) - 1
    tag = _order_tag(book, oid)
    i = tag & mask
    while True:
        v = oh[i]
        if v == 0:
            return -1, i
        if (v >> 32) & _LOW32 == tag:
            s = (v & _LOW32) - 1
            if O64[s, 0] == oid and O32[s, 5] == book:
                return s, i
        i = (i + 1) & mask


@njit(cache=True, _nrt=False, inline="always")
def _odel_at(S, i):  # type: ignore[no-untyped-def]
    oh = S.oh
    mask = len(oh) - 1
    j = i
    while True:
        j = (j + 1) & mask
        v = oh[j]
        if v == 0:
            break
        k = (v >> 32) & mask
        # move the entry back to the hole unless its home lies cyclically in (i, j]
        if (i <= j and (k <= i or k > j)) or (i > j and k <= i and k > j):
            oh[i] = v
            i = j
    oh[i] = 0


# ---------------------------------------------------------------------------------- levels hash
@njit(cache=True, _nrt=False, inline="always")
def _lfind(S, book, side, price):  # type: ignore[no-untyped-def]
    L = S.L
    lh = S.lh
    mask = len(lh) - 1
    i = np.int64(_level_hash(book, side, price) & np.uint64(mask))
    while True:
        v = lh[i]
        if v == 0:
            return -1, i
        s = v - 1
        if L[s, 2] == price and L[s, 0] == book and L[s, 1] == side:
            return s, i
        i = (i + 1) & mask


@njit(cache=True, _nrt=False)
def _ldel(S, lv):  # type: ignore[no-untyped-def]
    L = S.L
    lh = S.lh
    _, i = _lfind_slot(S, lv)
    mask = len(lh) - 1
    j = i
    while True:
        j = (j + 1) & mask
        v = lh[j]
        if v == 0:
            break
        s = v - 1
        k = np.int64(_level_hash(L[s, 0], L[s, 1], L[s, 2]) & np.uint64(mask))
        if (i <= j and (k <= i or k > j)) or (i > j and k <= i and k > j):
            lh[i] = v
            i = j
    lh[i] = 0


@njit(cache=True, _nrt=False)
def _lfind_slot(S, lv):  # type: ignore[no-untyped-def]
    L = S.L
    lh = S.lh
    mask = len(lh) - 1
    i = np.int64(_level_hash(L[lv, 0], L[lv, 1], L[lv, 2]) & np.uint64(mask))
    while lh[i] != lv + 1:
        i = (i + 1) & mask
    return lv, i


# ------------------------------------------------------------------------------ pending (deltas)
@njit(cache=True, _nrt=False, inline="always")
def _touch(S, book, lv):  # type: ignore[no-untyped-def]
    """Remember a level's state before the current event first changes it."""
    sc = S.sc
    L = S.L
    B = S.B
    if not sc[SC_ON] or L[lv, 10] == B[book, B_EVENT]:
        return
    L[lv, 10] = B[book, B_EVENT]
    _pend(S, book, L[lv, 1], L[lv, 2], L[lv, 3], L[lv, 5])


@njit(cache=True, _nrt=False, inline="always")
def _pend(S, book, side, price, size0, count0):  # type: ignore[no-untyped-def]
    sc = S.sc
    B = S.B
    PD = S.PD
    if B[book, B_PEND_HEAD] < 0 and not B[book, B_PEND_CLEAR]:
        sc[SC_ACTIVE] += 1
    n = sc[SC_PN]
    PD[n, 0] = side
    PD[n, 1] = price
    PD[n, 2] = size0
    PD[n, 3] = count0
    PD[n, 4] = -1
    if B[book, B_PEND_TAIL] >= 0:
        PD[B[book, B_PEND_TAIL], 4] = n
    else:
        B[book, B_PEND_HEAD] = n
    B[book, B_PEND_TAIL] = n
    sc[SC_PN] = n + 1


# ---------------------------------------------------------------------------------- slots
# Free rows of orders, levels and pages are chained through one of their own columns.
@njit(inline="always", cache=True, _nrt=False)
def _take(sc, free, hwm, rows, link):  # type: ignore[no-untyped-def]
    slot = sc[free]
    if slot >= 0:
        sc[free] = rows[slot, link]
    else:
        slot = sc[hwm]
        sc[hwm] = slot + 1
    return slot


@njit(inline="always", cache=True, _nrt=False)
def _give_back(sc, free, rows, link, slot):  # type: ignore[no-untyped-def]
    rows[slot, link] = sc[free]
    sc[free] = slot


# ---------------------------------------------------------------------------------- levels
@njit(cache=True, _nrt=False)
def _new_level(S, book, side, price):  # type: ignore[no-untyped-def]
    sc = S.sc
    L = S.L
    lh = S.lh
    B = S.B
    lv = _take(sc, SC_L_FREE, SC_L_HWM, L, 8)
    sc[SC_L_LIVE] += 1
    L[lv, 0] = book
    L[lv, 1] = side
    L[lv, 2] = price
    L[lv, 3] = 0
    L[lv, 4] = 0
    L[lv, 5] = 0
    L[lv, 6] = -1
    L[lv, 7] = -1
    L[lv, 10] = -1
    _, i = _lfind(S, book, side, price)
    lh[i] = lv + 1
    # place it in price order: bids best = highest, asks best = lowest
    better_than = 1 if side == 0 else -1
    worst = B[book, B_WORST + side]
    if worst < 0:
        B[book, B_BEST + side] = lv
        B[book, B_WORST + side] = lv
        L[lv, 8] = -1
        L[lv, 9] = -1
    elif (L[worst, 2] - price) * better_than > 0:
        L[lv, 8] = worst
        L[lv, 9] = -1
        L[worst, 9] = lv
        B[book, B_WORST + side] = lv
    else:
        cur = B[book, B_BEST + side]
        while (L[cur, 2] - price) * better_than > 0:
            cur = L[cur, 9]
        prev = L[cur, 8]
        L[lv, 8] = prev
        L[lv, 9] = cur
        L[cur, 8] = lv
        if prev >= 0:
            L[prev, 9] = lv
        else:
            B[book, B_BEST + side] = lv
    B[book, B_NLEV + side] += 1
    if sc[SC_ON]:
        L[lv, 10] = B[book, B_EVENT]
        _pend(S, book, side, price, 0, 0)
    return lv


@njit(cache=True, _nrt=False)
def _free_level(S, lv):  # type: ignore[no-untyped-def]
    sc = S.sc
    L = S.L
    B = S.B
    book = L[lv, 0]
    side = L[lv, 1]
    _ldel(S, lv)
    prev = L[lv, 8]
    nxt = L[lv, 9]
    if prev >= 0:
        L[prev, 9] = nxt
    else:
        B[book, B_BEST + side] = nxt
    if nxt >= 0:
        L[nxt, 8] = prev
    else:
        B[book, B_WORST + side] = prev
    B[book, B_NLEV + side] -= 1
    L[lv, 0] = -1
    _give_back(sc, SC_L_FREE, L, 8, lv)
    sc[SC_L_LIVE] -= 1


@njit(cache=True, _nrt=False, inline="always")
def _level_for(S, book, side, price):  # type: ignore[no-untyped-def]
    lv, _ = _lfind(S, book, side, price)
    if lv < 0:
        lv = _new_level(S, book, side, price)
    else:
        _touch(S, book, lv)
    return lv


@njit(cache=True, _nrt=False, inline="always")
def _drop_if_empty(S, lv):  # type: ignore[no-untyped-def]
    L = S.L
    if L[lv, 5] == 0 and L[lv, 4] == 0:
        _free_level(S, lv)


# ---------------------------------------------------------------------------------- orders
@njit(cache=True, _nrt=False, inline="always")
def _mark_page(S, pg):  # type: ignore[no-untyped-def]
    PG = S.PG
    B = S.B
    PG[pg, 5] = 1
    B[PG[pg, 0], B_DIRTY] = 1


@njit(cache=True, _nrt=False)
def _new_page(S, book):  # type: ignore[no-untyped-def]
    sc = S.sc
    PG = S.PG
    B = S.B
    pg = _take(sc, SC_P_FREE, SC_P_HWM, PG, 1)
    PG[pg, 0] = book
    PG[pg, 1] = B[book, B_NEXT_PAGE]
    B[book, B_NEXT_PAGE] += 1
    PG[pg, 2] = 0
    PG[pg, 3] = 0
    PG[pg, 4] = 0
    PG[pg, 5] = 1
    return pg


@njit(cache=True, _nrt=False, inline="always")
def _link_order(S, lv, s, size):  # type: ignore[no-untyped-def]
    sc = S.sc
    O64 = S.O64
    O32 = S.O32
    L = S.L
    O32[s, 6] = lv
    O32[s, 4] = size
    O32[s, 7] = -1
    tail = L[lv, 7]
    O32[s, 8] = tail
    if tail >= 0:
        O32[tail, 7] = s
    else:
        L[lv, 6] = s
    L[lv, 7] = s
    L[lv, 3] += size
    L[lv, 5] += 1
    sc[SC_PRIO] += 1
    O64[s, 1] = sc[SC_PRIO]


@njit(cache=True, _nrt=False, inline="always")
def _unlink_order(S, s):  # type: ignore[no-untyped-def]
    O32 = S.O32
    L = S.L
    lv = O32[s, 6]
    prev = O32[s, 8]
    nxt = O32[s, 7]
    if prev >= 0:
        O32[prev, 7] = nxt
    else:
        L[lv, 6] = nxt
    if nxt >= 0:
        O32[nxt, 8] = prev
    else:
        L[lv, 7] = prev
    L[lv, 3] -= O32[s, 4]
    L[lv, 5] -= 1
    return lv


@njit(cache=True, _nrt=False, inline="always")
def _insert(S, book, oid, side, price, size, hslot, page):  # type: ignore[no-untyped-def]
    sc = S.sc
    O64 = S.O64
    O32 = S.O32
    oh = S.oh
    PG = S.PG
    B = S.B
    s = _take(sc, SC_O_FREE, SC_O_HWM, O32, 7)
    sc[SC_O_LIVE] += 1
    O64[s, 0] = oid
    O32[s, 5] = book
    oh[hslot] = (_order_tag(book, oid) << 32) | (s + 1)
    if page < 0:
        page = B[book, B_OPEN_PAGE]
        if page < 0 or PG[page, 3] >= PAGE_ORDERS:
            page = _new_page(S, book)
            B[book, B_OPEN_PAGE] = page
        PG[page, 3] += 1
    O32[s, 9] = page
    PG[page, 2] += 1
    _mark_page(S, page)
    B[book, B_ORDERS] += 1
    lv = _level_for(S, book, side, price)
    _link_order(S, lv, s, size)
    return s


@njit(cache=True, _nrt=False, inline="always")
def _remove(S, s, hslot):  # type: ignore[no-untyped-def]
    O32 = S.O32
    book = O32[s, 5]
    lv = O32[s, 6]
    _touch(S, book, lv)
    _unlink_order(S, s)
    _drop_if_empty(S, lv)
    _free_order(S, s, hslot)


@njit(cache=True, _nrt=False, inline="always")
def _free_order(S, s, hslot):  # type: ignore[no-untyped-def]
    """Release an order's slot, hash entry and page place (its level is the caller's)."""
    sc = S.sc
    O32 = S.O32
    PG = S.PG
    B = S.B
    _odel_at(S, hslot)
    page = O32[s, 9]
    PG[page, 2] -= 1
    _mark_page(S, page)
    B[O32[s, 5], B_ORDERS] -= 1
    O32[s, 5] = -1
    _give_back(sc, SC_O_FREE, O32, 7, s)
    sc[SC_O_LIVE] -= 1


@njit(cache=True, _nrt=False)
def _clear_side(S, book, side):  # type: ignore[no-untyped-def]
    O64 = S.O64
    O32 = S.O32
    L = S.L
    B = S.B
    lv = B[book, B_BEST + side]
    while lv >= 0:
        _touch(S, book, lv)
        nxt_lv = L[lv, 9]
        s = L[lv, 6]
        while s >= 0:
            nxt = O32[s, 7]
            _, h = _ofind(S, book, O64[s, 0])
            _free_order(S, s, h)
            s = nxt
        L[lv, 5] = 0
        L[lv, 4] = 0
        _free_level(S, lv)
        lv = nxt_lv


@njit(cache=True, _nrt=False, inline="always")
def _side_index(side):  # type: ignore[no-untyped-def]
    if side == BID_CODE:
        return 0
    if side == ASK_CODE:
        return 1
    return -1


@njit(cache=True, _nrt=False)
def _set_aggregate(S, book, si, price, size):  # type: ignore[no-untyped-def]
    L = S.L
    B = S.B
    lv, _ = _lfind(S, book, si, price)
    if lv < 0:
        if size <= 0:
            return
        lv = _new_level(S, book, si, price)
    else:
        _touch(S, book, lv)
    L[lv, 3] += size - L[lv, 4]
    L[lv, 4] = size
    B[book, B_DIRTY] = 1
    _drop_if_empty(S, lv)


@njit(cache=True, _nrt=False, inline="always")
def _add(S, book, oid, side, price, size):  # type: ignore[no-untyped-def]
    B = S.B
    si = _side_index(side)
    if si < 0 or size <= 0 or price == UNDEF_PRICE:
        B[book, B_CNT + CNT_BAD] += 1
        return
    s, h = _ofind(S, book, oid)
    if s >= 0:
        B[book, B_CNT + CNT_DUP_ADD] += 1
        _remove(S, s, h)
        s, h = _ofind(S, book, oid)
    _insert(S, book, oid, si, price, size, h, -1)


@njit(cache=True, _nrt=False, inline="always")
def _cancel(S, book, oid, size):  # type: ignore[no-untyped-def]
    O32 = S.O32
    L = S.L
    B = S.B
    s, h = _ofind(S, book, oid)
    if s < 0:
        B[book, B_CNT + CNT_UNKNOWN] += 1
        return
    if O32[s, 4] <= size:
        _remove(S, s, h)
    else:
        lv = O32[s, 6]
        _touch(S, book, lv)
        O32[s, 4] -= size
        L[lv, 3] -= size
        _mark_page(S, O32[s, 9])


@njit(cache=True, _nrt=False, inline="always")
def _modify(S, book, oid, side, price, size):  # type: ignore[no-untyped-def]
    O32 = S.O32
    L = S.L
    B = S.B
    s, h = _ofind(S, book, oid)
    if s < 0:
        B[book, B_CNT + CNT_UNKNOWN] += 1
        _add(S, book, oid, side, price, size)
        return
    si = _side_index(side)
    if si < 0 or price == UNDEF_PRICE:
        B[book, B_CNT + CNT_BAD] += 1
        return
    if size <= 0:
        _remove(S, s, h)
        return
    lv = O32[s, 6]
    _mark_page(S, O32[s, 9])
    if price != L[lv, 2] or si != L[lv, 1] or size > O32[s, 4]:
        # loses priority: to the back of its (new) level; the order keeps its page
        _touch(S, book, lv)
        _unlink_order(S, s)
        _drop_if_empty(S, lv)
        nlv = _level_for(S, book, si, price)
        _link_order(S, nlv, s, size)
    else:
        _touch(S, book, lv)
        L[lv, 3] -= O32[s, 4] - size
        O32[s, 4] = size


@njit(cache=True, _nrt=False)
def _clear_book(S, book):  # type: ignore[no-untyped-def]
    sc = S.sc
    B = S.B
    _clear_side(S, book, 0)
    _clear_side(S, book, 1)
    B[book, B_SUSPECT] = 0
    B[book, B_DIRTY] = 1
    if sc[SC_ON]:
        # a clear supersedes the level changes before it in the event
        if B[book, B_PEND_HEAD] < 0 and not B[book, B_PEND_CLEAR]:
            sc[SC_ACTIVE] += 1
        B[book, B_PEND_HEAD] = -1
        B[book, B_PEND_TAIL] = -1
        B[book, B_PEND_CLEAR] = 1


# ---------------------------------------------------------------------------------- events
@njit(cache=True, _nrt=False)
def _flush_event(S, book, rec):  # type: ignore[no-untyped-def]
    """At F_LAST: emit the event's level changes (final state of each touched level) and the
    BBO if it changed."""
    sc = S.sc
    L = S.L
    B = S.B
    PD = S.PD
    DL = S.DL
    DB = S.DB
    n = sc[SC_DN]
    if B[book, B_PEND_CLEAR]:
        DL[n, 0] = rec
        DL[n, 1] = book
        DL[n, 2] = R_CODE
        DL[n, 3] = 0
        DL[n, 4] = 0
        DL[n, 5] = 0
        DL[n, 6] = B[book, B_EVENT]
        n += 1
    stamp = -2 - B[book, B_EVENT]  # marks a level as emitted in this flush
    k = B[book, B_PEND_HEAD]
    while k >= 0:
        side = PD[k, 0]
        price = PD[k, 1]
        lv, _ = _lfind(S, book, side, price)
        size = 0
        count = 0
        emit = True
        if lv >= 0:
            if L[lv, 10] == stamp:
                emit = False
            L[lv, 10] = stamp
            size = L[lv, 3]
            count = L[lv, 5]
        if B[book, B_PEND_CLEAR]:  # after a clear row, every level that exists is news
            emit = emit and (size != 0 or count != 0)
        else:
            emit = emit and (size != PD[k, 2] or count != PD[k, 3])
        if emit:
            DL[n, 0] = rec
            DL[n, 1] = book
            DL[n, 2] = BID_CODE if side == 0 else ASK_CODE
            DL[n, 3] = price
            DL[n, 4] = size
            DL[n, 5] = count
            DL[n, 6] = B[book, B_EVENT]
            n += 1
        k = PD[k, 4]
    sc[SC_DN] = n
    if B[book, B_PEND_HEAD] >= 0 or B[book, B_PEND_CLEAR]:
        sc[SC_ACTIVE] -= 1
        if sc[SC_ACTIVE] == 0:
            sc[SC_PN] = 0  # no event is open: the scratch space is free again
    B[book, B_PEND_HEAD] = -1
    B[book, B_PEND_TAIL] = -1
    B[book, B_PEND_CLEAR] = 0
    B[book, B_EVENT] += 1
    # BBO
    changed = False
    for si in range(2):
        lv = B[book, B_BEST + si]
        px = UNDEF_PRICE
        sz = np.int64(0)
        ct = np.int64(0)
        if lv >= 0:
            px = L[lv, 2]
            sz = L[lv, 3]
            ct = L[lv, 5]
        if (
            B[book, B_BBO + 3 * si] != px
            or B[book, B_BBO + 3 * si + 1] != sz
            or B[book, B_BBO + 3 * si + 2] != ct
        ):
            changed = True
        B[book, B_BBO + 3 * si] = px
        B[book, B_BBO + 3 * si + 1] = sz
        B[book, B_BBO + 3 * si + 2] = ct
    if changed:
        m = sc[SC_DNB]
        DB[m, 0] = rec
        DB[m, 7] = B[book, B_EVENT] - 1
        for c in range(6):
            DB[m, 1 + c] = B[book, B_BBO + c]
        sc[SC_DNB] = m + 1


@njit(cache=True, _nrt=False)
def apply_records(S, books, action, side, price, size, order_id, flags, sequence):  # type: ignore[no-untyped-def]
    """Apply records in order. Capacity for every record's worst case (one new order, one new
    level, one new page, two deltas) must have been reserved by the caller."""
    sc = S.sc
    B = S.B
    for i in range(len(action)):
        book = books[i]
        seq = np.int64(sequence[i])
        if seq != 0:
            last = B[book, B_LAST_SEQ]
            if last != 0 and seq > last + 1:
                B[book, B_CNT + CNT_GAPS] += 1
                B[book, B_SUSPECT] = 1
            elif last != 0 and seq < last:
                B[book, B_CNT + CNT_DUPLICATES] += 1
            if seq > last:
                B[book, B_LAST_SEQ] = seq
            B[book, B_DIRTY] = 1
        fl = flags[i]
        if fl & F_MAYBE_BAD_BOOK:
            B[book, B_SUSPECT] = 1
        act = action[i]
        if act == R_CODE:
            _clear_book(S, book)
        elif act in (A_CODE, C_CODE, M_CODE):
            oid = order_id[i]
            px = price[i]
            sz = np.int64(size[i])
            if fl & (F_TOB | F_MBP):
                si = _side_index(side[i])
                if si < 0:
                    B[book, B_CNT + CNT_BAD] += 1
                elif fl & F_TOB:
                    _clear_side(S, book, si)
                    if act != C_CODE and px != UNDEF_PRICE and sz > 0:
                        _set_aggregate(S, book, si, px, sz)
                    B[book, B_DIRTY] = 1
                else:
                    _set_aggregate(S, book, si, px, 0 if act == C_CODE else sz)
            elif act == A_CODE:
                _add(S, book, oid, side[i], px, sz)
            elif act == C_CODE:
                _cancel(S, book, oid, sz)
            else:
                _modify(S, book, oid, side[i], px, sz)
        if fl & F_LAST:
            if sc[SC_ON]:
                _flush_event(S, book, i)
            else:
                B[book, B_EVENT] += 1  # events are numbered whether or not they publish
    return 0


@njit(cache=True)
def apply_with_tops(  # type: ignore[no-untyped-def]
    S, books, action, side, price, size, order_id, flags, sequence, cuts, snap_books, out, counts
):
    """`apply_records`, stopping before each record index in `cuts` (ascending, at event
    boundaries) to copy the top levels of each of `snap_books` into out[k, j, side] (how many
    into counts[k, j, side]). Published rows keep record indices of the whole input."""
    sc = S.sc
    depth = out.shape[3]
    start = 0
    for k in range(len(cuts) + 1):
        stop = cuts[k] if k < len(cuts) else len(action)
        if stop > start:
            dn0 = sc[SC_DN]
            dnb0 = sc[SC_DNB]
            apply_records(
                S,
                books[start:stop],
                action[start:stop],
                side[start:stop],
                price[start:stop],
                size[start:stop],
                order_id[start:stop],
                flags[start:stop],
                sequence[start:stop],
            )
            for r in range(dn0, sc[SC_DN]):
                S.DL[r, 0] += start
            for r in range(dnb0, sc[SC_DNB]):
                S.DB[r, 0] += start
        if k < len(cuts):
            for j in range(len(snap_books)):
                for sd in range(2):
                    counts[k, j, sd] = top_levels(S, snap_books[j], sd, depth, out[k, j, sd])
        start = stop
    return 0


# ---------------------------------------------------------------------------------- reads
@njit(cache=True, _nrt=False)
def top_levels(S, book, side, depth, out):  # type: ignore[no-untyped-def]
    L = S.L
    B = S.B
    lv = B[book, B_BEST + side]
    n = 0
    while lv >= 0 and n < depth:
        out[n, 0] = L[lv, 2]
        out[n, 1] = L[lv, 3]
        out[n, 2] = L[lv, 5]
        n += 1
        lv = L[lv, 9]
    return n


@njit(cache=True, _nrt=False)
def queue_position(S, book, oid):  # type: ignore[no-untyped-def]
    O32 = S.O32
    L = S.L
    s, _ = _ofind(S, book, np.int64(oid))
    if s < 0:
        return -1, 0
    ahead = 0
    size_ahead = 0
    cur = L[O32[s, 6], 6]
    while cur != s:
        ahead += 1
        size_ahead += O32[cur, 4]
        cur = O32[cur, 7]
    return ahead, size_ahead


@njit(cache=True, _nrt=False)
def rehash(S):  # type: ignore[no-untyped-def]
    """Rebuild both hash tables (after they were resized)."""
    sc = S.sc
    O64 = S.O64
    O32 = S.O32
    oh = S.oh
    L = S.L
    lh = S.lh
    oh[:] = 0
    lh[:] = 0
    omask = len(oh) - 1
    for s in range(sc[SC_O_HWM]):
        if O32[s, 5] >= 0:
            tag = _order_tag(O32[s, 5], O64[s, 0])
            i = tag & omask
            while oh[i] != 0:
                i = (i + 1) & omask
            oh[i] = (tag << 32) | (s + 1)
    lmask = len(lh) - 1
    for lv in range(sc[SC_L_HWM]):
        if L[lv, 0] >= 0:
            i = np.int64(_level_hash(L[lv, 0], L[lv, 1], L[lv, 2]) & np.uint64(lmask))
            while lh[i] != 0:
                i = (i + 1) & lmask
            lh[i] = lv + 1


# ---------------------------------------------------------------------------------- checkpoints
@njit(cache=True)
def export_dirty(S, out_page, out_id, out_price, out_size, out_side, out_prio):  # type: ignore[no-untyped-def]
    """Orders of every dirty page, grouped by page (counting sort). Returns the number of
    orders written; out_page[k] is the page of row k. The caller sized the outputs to the
    live order count."""
    sc = S.sc
    O64 = S.O64
    O32 = S.O32
    L = S.L
    PG = S.PG
    npages = sc[SC_P_HWM]
    start = np.zeros(npages + 1, np.int64)
    for pg in range(npages):
        if PG[pg, 0] >= 0 and PG[pg, 5]:
            start[pg + 1] = PG[pg, 2]
    for pg in range(npages):
        start[pg + 1] += start[pg]
    fill = start[:-1].copy()
    for s in range(sc[SC_O_HWM]):
        if O32[s, 5] < 0:
            continue
        pg = O32[s, 9]
        if not PG[pg, 5]:
            continue
        k = fill[pg]
        fill[pg] = k + 1
        lv = O32[s, 6]
        out_page[k] = pg
        out_id[k] = O64[s, 0]
        out_price[k] = L[lv, 2]
        out_size[k] = O32[s, 4]
        out_side[k] = L[lv, 1]
        out_prio[k] = O64[s, 1]
    return start[npages]


@njit(cache=True)
def load_orders(S, book, page_no, ids, prices, sizes, sides, prios):  # type: ignore[no-untyped-def]
    """Insert restored orders in priority order (the caller sorted them by prio); page_no[k]
    is the checkpoint page each order came from."""
    O64 = S.O64
    PG = S.PG
    B = S.B
    pages = {np.int64(0): np.int64(0)}
    pages.clear()
    for k in range(len(ids)):
        pno = np.int64(page_no[k])
        if pno in pages:
            pg = pages[pno]
        else:
            pg = _new_page(S, book)
            B[book, B_NEXT_PAGE] -= 1
            PG[pg, 1] = pno
            PG[pg, 5] = 0
            PG[pg, 3] = PAGE_ORDERS
            pages[pno] = pg
        s, h = _ofind(S, book, ids[k])
        s = _insert(S, book, ids[k], np.int64(sides[k]), prices[k], np.int64(sizes[k]), h, pg)
        O64[s, 1] = prios[k]
        PG[pg, 5] = 0
    return len(pages)


@njit(cache=True, _nrt=False)
def set_aggregate(S, book, si, price, size):  # type: ignore[no-untyped-def]
    """Restore an F_TOB/F_MBP aggregate level from a checkpoint."""
    _set_aggregate(S, book, si, price, size)


@njit(cache=True, _nrt=False)
def evict_book(S, book):  # type: ignore[no-untyped-def]
    """Drop a book from memory (its partition moved elsewhere)."""
    sc = S.sc
    PG = S.PG
    # Dropping levels is no event of the book's: with publishing left on from the last
    # apply, each dropped level was recorded as a pending change, past the end of the
    # scratch rows sized for that apply (a heap overwrite), and the open-event count they
    # raised made every later apply fail.
    sc[SC_ON] = 0
    _clear_side(S, book, 0)
    _clear_side(S, book, 1)
    for pg in range(sc[SC_P_HWM]):
        if PG[pg, 0] == book:
            free_page(S, pg)


@njit(cache=True, _nrt=False)
def free_page(S, pg):  # type: ignore[no-untyped-def]
    sc = S.sc
    PG = S.PG
    B = S.B
    book = PG[pg, 0]
    if B[book, B_OPEN_PAGE] == pg:
        B[book, B_OPEN_PAGE] = -1
    PG[pg, 0] = -1
    PG[pg, 5] = 0
    _give_back(sc, SC_P_FREE, PG, 1, pg)
