"""Vendor ticks: the aggressor rules, the condition table, the events checked at the edge, and
their MBO records through the L3 engine and the file driver."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.feeds.captures import BadMessage
from app.feeds.mbo_files import InputError, open_mbo
from app.feeds.tick_capture import TickBooks, instrument_for, parse_event
from models.mbo import F_TOB, F_VOLUME_ONLY
from tables.book_engine import BookEngine
from tables.tick_rules import ASK, BID, NONE, RECENT_TRADES, Aggressor, Conditions, Sequences
from tables.venues import MASSIVE


def _trade(sym: str = "AAPL", p: float = 100.0, s: int = 100, t: int = 1_700_000_000_000,
           q: int = 1, c: list[int] | None = None) -> dict:  # fmt: skip
    return {"ev": "T", "sym": sym, "x": 4, "i": str(q), "z": 3, "p": p, "s": s, "c": c or [],
            "t": t, "q": q}  # fmt: skip


def _quote(sym: str = "AAPL", bp: float = 99.99, ap: float = 100.01, t: int = 1_700_000_000_000,
           q: int = 1, bs: int = 3, as_: int = 5) -> dict:  # fmt: skip
    return {"ev": "Q", "sym": sym, "bx": 11, "bp": bp, "bs": bs, "ax": 12, "ap": ap, "as": as_,
            "c": 0, "t": t, "q": q, "z": 3}  # fmt: skip


def test_the_quote_rule_then_the_tick_rule() -> None:
    a = Aggressor()
    assert a.side(100) == NONE  # nothing to go by
    assert a.side(101) == BID and a.side(100) == ASK  # ticks down and up
    assert a.side(100) == ASK  # zero tick: the previous trade's side
    a.quote(99, 103)  # midpoint 101
    assert a.side(102) == BID and a.side(100) == ASK
    assert a.side(101) == BID  # at the midpoint: up a tick from 100
    a.quote(0, 103)  # one side missing: no midpoint, the tick rule again
    assert a.side(100) == ASK
    a.quote(104, 103)  # crossed: unusable
    assert a.side(100) == ASK


@given(bid=st.integers(1, 10**6), spread=st.integers(0, 1000), price=st.integers(1, 2 * 10**6))
def test_the_quote_rule_agrees_with_the_midpoint(bid: int, spread: int, price: int) -> None:
    a = Aggressor()
    a.quote(bid, bid + spread)
    side = a.side(price)
    mid = bid + spread / 2
    if price > mid:
        assert side == BID
    elif price < mid:
        assert side == ASK


def test_conditions_from_the_vendors_reference() -> None:
    body = {
        "results": [
            {"id": 14, "name": "Intermarket Sweep", "data_types": ["trade"],
             "update_rules": {"consolidated": {"updates_high_low": True,
                                               "updates_open_close": True}}},
            {"id": 37, "name": "Odd Lot Trade", "data_types": ["trade"],
             "update_rules": {"consolidated": {"updates_high_low": False,
                                               "updates_open_close": False}}},
            {"id": 8, "name": "Closing Prints", "data_types": ["trade"],
             "update_rules": {"consolidated": {"updates_high_low": True,
                                               "updates_open_close": False}}},
            {"id": 15, "name": "Market Center Official Close", "data_types": ["trade"],
             "update_rules": {"consolidated": {"updates_high_low": False,
                                               "updates_open_close": False,
                                               "updates_volume": False}}},
            {"id": 70, "name": "a quote condition", "data_types": ["bbo"],
             "update_rules": {"consolidated": {"updates_high_low": False}}},
        ]
    }  # fmt: skip
    c = Conditions.from_reference(body)
    assert dict(c.excluded) == {
        37: "Odd Lot Trade",
        8: "Closing Prints",
        15: "Market Center Official Close",
    }
    assert c.excluding([14, 37]) == 37 and c.excluding([14]) is None
    assert c.no_volume == {15} and c.counts_volume([37]) and not c.counts_volume([14, 15])
    assert Conditions.from_json(c.as_json()) == c
    assert Conditions().excluding([37]) == 37 and Conditions().counts_volume([37])  # defaults
    assert not Conditions().counts_volume([16])
    # a table written before no_volume was kept: every excluded trade was out of volume too
    assert Conditions.from_json({"excluded": {"37": "Odd Lot Trade"}}).no_volume == {37}


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"ev": "T", "sym": "AAPL", "p": "100", "s": 1, "t": 1}, "field 'p'"),
        (_trade(s="100"), "TickTrade size: Input should be a valid integer"),
        (_trade(s=0), "TickTrade size: Input should be greater than 0"),
        (_trade(sym="aapl"), "TickTrade symbol: String should match pattern"),
        (_trade(t=-5), "field 't'"),
        (_quote(bp=-1.0), "field 'bp'"),
        ({"ev": "XQ", "sym": "AAPL"}, "unknown event 'XQ'"),
        ([], "not a JSON object"),
    ],
)
def test_a_bad_event_says_which_field_and_why(event: object, reason: str) -> None:
    with pytest.raises(BadMessage, match=reason):
        parse_event(event)


def test_quotes_are_the_books_top_and_trades_take_their_side() -> None:
    books = TickBooks()
    books.add(parse_event(_quote(bp=99.99, ap=100.01)), 1)  # type: ignore[arg-type]
    books.add(parse_event(_trade(p=100.01, q=2)), 2)  # type: ignore[arg-type]
    books.add(parse_event(_trade(p=99.99, q=3)), 3)  # type: ignore[arg-type]
    books.add(parse_event(_trade(p=150.0, q=4, c=[37])), 4)  # type: ignore[arg-type]
    books.add(parse_event(_trade(p=100.0, q=3)), 5)  # type: ignore[arg-type]  # a repeat of q=3
    books.add(parse_event(_trade(p=99.0, q=6, c=[15])), 6)  # type: ignore[arg-type]  # no volume
    records = books.take()
    assert books.excluded == 2 and books.duplicates == 1
    assert [chr(a) for a in records["action"]] == ["A", "A", "T", "T", "T"]
    assert (records["flags"][:2] & F_TOB).all()
    trades = records[records["action"] == ord("T")]
    assert list(trades["side"]) == [BID, ASK, BID]  # the odd lot: above the midpoint
    assert list(trades["price"]) == [100_010_000_000, 99_990_000_000, 150_000_000_000]
    assert list(trades["flags"] & F_VOLUME_ONLY) == [0, 0, F_VOLUME_ONLY]
    engine = BookEngine()
    engine.apply(records)
    book = engine.book_index(MASSIVE, instrument_for("AAPL"))
    assert engine.best(book, BID)[:2] == (99_990_000_000, 3)  # type: ignore[index]
    assert engine.best(book, ASK)[:2] == (100_010_000_000, 5)  # type: ignore[index]
    books.add(parse_event(_quote(bp=0.0, ap=100.02, bs=0, q=9)), 6)  # type: ignore[arg-type]
    engine.apply(books.take())
    assert engine.best(book, BID) is None  # no bid now
    assert engine.best(book, ASK)[:2] == (100_020_000_000, 5)  # type: ignore[index]


def _capture(path: Path, frames: list[list[dict]]) -> Path:
    """Each frame received 2 ms after its last event's time."""
    lines, ts = [], 1_700_000_000_000_000_000
    for f in frames:
        ts = max([ts] + [e["t"] * 1_000_000 + 2_000_000 for e in f if "t" in e])
        lines.append(b"%d %s" % (ts, orjson.dumps(f)))
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    return path


