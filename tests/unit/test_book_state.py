"""Books as checkpointed state: a restore gives the same books and the same outputs from then
on; a checkpoint cut short leaves the previous one readable; redelivered input is skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.feeds.batching import Batcher
from app.feeds.mbo_files import open_mbo
from models.mbo import F_LAST
from tables.book_state import BookSet, Write
from tables.order_book import ASK, BID

DEEP = 1 << 30


def _messages(path: Path, batch: int = 300) -> list[tuple[int, np.ndarray]]:
    batcher = Batcher(batch_records=batch)
    out = []
    for chunk in open_mbo(path).chunks():
        out.extend((b.instrument_id, b.records) for b in batcher.add(chunk))
    out.extend((b.instrument_id, b.records) for b in batcher.flush_all())
    return out


class Store(dict):
    def write(self, writes: list[Write]) -> None:
        for key, value in writes:
            if value is None:
                self.pop(key, None)
            else:
                self[key] = value


def _run(
    books: BookSet, store: Store, msgs: list[tuple[int, np.ndarray]], start: int, every: int
) -> list[tuple]:
    """Feed messages from `start`, checkpoint every `every`; returns what was published."""
    out = []
    for pos in range(start, len(msgs)):
        iid, recs = msgs[pos]
        if not books.loaded(iid):
            books.load(iid, iid % 4, store.get)
        applied = books.process(iid, recs, pos)
        if applied is not None and applied.published is not None:
            p = applied.published
            out.extend(
                zip(
                    p.event.tolist(),
                    p.side.tolist(),
                    p.price.tolist(),
                    p.size.tolist(),
                    p.count.tolist(),
                    strict=True,
                )
            )
        if (pos + 1) % every == 0:
            for writes in books.checkpoint().values():
                store.write(writes)
    return out


def _snapshot(books: BookSet) -> dict:
    e = books.engine
    out = {}
    for iid in sorted(books.instruments):
        for b in books.books_of(iid):
            out[e.book_keys[b]] = (
                e.levels(b, BID, DEEP),
                e.levels(b, ASK, DEEP),
                e.order_count(b),
                e.last_sequence(b),
                e.counters(b),
                e.bbo(b),
                [e.queue_position(b, oid) for oid in range(1, 400)],
            )
    return out


def test_restore_gives_the_same_books_and_outputs(small_generated: Path) -> None:
    msgs = _messages(small_generated)
    whole = BookSet()
    expected = _run(whole, Store(), msgs, 0, every=25)

    store = Store()
    first = BookSet()
    cut = len(msgs) // 2
    out = _run(first, store, msgs[:cut], 0, every=25)
    for writes in first.checkpoint().values():
        store.write(writes)
    restored = BookSet()  # a new worker: everything comes from the store
    out += _run(restored, store, msgs, cut, every=25)
    assert out == expected
    assert _snapshot(restored) == _snapshot(whole)


def test_redelivered_messages_are_skipped(small_generated: Path) -> None:
    msgs = _messages(small_generated)
    store = Store()
    books = BookSet()
    _run(books, store, msgs[:200], 0, every=50)  # checkpoint at 200
    again = BookSet()
    replay = _run(again, store, msgs[:260], 150, every=1000)  # 150..199 are redeliveries
    fresh = BookSet()
    reference = _run(fresh, Store(), msgs[:260], 0, every=1000)
    assert replay == reference[len(reference) - len(replay) :]
    assert _snapshot(again) == _snapshot(fresh)


@pytest.mark.parametrize("keep", [0, 1, 3])
def test_a_checkpoint_cut_short_leaves_the_previous_one(small_generated: Path, keep: int) -> None:
    msgs = _messages(small_generated)
    store = Store()
    books = BookSet()
    _run(books, store, msgs[:100], 0, every=100)
    before = BookSet()
    _run(before, store, msgs[:100], 100, every=1000)  # loads only what it touches
    _run(books, Store(), msgs[:180], 100, every=1000)
    for writes in books.checkpoint().values():
        pages = [w for w in writes if b"/" in w[0]]
        store.write(pages[:keep])  # killed before the meta was written
        break
    resumed = BookSet()
    _run(resumed, store, msgs[:100], 100, every=1000)
    for iid in before.instruments:
        resumed.load(iid, iid % 4, store.get) if not resumed.loaded(iid) else None
    assert _snapshot(resumed) == _snapshot(before)


def test_an_open_event_is_held_back_and_kept_in_the_checkpoint() -> None:
    from tests.unit.test_book_engine import A, _records

    store = Store()
    books = BookSet()
    books.load(5, 1, store.get)
    rows = [(1, 5, A, BID, 100, 1, 1, F_LAST, 1), (1, 5, A, BID, 101, 1, 2, 0, 2)]
    applied = books.process(5, _records(rows), 0)
    assert applied is not None and len(applied.records) == 1
    for writes in books.checkpoint().values():
        store.write(writes)
    later = BookSet()
    later.load(5, 1, store.get)
    applied = later.process(5, _records([(1, 5, A, BID, 101, 1, 3, F_LAST, 2)]), 1)
    assert applied is not None and len(applied.records) == 2
    b = later.books_of(5)[0]
    assert later.engine.levels(b, BID, 5) == [(101, 2, 2), (100, 1, 1)]


def test_partitions_moving_away_and_back_leave_every_other_book_exact(
    small_generated: Path,
) -> None:
    """A worker loses a partition mid-run (its books evicted), goes on with the others, then
    gets it back from the table: every book ends as in one uninterrupted run, and nothing the
    evicted books had open leaks into the others' events (evicting once left the engine
    counting an open event, and every later message failed with 'records end inside an
    event')."""
    msgs = _messages(small_generated)
    whole = BookSet()
    _run(whole, Store(), msgs, 0, every=25)

    store = Store()
    books = BookSet()
    third = len(msgs) // 3
    _run(books, store, msgs[:third], 0, every=25)
    for writes in books.checkpoint().values():
        store.write(writes)
    books.evict([1])  # partition 1 (iid % 4 == 1) moves to another worker...
    assert not any(inst.partition == 1 for inst in books.instruments.values())
    other = BookSet()  # ...which carries it on from the table while this one goes on
    for pos in range(third, 2 * third):
        iid, recs = msgs[pos]
        owner = other if iid % 4 == 1 else books
        if not owner.loaded(iid):
            owner.load(iid, iid % 4, store.get)
        owner.process(iid, recs, pos)
    for moved in (books, other):
        for writes in moved.checkpoint().values():
            store.write(writes)
    other.evict([1])  # ...and back
    _run(books, store, msgs, 2 * third, every=25)
    for iid in whole.instruments:
        if not books.loaded(iid):
            books.load(iid, iid % 4, store.get)
    assert _snapshot(books) == _snapshot(whole)


