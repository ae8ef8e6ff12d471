"""L2 books from Binance diff-depth streams: the sync procedure, on the real capture against
its own bookTicker messages, through the L3 engine, and on generated streams with dropped
updates and stale snapshots."""

from __future__ import annotations

import bisect
import gzip
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.feeds.captures import BadMessage, parse_line
from app.feeds.depth_capture import (
    DepthBooks,
    decimal_units,
    instrument_for,
    parse_stream_message,
)
from app.feeds.mbo_files import InputError, open_mbo, read_all
from models.mbo import F_LAST, F_MAYBE_BAD_BOOK
from tables.book_engine import BookEngine
from tables.depth_sync import ASK, BID, DepthSnapshot, DepthSync, DepthUpdate, Kind
from tables.venues import BINANCE_USDM
from tests.conftest import SHARED_DATA, require

CAPTURE = SHARED_DATA / "binance" / "usdm-btcusdt-2024-08-08.depth-trades.gz"


def _capture_messages() -> list[tuple[int, dict]]:
    with gzip.open(require(CAPTURE), "rb") as fh:
        return [parse_line(line) for line in fh]


def _ticker(d: dict) -> tuple[int, ...]:
    return (
        decimal_units(d["b"], 9, "b"),
        decimal_units(d["B"], 3, "B"),
        decimal_units(d["a"], 9, "a"),
        decimal_units(d["A"], 3, "A"),
    )


def test_the_rebuilt_book_equals_every_book_ticker_at_its_update_id() -> None:
    """A bookTicker's `u` is an update id; where it falls after one depth update and before the
    next one starts, the book after that update is the book it describes. (Most fall inside a
    depth update's id range, where no book state is published.)"""
    books = DepthBooks()
    after: list[tuple[int, int, tuple[int, ...]]] = []  # (U, u, top) of each applied update
    tickers = []
    for ts, body in _capture_messages():
        if body.get("data", {}).get("e") == "bookTicker":
            tickers.append((body["data"]["u"], _ticker(body["data"])))
            continue
        symbol, message = parse_stream_message(body)
        books.add(symbol or "BTCUSDT", message, ts)
        sync = books.book("BTCUSDT")
        if isinstance(message, DepthUpdate) and sync.synced and sync.last_id == message.last_id:
            after.append((message.first_id, message.last_id, sync.best(BID) + sync.best(ASK)))
    sync = books.book("BTCUSDT")
    assert sync.counters.gaps == 0 and sync.counters.snapshots == 1
    assert sync.counters.dropped_stale > 0  # the buffered updates older than the snapshot
    after.sort()
    lasts = [u for _, u, _ in after]
    checked = 0
    for u, top in tickers:
        i = bisect.bisect_right(lasts, u) - 1
        if i < 0 or (i + 1 < len(after) and after[i + 1][0] <= u):
            continue
        assert after[i][2] == top, f"bookTicker u={u}"
        checked += 1
    assert checked > 600, checked


def test_the_l3_engine_publishes_the_depth_book_after_every_message() -> None:
    """The records each message becomes, applied by the L3 engine, leave its top levels equal
    to the L2 book's, after every message of the capture."""
    books, engine = DepthBooks(), BookEngine()
    book = engine.book_index(BINANCE_USDM, instrument_for("BTCUSDT"))
    for n, (ts, body) in enumerate(_capture_messages()):
        symbol, message = parse_stream_message(body)
        books.add(symbol or "BTCUSDT", message, ts)
        records = books.take()
        if not len(records):
            continue
        assert records["flags"][-1] & F_LAST
        engine.apply(records)
        sync = books.book("BTCUSDT")
        if not sync.synced:
            continue
        for side in (BID, ASK):
            best = engine.best(book, side)
            assert (best[:2] if best else None) == sync.best(side), f"message {n}"
    sync = books.book("BTCUSDT")
    for side in (BID, ASK):
        assert engine.level_count(book, side) == len(sync.levels[side])
        top = engine.levels(book, side, 50)
        expect = sorted(sync.levels[side].items(), reverse=side == BID)[:50]
        assert [(p, s) for p, s, _ in top] == expect
        assert all(count == 0 for _, _, count in top)  # L2: no orders behind the levels
    assert engine.order_count(book) == 0 and engine.counters(book)["unknown_orders"] == 0
    assert not engine.suspect(book)