def test_a_tick_capture_runs_through_the_file_driver(tmp_path: Path) -> None:
    """Bars from the capture's trades; the excluded ones, at prices far off, move no OHLC."""
    from app.file_driver import run_files
    from app.settings import load_settings

    frames: list[list[dict]] = [[{"ev": "status", "status": "connected", "message": "hi"}]]
    t0 = 1_700_000_000_000
    for i in range(600):  # ten minutes, a trade and a quote a second
        t = t0 + i * 1000
        frames.append(
            [
                _quote(bp=100 + i % 7 * 0.01, ap=100.05 + i % 7 * 0.01, t=t, q=3 * i + 1),
                _trade(p=100.02 + i % 5 * 0.01, s=10 + i, t=t + 1, q=3 * i + 2),
            ]
        )
        if i % 50 == 0:
            frames.append([_trade(p=500.0, s=7, t=t + 2, q=3 * i + 3, c=[2])])
    path = _capture(tmp_path / "aapl.ticks.jsonl.gz", frames)
    f = open_mbo(path)
    assert f.format == "ticks"
    records = np.concatenate(list(f.chunks()))
    assert f.symbols == {instrument_for("AAPL"): "AAPL"}
    assert (records["action"] == ord("T")).sum() == 612  # 12 average-price prints among them
    run = run_files([str(path)], load_settings({"TAPESTREAM_BAR_INTERVALS": "1m"}), progress=False)
    bars = run.row_topics["bars.1m"]
    assert len(bars) >= 8
    assert max(b["high"] for b in bars) <= 100_060_000_000  # the 500.0 prints set no price
    assert max(b["vwap"] for b in bars) <= 100_060_000_000
    # but count in volume: 10 + i for each regular trade, 7 for each average-price print
    starts = {b["start"] for b in bars}  # the last minute is still open at the file's end

    def in_bars(t_ms: int) -> bool:
        return t_ms * 1_000_000 - t_ms * 1_000_000 % 60_000_000_000 in starts

    regular = sum(10 + i for i in range(600) if in_bars(t0 + i * 1000 + 1))
    prints = sum(7 for i in range(0, 600, 50) if in_bars(t0 + i * 1000 + 2))
    assert prints > 0 and sum(b["volume"] for b in bars) == regular + prints
    assert {b["instrument_id"] for b in bars} == {instrument_for("AAPL")}


