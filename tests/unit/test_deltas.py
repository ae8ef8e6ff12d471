"""The one-second delta stream (tables/deltas.py) on real books: each second's top-10 is the
book as it stood at the second's end (Databento's own MBP-10 for ARL), whatever the message
size; and the merge publishes each second once, complete, in order."""

from __future__ import annotations

import csv
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.feeds.batching import Batcher
from app.feeds.mbo_files import open_mbo
from models.delta_state import Book, DeltaState
from tables.book_state import BookSet
from tables.deltas import (
    BARS,
    BOOKS,
    SECOND_NS,
    BookSeconds,
    DeltaMerge,
    DeltaSet,
    item_parts,
    second_of,
)
from tests.conftest import ARL_MBO_CSV, ARL_MBP10_CSV, ESM4_MBO, require

DEPTH = 10
END = 1 << 62


def _book_parts(path: Path, batch: int) -> tuple[list[tuple[int, int, dict]], BookSet]:
    """Book parts from a file cut into `batch`-record messages, every second closed at the end."""
    books = BookSet()
    seconds = BookSeconds(books.tops, DEPTH)
    batcher = Batcher(batch)
    position = 0
    for chunk in open_mbo(require(path)).chunks():
        for b in [*batcher.add(chunk)]:
            position = _apply(books, seconds, b.instrument_id, b.records, position)
    for b in batcher.flush_all():
        position = _apply(books, seconds, b.instrument_id, b.records, position)
    seconds.release(0, END)
    return seconds.take(), books


def _apply(books: BookSet, seconds: BookSeconds, iid: int, records: np.ndarray, pos: int) -> int:
    if not books.loaded(iid):
        books.load(iid, 0, {}.get)
        seconds.load(iid, 0, {}.get)
    books.process(iid, records, pos + 1, seconds)
    return pos + 1


def _deltas(parts: list[tuple[int, int, dict]]) -> list[dict[str, Any]]:
    merge = DeltaMerge()
    for iid, second, part in parts:
        merge.add(iid, second, part)
    merge.advance(BARS, END)
    return merge.advance(BOOKS, END)


def _ns(text: str) -> int:
    day, frac = text.rstrip("Z").split(".")
    whole = datetime.fromisoformat(day + "+00:00").timestamp()
    return int(whole) * SECOND_NS + int(frac.ljust(9, "0"))


def _px(text: str) -> int:
    return int(Decimal(text) * SECOND_NS)


