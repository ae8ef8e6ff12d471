"""The reference L3 book: Databento MBO semantics, checked on real exchange data and against
the generator's ground truth."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.commands.mbp import write_mbp
from app.feeds.mbo_files import parse_price, read_all
from load_tests.gen_mbo import GenConfig, truth_path, write
from models.mbo import F_LAST, F_MAYBE_BAD_BOOK, F_SNAPSHOT
from tables.order_book import ASK, BID, OrderBook
from tests.conftest import ARL_MBO_CSV, ARL_MBP10_CSV, ESM4_MBO, require

A, C, M, R, T, F = (ord(x) for x in "ACMRTF")


def _book(*records: tuple[int, int, int, int, int]) -> OrderBook:
    b = OrderBook()
    for action, side, price, size, oid in records:
        b.apply(action, side, price, size, oid, F_LAST)
    return b


def test_partial_cancel_subtracts_and_full_cancel_removes() -> None:
    b = _book((A, BID, 100, 10, 1), (A, BID, 100, 5, 2), (C, BID, 100, 4, 1))
    assert b.levels(BID, 5) == [(100, 11, 2)]
    b.apply(C, BID, 100, 6, 1, F_LAST)
    assert b.levels(BID, 5) == [(100, 5, 1)]
    assert 1 not in b.orders


def test_modify_priority_rules() -> None:
    b = _book((A, ASK, 200, 10, 1), (A, ASK, 200, 10, 2), (A, ASK, 200, 10, 3))
    b.apply(M, ASK, 200, 4, 1, F_LAST)  # size down: keeps its place
    assert b.queue_position(1) == (0, 0)
    b.apply(M, ASK, 200, 12, 2, F_LAST)  # size up: to the back
    assert b.queue_position(2) == (2, 14)
    b.apply(M, ASK, 201, 12, 3, F_LAST)  # price change: new level
    assert b.levels(ASK, 5) == [(200, 16, 2), (201, 12, 1)]


def test_trades_and_fills_change_nothing() -> None:
    b = _book((A, BID, 100, 10, 1))
    assert b.apply(T, ASK, 100, 3, 0, 0) is None
    assert b.apply(F, BID, 100, 3, 1, 0) is None
    assert b.levels(BID, 1) == [(100, 10, 1)]
    b.apply(C, BID, 100, 3, 1, F_LAST)  # the execution's book change arrives as a C
    assert b.levels(BID, 1) == [(100, 7, 1)]


def test_unknown_orders_are_counted_not_fatal() -> None:
    b = OrderBook()
    assert b.apply(C, BID, 100, 3, 99, F_LAST) is None
    assert b.counters.unknown_orders == 1
    b.apply(M, ASK, 101, 5, 98, F_LAST)  # a modify of an unseen order: the venue says it rests
    assert b.counters.unknown_orders == 2 and b.levels(ASK, 1) == [(101, 5, 1)]


def test_gaps_and_maybe_bad_book_mark_suspect_until_r() -> None:
    b = OrderBook()
    b.apply(A, BID, 100, 1, 1, F_LAST, sequence=10)
    b.apply(A, BID, 100, 1, 2, F_LAST, sequence=12)
    assert b.suspect and b.counters.gaps == 1
    b.apply(R, ord("N"), 0, 0, 0, F_SNAPSHOT, sequence=13)
    assert not b.suspect and not b.orders
    b.apply(A, BID, 100, 1, 3, F_LAST | F_MAYBE_BAD_BOOK, sequence=14)
    assert b.suspect
    b.apply(A, BID, 100, 1, 4, F_LAST, sequence=14)
    b.apply(A, BID, 100, 1, 5, F_LAST, sequence=13)
    assert b.counters.duplicates == 1


def _replay(path: Path) -> tuple[dict[int, OrderBook], int]:
    books: dict[int, OrderBook] = {}
    crossed_at_last = 0
    for r in read_all(path).tolist():
        (_, _, pub, iid, _, oid, px, sz, fl, _, act, side, _, _, seq) = r
        b = books.get(iid) or books.setdefault(iid, OrderBook(pub, iid))
        b.apply(act, side, px, sz, oid, fl, seq)
        if fl & F_LAST and b.crossed:
            crossed_at_last += 1
    return books, crossed_at_last


def test_real_cme_book_never_crosses_and_knows_every_order() -> None:
    books, crossed = _replay(require(ESM4_MBO))
    (book,) = books.values()
    assert crossed == 0
    assert book.counters.unknown_orders == 0 and book.counters.duplicate_adds == 0
    assert len(book.orders) > 10_000  # the snapshot's orders are resting


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 10_000))
def test_final_books_equal_generator_truth(
    tmp_path_factory: pytest.TempPathFactory, seed: int
) -> None:
    out = tmp_path_factory.mktemp("book") / "g.mbo.dbn"
    write(out, GenConfig(records=20_000, instruments=4, orders_per_instrument=60, seed=seed))
    truth = orjson.loads(truth_path(out).read_bytes())
    books, crossed = _replay(out)
    assert crossed == 0
    for iid, t in truth["instruments"].items():
        b = books[int(iid)]
        assert [list(x) for x in b.levels(BID, 10_000)] == t["bids"]
        assert [list(x) for x in b.levels(ASK, 10_000)] == t["asks"]
        assert b.counters.unknown_orders == 0 and b.last_sequence == t["last_sequence"]


def test_mbp10_reproduces_the_real_expected_file_row_for_row() -> None:
    """Every one of the 3,928 rows: the same record (action, price, size, order, sequence) in
    the same order, with the same top 10 levels (price, size, order count) on both sides."""

    def key(r: dict) -> tuple:
        return (
            r["action"],
            int(r["sequence"]),
            int(r["order_id"]),
            parse_price(r["price"]),
            int(r["size"]),
        )

    def levels(r: dict) -> list[tuple[int, int, int]]:
        return [
            (
                parse_price(r[f"{s}_px_{i:02d}"]),
                int(r[f"{s}_sz_{i:02d}"]),
                int(r[f"{s}_ct_{i:02d}"]),
            )
            for i in range(10)
            for s in ("bid", "ask")
        ]

    out = io.StringIO()
    write_mbp([str(require(ARL_MBO_CSV))], 10, out, progress=False)
    ours = list(csv.DictReader(io.StringIO(out.getvalue())))
    expected = list(csv.DictReader(require(ARL_MBP10_CSV).open()))
    assert len(ours) == len(expected) == 3_928
    for i, (got, want) in enumerate(zip(ours, expected, strict=True)):
        assert key(got) == key(want), f"row {i}"
        assert levels(got) == levels(want), f"row {i}"
