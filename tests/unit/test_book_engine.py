"""The compiled book engine against the reference book: record for record on random streams
(Hypothesis), on the generator's ground truth, and on real exchange data; and what it publishes
at F_LAST, applied as an L2 feed, reproduces its own levels."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.feeds.mbo_files import open_mbo, read_all
from load_tests.gen_mbo import truth_path
from models.mbo import (
    F_LAST,
    F_MAYBE_BAD_BOOK,
    F_MBP,
    F_SNAPSHOT,
    F_TOB,
    UNDEF_PRICE,
    empty_records,
)
from tables.book_engine import BookEngine, Published, complete_events
from tables.order_book import ASK, BID, OrderBook
from tests.conftest import ARL_MBO_CSV, ESM4_MBO, SHARED_DATA, require

A, C, M, R, T, F, N = (ord(x) for x in "ACMRTFN")
LOBSTER_MESSAGES = SHARED_DATA / "lobster" / "AAPL_2012-06-21_34200000_57600000_message_10.csv"
DEEP = 1 << 30


def _records(rows: list[tuple[int, ...]]) -> np.ndarray:
    """rows: (publisher, instrument, action, side, price, size, order_id, flags, sequence)"""
    out = empty_records(len(rows))
    for i, (pub, iid, act, side, px, sz, oid, fl, seq) in enumerate(rows):
        out[i]["publisher_id"] = pub
        out[i]["instrument_id"] = iid
        out[i]["action"] = act
        out[i]["side"] = side
        out[i]["price"] = px
        out[i]["size"] = sz
        out[i]["order_id"] = oid
        out[i]["flags"] = fl
        out[i]["sequence"] = seq
    return out


def _reference(records: np.ndarray, books: dict[tuple[int, int], OrderBook]) -> None:
    for rec in records.tolist():
        (_, _, pub, iid, _, oid, px, sz, fl, _, act, side, _, _, seq) = rec
        b = books.get((pub, iid))
        if b is None:
            b = books[(pub, iid)] = OrderBook(pub, iid)
        b.apply(act, side, px, sz, oid, fl, seq)


def _assert_same(engine: BookEngine, books: dict[tuple[int, int], OrderBook]) -> None:
    for key, ref in books.items():
        b = engine.find(*key)
        assert b is not None, key
        for side in (BID, ASK):
            assert engine.levels(b, side, DEEP) == ref.levels(side, DEEP), (key, side)
        assert engine.order_count(b) == len(ref.orders)
        assert engine.counters(b) == asdict(ref.counters)
        assert engine.suspect(b) == ref.suspect
        assert engine.last_sequence(b) == ref.last_sequence
        for oid in list(ref.orders)[:50]:
            assert engine.queue_position(b, oid) == ref.queue_position(oid)


_action = st.sampled_from([A, A, A, C, C, M, M, R, T, F, N])
_side = st.sampled_from([BID, BID, ASK, ASK, N])
_row = st.tuples(
    st.sampled_from([1, 2]),  # publisher
    st.sampled_from([10, 11]),  # instrument
    _action,
    _side,
    st.one_of(st.integers(95, 105), st.just(UNDEF_PRICE)),
    st.integers(0, 12),
    st.integers(1, 25),  # few ids: duplicates, unknowns and re-adds happen often
    st.sampled_from(
        [0, F_LAST, F_LAST, F_LAST, F_MAYBE_BAD_BOOK, F_TOB | F_LAST, F_MBP, F_SNAPSHOT]
    ),
    st.integers(0, 40),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_row, min_size=1, max_size=40), min_size=1, max_size=6))
def test_engine_equals_reference_on_random_streams(chunks: list[list[tuple[int, ...]]]) -> None:
    engine = BookEngine(orders=4, levels=4, books=1)  # tiny: every growth path runs
    books: dict[tuple[int, int], OrderBook] = {}
    for rows in chunks:
        recs = _records(rows)
        engine.apply(recs)
        _reference(recs, books)
        _assert_same(engine, books)


def _apply_published(l2: dict, engine: BookEngine, pub: Published) -> None:
    for book, side, price, size, count in zip(
        pub.book.tolist(),
        pub.side.tolist(),
        pub.price.tolist(),
        pub.size.tolist(),
        pub.count.tolist(),
        strict=True,
    ):
        levels = l2.setdefault(book, {BID: {}, ASK: {}})
        if side == R:
            levels[BID].clear()
            levels[ASK].clear()
        elif size == 0 and count == 0:
            levels[side].pop(price, None)
        else:
            levels[side][price] = (size, count)


def _l2_of(engine: BookEngine, b: int) -> dict[int, dict[int, tuple[int, int]]]:
    return {s: {p: (sz, ct) for p, sz, ct in engine.levels(b, s, DEEP)} for s in (BID, ASK)}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_row, min_size=1, max_size=40), min_size=1, max_size=6))
def test_published_level_changes_reproduce_the_book(chunks: list[list[tuple[int, ...]]]) -> None:
    engine = BookEngine(orders=4, levels=4, books=1)
    l2: dict = {}
    held = _records([])
    for rows in chunks:
        recs = np.concatenate([held, _records(rows)])
        cut = complete_events(recs)
        held = recs[cut:]  # an open event waits for its F_LAST, as the books agent does
        pub = engine.apply(recs[:cut], emit=True)
        if pub is None:
            continue
        assert all(recs["flags"][pub.rec] & F_LAST)  # published only at F_LAST
        _apply_published(l2, engine, pub)
        for b in range(len(engine.book_keys)):
            assert l2.get(b, {BID: {}, ASK: {}}) == _l2_of(engine, b)
            best = engine.best(b, BID)
            assert engine.bbo(b)[:3] == (best if best else (UNDEF_PRICE, 0, 0))


def test_published_rows_are_the_events_final_state() -> None:
    engine = BookEngine()
    rows = [
        (1, 5, A, BID, 100, 10, 1, 0, 1),
        (1, 5, A, BID, 100, 5, 2, F_LAST, 1),
        (1, 5, C, BID, 100, 10, 1, 0, 2),  # a trade's C records: one level change, not three
        (1, 5, C, BID, 100, 2, 2, 0, 2),
        (1, 5, A, ASK, 101, 1, 3, 0, 2),
        (1, 5, C, ASK, 101, 1, 3, F_LAST, 2),  # added and gone within the event: no row
    ]
    pub = engine.apply(_records(rows), emit=True)
    assert pub is not None
    got = list(
        zip(
            pub.rec.tolist(),
            pub.side.tolist(),
            pub.price.tolist(),
            pub.size.tolist(),
            pub.count.tolist(),
            strict=True,
        )
    )
    assert got == [(1, BID, 100, 15, 2), (5, BID, 100, 3, 1)]
    assert pub.bbo_rec.tolist() == [1, 5]
    assert pub.bbo[1].tolist() == [100, 3, 1, UNDEF_PRICE, 0, 0]


def test_snapshot_publishes_a_clear_then_the_new_levels() -> None:
    engine = BookEngine()
    engine.apply(_records([(1, 5, A, BID, 99, 1, 1, F_LAST, 1)]))
    rows = [
        (1, 5, R, N, UNDEF_PRICE, 0, 0, F_SNAPSHOT, 0),
        (1, 5, A, BID, 100, 4, 7, F_SNAPSHOT, 0),
        (1, 5, A, ASK, 102, 2, 8, F_SNAPSHOT | F_LAST, 0),
    ]
    pub = engine.apply(_records(rows), emit=True)
    assert pub is not None
    assert [chr(s) for s in pub.side.tolist()] == ["R", "B", "A"]
    assert pub.price.tolist()[1:] == [100, 102]


def test_top_of_book_records_replace_their_side() -> None:
    engine = BookEngine()
    engine.apply(
        _records(
            [
                (2, 9, A, BID, 100, 5, 0, F_TOB | F_LAST, 1),
                (2, 9, A, BID, 101, 7, 0, F_TOB | F_LAST, 2),
                (2, 9, A, ASK, 103, 1, 0, F_MBP | F_LAST, 3),
                (2, 9, A, ASK, 104, 2, 0, F_MBP | F_LAST, 4),
                (2, 9, C, ASK, 103, 0, 0, F_MBP | F_LAST, 5),
            ]
        )
    )
    b = engine.find(2, 9)
    assert b is not None
    assert engine.levels(b, BID, 5) == [(101, 7, 0)]  # not orders: count 0
    assert engine.levels(b, ASK, 5) == [(104, 2, 0)]
    engine.apply(_records([(2, 9, A, BID, UNDEF_PRICE, 0, 0, F_TOB | F_LAST, 6)]))
    assert engine.levels(b, BID, 5) == []


def test_complete_events_holds_back_an_open_event() -> None:
    rows = [
        (1, 5, A, BID, 100, 1, 1, F_LAST, 1),
        (1, 5, A, BID, 100, 1, 2, 0, 2),
        (2, 5, A, BID, 100, 1, 3, F_LAST, 1),
    ]
    assert complete_events(_records(rows)) == 1
    assert complete_events(_records(rows[:1])) == 1
    assert complete_events(_records(rows[1:2])) == 0


def test_generated_file_matches_ground_truth(small_generated: Path) -> None:
    engine = BookEngine()
    for chunk in open_mbo(small_generated).chunks():
        engine.apply(chunk)
    truth = orjson.loads(truth_path(small_generated).read_bytes())
    for iid, t in truth["instruments"].items():
        b = next(i for i, k in enumerate(engine.book_keys) if k[1] == int(iid))
        assert [list(x) for x in engine.levels(b, BID, DEEP)] == t["bids"]
        assert [list(x) for x in engine.levels(b, ASK, DEEP)] == t["asks"]
        assert engine.order_count(b) == t["orders"]


@pytest.mark.parametrize(
    "path", [ESM4_MBO, ARL_MBO_CSV, LOBSTER_MESSAGES], ids=["cme-esm4", "arl-itch", "lobster"]
)
def test_real_data_equals_reference(path: Path) -> None:
    records = read_all(require(path))
    engine = BookEngine()
    books: dict[tuple[int, int], OrderBook] = {}
    for start in range(0, len(records), 7_919):  # chunk edges land mid-event
        chunk = records[start : start + 7_919]
        engine.apply(chunk)
        _reference(chunk, books)
    _assert_same(engine, books)


def test_cme_book_never_crosses_after_the_snapshot() -> None:
    records = read_all(require(ESM4_MBO))
    engine = BookEngine()
    last = np.flatnonzero(records["flags"] & F_LAST)
    start = 0
    checked = 0
    for end in last.tolist():
        engine.apply(records[start : end + 1])
        start = end + 1
        b = engine.find(int(records["publisher_id"][end]), int(records["instrument_id"][end]))
        assert b is not None
        assert not engine.crossed(b)
        assert engine.counters(b)["unknown_orders"] == 0
        checked += 1
    assert checked == len(last) > 100