def test_a_bad_line_in_a_tick_capture_names_it(tmp_path: Path) -> None:
    path = _capture(tmp_path / "bad.ticks.jsonl.gz", [[_trade()], [_trade(s="x", q=2)]])
    with pytest.raises(InputError, match="line 2: TickTrade size"):
        list(open_mbo(path).chunks())


def test_a_recordings_condition_table_applies_when_it_is_read(tmp_path: Path) -> None:
    from app.feeds.tick_capture import conditions_beside

    path = _capture(tmp_path / "r.ticks.jsonl", [[_trade(c=[14])], [_trade(c=[37], q=2)]])
    path.write_bytes(gzip.decompress(path.read_bytes()))
    trades = lambda: int((np.concatenate(list(open_mbo(path).chunks()))["action"] == 84).sum())  # noqa: E731

    def volume_only() -> int:
        flags = np.concatenate(list(open_mbo(path).chunks()))["flags"]
        return int(np.count_nonzero(flags & F_VOLUME_ONLY))

    assert trades() == 2 and volume_only() == 1  # the default table: 37 (odd lot) volume only
    conditions_beside(path).write_bytes(orjson.dumps(Conditions({14: "ISO"}).as_json()))
    assert trades() == 2 and volume_only() == 1 and open_mbo(path).format == "ticks"
    table = Conditions({14: "ISO"}, frozenset({14})).as_json()
    conditions_beside(path).write_bytes(orjson.dumps(table))
    assert trades() == 1 and volume_only() == 0  # 14 out of volume too, 37 a regular trade


def test_sizes_too_large_for_a_record_and_odd_digits_are_refused() -> None:
    from app.feeds.depth_capture import decimal_units

    with pytest.raises(BadMessage, match="too large"):
        decimal_units("5000000.000", 3, "qty", 1 << 32)
    with pytest.raises(BadMessage, match="not a non-negative decimal"):
        decimal_units("²", 3, "qty")
    with pytest.raises(BadMessage, match="field 'c'"):
        parse_event({**_trade(), "c": 12})


def test_sequences_drop_repeats_and_stale_quotes_but_keep_late_trades() -> None:
    seq = Sequences()
    assert seq.take("quote", 1, 10) and not seq.take("quote", 1, 10)
    assert not seq.take("quote", 1, 9)  # older than the quote taken: stale
    assert seq.take("trade", 1, 20) and seq.take("trade", 1, 15)  # late, never seen: taken
    assert not seq.take("trade", 1, 15) and not seq.take("trade", 1, 20)  # repeats
    assert seq.take("trade", 2, 15)  # a new day starts its numbers again
    copy = seq.copy()
    assert copy.take("trade", 1, 16) and not copy.take("trade", 1, 16)
    assert seq.take("trade", 1, 16)  # the copy is its own
    for n in range(1000, 1000 + RECENT_TRADES):
        seq.take("trade", 3, n)
    assert seq.take("trade", 3, 999)  # late, and nothing let go yet: taken
    assert not seq.take("trade", 3, 999) and not seq.take("trade", 3, 998)  # 999 let go
    assert set(seq.trades) == {2, 3} and len(seq.trades[3].seen) == RECENT_TRADES  # 2 days
    assert not seq.take("trade", 1, 77)  # a day no longer kept: stale
    # numbers let go in arrival order would let a repeat through: 2..256, a late 1, then 257
    s2 = Sequences()
    for n in [*range(2, RECENT_TRADES + 2), 1, RECENT_TRADES + 2]:
        assert s2.take("trade", 5, n)
    assert not any(s2.take("trade", 5, n) for n in range(1, RECENT_TRADES + 3))