def test_a_capture_is_an_mbo_input_file() -> None:
    f = open_mbo(require(CAPTURE))
    assert f.format == "depth"
    records = np.concatenate(list(f.chunks()))
    assert f.symbols == {instrument_for("BTCUSDT"): "BTCUSDT"} and f.bytes_read == f.size
    actions = {chr(a) for a in np.unique(records["action"])}
    assert actions == {"R", "A", "M", "C", "T"}
    trades = records[records["action"] == ord("T")]
    assert len(trades) == 21_313  # every trade message
    assert set(np.unique(trades["side"])) == {BID, ASK}
    assert (records["instrument_id"] == instrument_for("BTCUSDT")).all()
    assert (trades["price"] > 0).all()


def test_bad_capture_lines_name_the_line(tmp_path: Path) -> None:
    lines = [
        b'1 {"stream":"btcusdt@trade","data":{"e":"trade","E":1,"T":1,"s":"BTCUSDT","t":1,'
        b'"p":"100.5","q":"0.001","X":"MARKET","m":false}}',
        b'2 {"stream":"btcusdt@trade","data":{"e":"trade","E":1,"T":1,"s":"BTCUSDT","t":2,'
        b'"p":"100.5","q":"0.0001","X":"MARKET","m":false}}',
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(InputError, match=r"line 2: qty '0.0001' has more than 3 decimals"):
        read_all(bad)
    torn = tmp_path / "torn.jsonl.gz"
    torn.write_bytes(gzip.compress(b"\n".join(lines[:1] * 2000))[:-40])
    with pytest.raises(InputError, match="corrupt gzip"):
        read_all(torn)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([], "not a JSON object"),
        ({"stream": "x@depth", "data": {"e": "depthUpdate", "s": "BTCUSDT"}}, "field 'U'"),
        (
            {"stream": "x@trade", "data": {"e": "trade", "s": "X", "T": 1, "t": 1, "m": "no"}},
            "field 'm'",
        ),
        ({"stream": "x@aggTrade", "data": {"e": "aggTrade"}}, "unknown event"),
        ({"lastUpdateId": 5, "bids": [["1.0"]], "asks": []}, "not \\[price, quantity\\]"),
        (
            {
                "stream": "x@trade",
                "data": {
                    "e": "trade",
                    "s": "BTCUSDT",
                    "T": 1,
                    "t": 1,
                    "m": True,
                    "p": "-1",
                    "q": "1",
                },
            },
            "non-negative decimal",
        ),
    ],
)
def test_malformed_messages_say_what_is_wrong(body: object, reason: str) -> None:
    with pytest.raises(BadMessage, match=reason):
        parse_stream_message(body)


# -- the procedure on generated streams --------------------------------------------------------


class Venue:
    """A venue's book and its diff-depth stream: ids advance by a random step per update."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.book: dict[int, dict[int, int]] = {BID: {}, ASK: {}}
        self.u = 1000

    def step(self) -> DepthUpdate:
        rows: dict[int, list[tuple[int, int]]] = {BID: [], ASK: []}
        for _ in range(self.rng.randint(1, 6)):
            side = self.rng.choice((BID, ASK))
            price = 100 - self.rng.randint(1, 20) if side == BID else 100 + self.rng.randint(0, 19)
            size = self.rng.choice((0, 0, 1, 5, 17))
            rows[side].append((price, size))
            if size:
                self.book[side][price] = size
            else:
                self.book[side].pop(price, None)
        first, pu = self.u + 1, self.u
        self.u += self.rng.randint(1, 5)
        return DepthUpdate(first, self.u, pu, self.u, rows[BID], rows[ASK])

    def snapshot(self) -> DepthSnapshot:
        return DepthSnapshot(
            self.u, self.u, list(self.book[BID].items()), list(self.book[ASK].items())
        )


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), drop=st.floats(0, 0.05), late=st.integers(0, 6))
def test_every_gap_is_detected_and_the_resynced_book_equals_the_venues(
    seed: int, drop: float, late: int
) -> None:
    """Updates are dropped at random; the snapshot the client asks for after a gap arrives
    `late` updates later. Every drop is a gap (or is absorbed while waiting), and once synced
    the book always equals the venue's."""
    rng = random.Random(seed)
    venue, sync = Venue(rng), DepthSync()
    for _ in range(3):
        sync.update(venue.step())
    due: int | None = 0  # updates until the snapshot the client asked for arrives
    lost = False  # an update was dropped while the book was synced
    for _ in range(400):
        if due is not None and due <= 0:
            sync.snapshot(venue.snapshot())
            due = None
        u = venue.step()
        if rng.random() < drop:
            lost = lost or sync.synced
            continue
        expect_gap, lost = lost and sync.synced, False
        changes = sync.update(u)
        assert any(c.kind is Kind.GAP for c in changes) == expect_gap
        if expect_gap:
            due = late
        if due is not None:
            due -= 1
        if sync.synced:
            assert sync.levels == venue.book