def _expected_tops(path: Path) -> dict[int, tuple[list, list]]:
    """Databento's MBP-10 book at the end of each second it changed in. Its rows carry
    ts_event in both time columns; the receive time comes from the MBO record of the same
    (ts_event, sequence), the last such when a trade's T, F and C share them."""
    recv: dict[tuple[int, int], int] = {}
    for chunk in open_mbo(require(ARL_MBO_CSV)).chunks():
        for ts_event, seq, ts_recv in zip(
            chunk["ts_event"].tolist(),
            chunk["sequence"].tolist(),
            chunk["ts_recv"].tolist(),
            strict=True,
        ):
            recv[(ts_event, seq)] = max(ts_recv, recv.get((ts_event, seq), 0))
    out = {}
    for row in csv.DictReader(path.open()):
        sides = []
        for side in ("bid", "ask"):
            levels = []
            for i in range(DEPTH):
                px = row[f"{side}_px_{i:02d}"]
                if px:
                    levels.append(
                        [_px(px), int(row[f"{side}_sz_{i:02d}"]), int(row[f"{side}_ct_{i:02d}"])]
                    )
            sides.append(levels)
        ts_recv = recv[(_ns(row["ts_event"]), int(row["sequence"]))]
        out[ts_recv // SECOND_NS] = (sides[0], sides[1])
    return out


@pytest.mark.parametrize("batch", [1, 37, 1000])
def test_arl_each_second_is_databentos_book_at_its_end(batch: int) -> None:
    """After the deltas up to a second, the book is Databento's as of that second's end, for
    every second Databento's book changed in (a second whose changes cancel out has no
    delta, and needs none)."""
    want = _expected_tops(require(ARL_MBP10_CSV))
    deltas = _deltas(_book_parts(ARL_MBO_CSV, batch)[0])
    assert {d["instrument_id"] for d in deltas} == {1108}
    state, i = DeltaState(), 0
    for second in sorted(want):
        while i < len(deltas) and deltas[i]["start"] // SECOND_NS <= second:
            assert state.apply(deltas[i])
            i += 1
        book = state.books.get((1108, 2), Book())
        assert (book.bids, book.asks) == want[second], f"second {second}"
    assert i == len(deltas) and len(want) > 1000 and len(deltas) > 900


@pytest.mark.parametrize("batch", [1, 300, 4096])
def test_esm4_deltas_rebuild_the_final_book_at_any_message_size(batch: int) -> None:
    parts, books = _book_parts(ESM4_MBO, batch)
    reference, _ = _book_parts(ESM4_MBO, 1000)
    assert parts == reference
    state = DeltaState()
    for delta in _deltas(parts):
        state.apply(delta)
    (iid,) = books.instruments
    for pub, (bids, asks) in books.tops(iid, DEPTH).items():
        assert (state.books[(iid, pub)].bids, state.books[(iid, pub)].asks) == (bids, asks)
    # 2024-05-08 00:00:00 (the snapshot and the first second of events) and 00:00:01
    assert [second for _, second, _ in parts] == [1715126400, 1715126401]


def test_an_item_belongs_to_the_second_its_lateness_ends_in() -> None:
    minute = 60 * SECOND_NS
    bar = {"instrument_id": 5, "interval": "1m", "start": 10 * minute, "close": 1}
    pressure = {"instrument_id": 5, "start": 10 * minute, "end": 15 * minute}
    (part,) = item_parts([("bars.1m", bar)], 2 * SECOND_NS)
    assert part[:2] == (5, second_of(11 * minute + 2 * SECOND_NS)) == (5, 661)
    (part,) = item_parts([("pressure", pressure), ("signals", {"kind": "processing_lag"})], 0)
    assert part[1] == 899 and part[2]["items"] == [["pressure", pressure]]


def _part(iid: int, second: int, n: int) -> dict:
    return {"items": [["bars.1m", {"instrument_id": iid, "interval": "1m", "start": n}]]}


def test_merge_waits_for_both_sources_and_publishes_seconds_in_order() -> None:
    m = DeltaMerge()
    m.add(2, 5, _part(2, 5, 1))
    m.add(1, 5, {"books": [{"publisher_id": 1}]})
    m.add(1, 4, _part(1, 4, 2))
    assert m.advance(BOOKS, 7 * SECOND_NS) == []  # the items source has said nothing yet
    out = m.advance(BARS, 5 * SECOND_NS + 1)
    assert [(d["start"] // SECOND_NS, d["instrument_id"]) for d in out] == [(4, 1)]
    out = m.advance(BARS, 6 * SECOND_NS)
    assert [(d["start"] // SECOND_NS, d["instrument_id"]) for d in out] == [(5, 1), (5, 2)]
    assert out[0]["books"] == [{"publisher_id": 1}] and "bars" not in out[0]
    # a part of a published second is a repeat after a restart: dropped, counted
    assert not m.add(1, 5, _part(1, 5, 3)) and m.repeats == 1
    with pytest.raises(ValueError, match="unknown delta source"):
        m.advance("trades", 1)


def _write(store: dict[bytes, bytes], merges: DeltaSet) -> None:
    for key, value in merges.checkpoint().get(0, []):
        if value is None:
            del store[key]
        else:
            store[key] = value


@settings(max_examples=80, deadline=None)
@given(
    parts=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 12), st.integers(0, 5), st.booleans()),
        max_size=40,
    ),
    marks=st.lists(st.tuples(st.booleans(), st.integers(0, 14 * SECOND_NS)), max_size=20),
    every=st.integers(1, 7),
    crash=st.integers(0, 60),
)
def test_merge_output_depends_on_the_parts_only(
    parts: list[tuple[int, int, int, bool]], marks: list[tuple[bool, int]], every: int, crash: int
) -> None:
    """Any interleaving of parts and watermarks (each part before its source's watermark passes
    its second), with repeated parts, checkpoints every few messages and a crash anywhere
    (restored from the last checkpoint, the messages after it delivered again), gives the
    deltas of a single pass; what a crash repeats is identical."""
    events: list[tuple] = []
    for iid, second, n, repeat in parts:
        part = _part(iid, second, n)
        events.append(("part", iid, second, part))
        if repeat:
            events.append(("part", iid, second, part))
    for from_bars, bound in marks:
        events.append(("mark", BARS if from_bars else BOOKS, bound))
    events.sort(key=lambda e: e[2] * SECOND_NS if e[0] == "part" else e[2] - 1)
    events += [("mark", BOOKS, END), ("mark", BARS, END)]
    store: dict[bytes, bytes] = {}
    merges = DeltaSet()
    merges.load(0, store.get)
    out: dict[tuple[int, int], dict] = {}
    order: list[tuple[int, int]] = []
    i, resumed_at, crashed = 0, 0, False
    while i < len(events):
        if i == crash and not crashed:
            crashed, merges = True, DeltaSet()
            merges.load(0, store.get)
            i = resumed_at
            continue
        e = events[i]
        if e[0] == "part":
            merges.add(0, *e[1:])
        else:
            for d in merges.advance(0, e[1], e[2]):
                key = (d["instrument_id"], d["start"])
                assert out.setdefault(key, d) == d
                if key not in order:
                    order.append(key)
        i += 1
        if i % every == 0:
            _write(store, merges)
            resumed_at = i
    want = _deltas([(iid, s, p) for _, iid, s, p in (e for e in events if e[0] == "part")])
    assert [out[k] for k in order] == want
    assert [(d["start"], d["instrument_id"]) for d in want] == sorted(
        {(s * SECOND_NS, iid) for iid, s, _, _ in parts}
    )
    if not merges.partitions[0].merge.pending:  # nothing left behind in the table
        _write(store, merges)
        assert {k for k in store if not k.startswith(b"~")} == set()


def test_a_checkpoint_cut_short_leaves_a_loadable_one() -> None:
    """A kill under at_least_once can land after any write of a checkpoint: the table must
    still load, whichever of its writes arrived. (Deleting a published second's key before
    the meta that stops naming it left a meta naming a missing key, and the partition's
    deltas failed on every message after a failover.)"""
    store: dict[bytes, bytes] = {}
    merges = DeltaSet()
    merges.load(0, store.get)
    for second in (5, 6):
        merges.add(0, 1, second, _part(1, second, 1))
    _write(store, merges)  # seconds 5 and 6 pending
    merges.advance(0, BOOKS, 6 * SECOND_NS + 1)
    merges.advance(0, BARS, 6 * SECOND_NS + 1)  # second 5 published
    merges.add(0, 1, 7, _part(1, 7, 1))
    rows = merges.checkpoint()[0]
    assert any(v is None for _, v in rows)
    for cut in range(len(rows) + 1):
        partial = dict(store)
        for key, value in rows[:cut]:
            if value is None:
                partial.pop(key, None)
            else:
                partial[key] = value
        DeltaSet().load(0, partial.get)


def test_a_merge_never_checkpointed_keeps_only_what_is_pending() -> None:
    """The file driver never checkpoints: what the merge tracks for its next checkpoint must
    not grow with every second ever published (a day of a sparse feed is millions)."""
    merges = DeltaSet()
    merges.load(0, {}.get)
    for second in range(10_000):
        merges.add(0, 7, second, {"books": [{"publisher_id": 1}]})
        bound = (second + 1) * SECOND_NS
        merges.advance(0, BOOKS, bound)
        merges.advance(0, BARS, bound)
    state = merges.partitions[0]
    assert len(state.merge.pending) == 0 and state.dirty.items("pending") == []


def test_a_snapshot_goes_out_at_an_instruments_first_delta_and_each_new_interval() -> None:
    """The snapshot writer (`faust -A app snapshots`): a snapshot loaded into a fresh state,
    with the deltas after it applied, holds what applying every delta holds."""
    from app.commands.snapshots import SnapshotWriter

    second = 1_000_000_000
    deltas = [
        {
            "instrument_id": 7,
            "start": t * second,
            "books": [
                {
                    "publisher_id": 1,
                    "bid_depth": 2,
                    "ask_depth": 1,
                    "bids": [[0, 100 + t, t, 1]],
                    "asks": [[0, 200 + t, 1, 1]],
                }
            ],
            "bars": [{"interval": "1m", "start": t // 60 * 60 * second, "close": 100 + t}],
        }
        for t in range(0, 50, 3)
    ]
    writer = SnapshotWriter(10 * second)
    out = [(i, s) for i, d in enumerate(deltas) if (s := writer.add(0, i, d)) is not None]
    assert [i for i, _ in out] == [0, 4, 7, 10, 14]  # at 0 s, then 12, 21, 30 and 42 s
    full = DeltaState()
    for d in deltas:
        full.apply(d)
    offset, snap = out[-1]
    late = DeltaState()
    late.load(snap)
    for i, d in enumerate(deltas):
        if i > snap["offset"]:
            late.apply(d)
    assert late.same_as(full) and snap["offset"] == offset
    # An instrument gone quiet mid-interval: its last deltas go out on the writer's timer.
    (tail,) = writer.flush()
    assert tail["offset"] == len(deltas) - 1 and writer.flush() == []
    caught_up = DeltaState()
    caught_up.load(tail)
    assert caught_up.same_as(full)
    # A writer restarted from its snapshot goes on without repeating what it covers.
    again = SnapshotWriter(10 * second, late, {7: offset})
    assert again.add(0, offset, deltas[offset]) is None