def test_a_failed_apply_marks_its_instrument_suspect_and_spares_the_rest(
    small_generated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An apply that fails part-way through one instrument's message (here: an event cut
    open, as a broken input or a bug could leave it) raises BookError for that instrument;
    every other instrument's books and outputs stay those of a run without the message."""
    from tables import book_state

    msgs = _messages(small_generated)

    def open_at(records: np.ndarray) -> int:  # a record that does not end its event
        inside = np.flatnonzero((records["flags"] & F_LAST) == 0)
        return int(inside[0]) + 1 if len(inside) else 0

    bad = next(p for p in range(100, len(msgs)) if msgs[p][0] % 4 == 2 and open_at(msgs[p][1]))
    bad_iid = msgs[bad][0]
    reference = BookSet()
    _run(reference, Store(), [m for p, m in enumerate(msgs) if p != bad], 0, every=25)

    books = BookSet()
    _run(books, Store(), msgs[:bad], 0, every=25)
    complete = book_state.complete_events
    monkeypatch.setattr(book_state, "complete_events", lambda r: len(r))  # a cut mid-event
    opened = msgs[bad][1][: open_at(msgs[bad][1])]
    with pytest.raises(book_state.BookError, match=f"instrument {bad_iid}"):
        books.process(bad_iid, opened, bad)
    monkeypatch.setattr(book_state, "complete_events", complete)
    assert books.process(bad_iid, opened, bad) is None  # counted as applied: not round again
    assert all(books.engine.suspect(b) for b in books.books_of(bad_iid))
    got = _run(books, Store(), [m for p, m in enumerate(msgs) if p != bad], bad, every=25)
    assert len(got) > 1000
    others = lambda snap: {k: v for k, v in snap.items() if k[1] != bad_iid}  # noqa: E731
    assert others(_snapshot(books)) == others(_snapshot(reference))


def test_sequence_gaps_count_where_they_are_met_and_suspect_books_until_a_clear() -> None:
    """`sequence_gaps` counts only the gaps this set's books met (not those a checkpoint
    brings along), keeps them when the books are evicted, and `suspect_books` counts the
    books held now that are suspect (the metrics tapestream_sequence_gaps_total and
    tapestream_suspect_books)."""
    from tests.unit.test_book_engine import A, R, _records

    def adds(*seqs: int) -> np.ndarray:
        return _records([(1, 5, A, BID, 100 + s, 1, s, F_LAST, s) for s in seqs])

    store = Store()
    books = BookSet()
    books.load(5, 1, store.get)
    books.process(5, adds(1, 2, 5), 0)  # 3 and 4 skipped
    assert (books.sequence_gaps(), books.suspect_books()) == (1, 1)
    for writes in books.checkpoint().values():
        store.write(writes)

    later = BookSet()
    later.load(5, 1, store.get)
    assert later.engine.counters(later.books_of(5)[0])["gaps"] == 1
    assert (later.sequence_gaps(), later.suspect_books()) == (0, 1)  # its gap was counted
    later.process(5, adds(6, 9), 1)
    assert later.sequence_gaps() == 1
    later.evict([1])
    assert (later.sequence_gaps(), later.suspect_books()) == (1, 0)
    later.load(5, 1, store.get)  # the checkpoint of before: the gap at 9 is not in it
    later.process(5, adds(6, 9), 1)
    assert later.sequence_gaps() == 2  # met again, counted again

    books.process(5, _records([(1, 5, R, 0, 0, 0, 0, F_LAST, 6)]), 1)
    assert (books.sequence_gaps(), books.suspect_books()) == (1, 0)