def test_a_stale_snapshot_is_refused_and_a_fresh_one_joins() -> None:
    venue, sync = Venue(random.Random(7)), DepthSync()
    old = venue.snapshot()
    venue.step()  # before the client subscribed
    for _ in range(5):
        sync.update(venue.step())
    assert sync.snapshot(old) == [] and sync.counters.snapshots_refused == 1
    assert sync.needs_snapshot
    changes = sync.snapshot(venue.snapshot())
    # The last buffered update ends at the snapshot's id: it is applied again, harmlessly.
    assert [c.kind for c in changes] == [Kind.SNAPSHOT, Kind.UPDATE] and sync.synced
    assert sync.counters.dropped_stale == 4
    update = venue.step()
    assert [c.kind for c in sync.update(update)] == [Kind.UPDATE]
    assert sync.update(update) == []  # sent again: nothing changes
    assert sync.levels == venue.book


def test_a_gap_becomes_a_suspect_marker_until_the_next_snapshot() -> None:
    venue, books = Venue(random.Random(3)), DepthBooks()
    books.add("X", venue.snapshot(), 1)
    books.add("X", venue.step(), 2)
    venue.step()  # lost
    books.add("X", venue.step(), 3)
    records = books.take()
    marker = records[-1]
    assert chr(marker["action"]) == "N" and marker["flags"] & F_MAYBE_BAD_BOOK
    engine = BookEngine()
    engine.apply(records)
    book = engine.book_index(BINANCE_USDM, instrument_for("X"))
    assert engine.suspect(book)
    books.add("X", venue.snapshot(), 4)
    engine.apply(books.take())
    assert not engine.suspect(book)
    assert {s: dict(p[:2] for p in engine.levels(book, s, 100)) for s in (BID, ASK)} == {
        s: dict(venue.book[s]) for s in (BID, ASK)
    }


def test_the_file_driver_makes_bars_and_publishes_l2_levels_without_counts() -> None:
    """The capture through the stage graph: bars from its trades (volume in lots of 0.001
    BTC: every trade message counted once), and book rows with no order counts."""
    from app.file_driver import run_files
    from app.settings import load_settings

    run = run_files([str(require(CAPTURE))], load_settings({}), progress=False)
    bars = run.row_topics["bars.1m"]
    trades = list(run.topic_rows("trades"))
    assert len(trades) == 21_313 and len(bars) == 5
    closed_by = bars[-1]["start"] + 60_000_000_000
    within = [t for t in trades if t["ts_event"] < closed_by]
    assert sum(b["trades"] for b in bars) == len(within)
    assert sum(b["volume"] for b in bars) == sum(t["size"] for t in within)
    assert all(b["instrument_id"] == instrument_for("BTCUSDT") for b in bars)
    assert {r["count"] for r in run.topic_rows("book.deltas")} == {0}
    bbo = list(run.topic_rows("bbo"))
    assert bbo and {r["bid_ct"] for r in bbo} | {r["ask_ct"] for r in bbo} == {0}
    assert all(r["bid_px"] < r["ask_px"] for r in bbo)  # never crossed


def test_a_snapshot_between_two_updates_joins_the_stream() -> None:
    """Ids skip between updates (6,391 of the capture's 6,551 updates start past pu + 1): a
    snapshot whose id falls in such a hole is in step with the next update."""
    sync = DepthSync()
    sync.update(DepthUpdate(101, 110, 95, 1, [(100, 1)], []))
    sync.update(DepthUpdate(120, 130, 110, 2, [(100, 2)], []))  # ids 111-119: another symbol's
    assert [c.kind for c in sync.snapshot(DepthSnapshot(115, 1, [(100, 1)], []))] == [
        Kind.SNAPSHOT,
        Kind.UPDATE,
    ]
    assert sync.levels[BID] == {100: 2} and sync.counters.snapshots_refused == 0
    fresh = DepthSync()
    fresh.snapshot(DepthSnapshot(115, 1, [(100, 1)], []))  # nothing buffered yet
    assert [c.kind for c in fresh.update(DepthUpdate(120, 130, 110, 2, [(100, 2)], []))] == [
        Kind.UPDATE
    ]
    assert fresh.counters.gaps == 0
