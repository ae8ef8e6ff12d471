"""Bars on event time (tables/bars.py): Databento's own bars on real CME data, a one-trade-at-
a-time reference on generated streams, batch invariance, lateness and idle instruments."""

from __future__ import annotations

import csv
import io
import itertools
import json
from pathlib import Path

import databento_dbn
import numpy as np
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from app.commands.mbp import fmt_price, fmt_ts
from app.commands.ohlcv import write_ohlcv
from app.feeds.mbo_files import open_mbo, open_trades
from models.intervals import interval_name, parse_interval
from models.mbo import F_VOLUME_ONLY, empty_records
from models.trades import empty_trades, trades_from_mbo
from tables.bars import Bar, BarEngine

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "glbx-mdp3"
TRADES = DATA / "futures-2024-07-01T23-58_2024-07-02T00-02.trades.dbn.zst"
OHLCV = DATA / "futures-2024-07-01T23-40_2024-07-02T00-10.ohlcv-1m.dbn.zst"
MIN = 60_000_000_000
SEC = 1_000_000_000


def _dbn(path: Path) -> tuple[databento_dbn.Metadata, list]:
    raw = zstandard.ZstdDecompressor().stream_reader(path.open("rb")).read()
    dec = databento_dbn.DBNDecoder()
    dec.write(raw)
    records = dec.decode()
    return records[0], records[1:]


def test_ohlcv_equals_databento_bars_for_every_minute_the_trades_cover() -> None:
    meta, _ = _dbn(TRADES)
    _, bars = _dbn(OHLCV)
    out = io.StringIO()
    summary = write_ohlcv([str(TRADES)], MIN, 2 * SEC, out, progress=False)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert summary == {"rows": len(rows), "trades": 120, "late": 0}
    covered = [b for b in bars if b.ts_event >= meta.start and b.ts_event + MIN <= meta.end]
    covered = [b for b in covered if b.instrument_id == 118]  # the trades file is ESU4 only
    assert len(covered) == 4
    assert len(rows) == len(covered)
    by_start = {r["ts_event"]: r for r in rows}
    for b in covered:
        r = by_start[fmt_ts(b.ts_event)]
        assert r["rtype"] == "33" and r["publisher_id"] == str(b.publisher_id)
        assert r["instrument_id"] == "118" and r["symbol"] == "ESU4"
        for name in ("open", "high", "low", "close"):
            assert r[name] == fmt_price(getattr(b, name)), name
        assert int(r["volume"]) == b.volume


def test_trades_of_an_mbo_file_make_the_same_bars_as_the_same_trades_file() -> None:
    # The trades reader takes MBO T records as trades-schema records, field for field.
    trades = np.concatenate(list(open_trades(TRADES).chunks()))
    mbo = empty_records(len(trades) + 1)
    mbo[0]["action"] = ord("A")  # not a trade: left out
    for name in (
        "publisher_id",
        "instrument_id",
        "ts_event",
        "price",
        "size",
        "side",
        "flags",
        "ts_recv",
        "ts_in_delta",
        "sequence",
    ):
        mbo[name][1:] = trades[name]
    mbo["action"][1:] = ord("T")
    again = trades_from_mbo(mbo)
    assert (again == trades).all()
    a, b = BarEngine([MIN], 0), BarEngine([MIN], 0)
    a.add_stream(trades)
    b.add_stream(again)
    assert a.flush() == b.flush()


# --- a reference, one trade at a time -------------------------------------------------------


def reference(stream: list[tuple], intervals: list[int], lateness: int) -> tuple[list, list]:
    """(bars, late) by the definition, trade by trade: (iid, ts_event, price, size, side,
    ts_recv[, volume_only]) each, in ts_recv order. A volume-only trade counts in volume and
    sets no price; a window of only those is flat at its instrument's last close, or no bar
    before there is one."""
    wins: dict[tuple[int, int, int], dict] = {}
    tracks: dict[tuple[int, int], dict] = {}
    last_close: dict[tuple[int, int], int] = {}
    bars, late = [], []

    def close(wm: int) -> None:
        for key in sorted(k for k in wins if k[2] + k[1] <= wm):
            iid, iv, start = key
            w = wins.pop(key)
            tr = tracks.setdefault((iid, iv), {"clock": 0, "first": None, "path": []})
            end = start + iv
            if "o" not in w:  # no trade in it set a price
                px = last_close.get((iid, iv))
                if px is not None:
                    flat = (px, px, px, px, w["v"], w["n"], w["b"], w["s"], float(px), float(px))
                    bars.append((iid, iv, start, *flat))
                continue
            last_close[(iid, iv)] = w["c"]
            # The price path: each trade's price stands from its (never decreasing) time
            # until the next trade's, the last one on past the window's end.
            path = tr["path"]
            area = 0
            for i, (t, px) in enumerate(path):
                upto = path[i + 1][0] if i + 1 < len(path) else end
                area += px * max(0, min(upto, end) - max(t, w["from"]))
            bars.append(
                (
                    iid,
                    iv,
                    start,
                    w["o"],
                    w["h"],
                    w["l"],
                    w["c"],
                    w["v"],
                    w["n"],
                    w["b"],
                    w["s"],
                    w["pv"] / w["pv_v"],
                    # no time to weight by (the instrument's first trade came after this
                    # window's end, in event time): the close, as the engine gives it
                    area / (end - w["from"]) if end > w["from"] else float(w["c"]),
                )
            )

    for iid, ts, px, sz, side, recv, *flag in stream:
        volume_only = bool(flag and flag[0])
        for iv in intervals:
            start = ts - ts % iv
            if start + iv <= recv - lateness:
                late.append((iv, iid, ts))
                continue
            w = wins.setdefault((iid, iv, start), {"v": 0, "n": 0, "b": 0, "s": 0})
            w["v"] += sz
            w["n"] += 1
            w["b"] += sz if side == ord("B") else 0
            w["s"] += sz if side == ord("A") else 0
            if volume_only:
                continue
            tr = tracks.setdefault((iid, iv), {"clock": 0, "first": None, "path": []})
            eff = max(ts, tr["clock"])
            if tr["first"] is None:
                tr["first"] = eff
            if "o" not in w:
                w.update(
                    {
                        "o": px,
                        "ot": ts,
                        "h": px,
                        "l": px,
                        "c": px,
                        "ct": ts,
                        "pv": 0,
                        "pv_v": 0,
                        "from": max(start, tr["first"]),
                    }
                )
            if ts < w["ot"]:
                w["o"], w["ot"] = px, ts
            if ts >= w["ct"]:
                w["c"], w["ct"] = px, ts
            w["h"], w["l"] = max(w["h"], px), min(w["l"], px)
            w["pv"] += px * sz
            w["pv_v"] += sz
            tr["path"].append((eff, px))
            tr["clock"] = eff
        close(recv - lateness)
    wins_left = sorted(wins, key=lambda k: (k[2] + k[1], k[1], k[0]))
    close_all = max(k[2] + k[1] for k in wins_left) if wins_left else 0
    close(close_all)
    return bars, late


def _as_tuple(b: Bar) -> tuple:
    return (
        b.instrument_id,
        b.interval_ns,
        b.start,
        b.open,
        b.high,
        b.low,
        b.close,
        b.volume,
        b.trades,
        b.buy_volume,
        b.sell_volume,
        b.vwap,
        b.twap,
    )


def _trades(stream: list[tuple]) -> np.ndarray:
    """(iid, ts_event, price, size, side[, ts_recv[, volume_only]]) each; ts_recv is ts_event
    if left out."""
    t = empty_trades(len(stream))
    if stream:
        rows = [(*r, r[1]) if len(r) == 5 else r for r in stream]
        iid, ts, px, sz, side, recv = zip(*(r[:6] for r in rows), strict=True)
        t["instrument_id"], t["ts_event"], t["price"], t["size"], t["side"] = iid, ts, px, sz, side
        t["ts_recv"] = recv
        t["publisher_id"] = 1
        t["flags"] = [F_VOLUME_ONLY if len(r) > 6 and r[6] else 0 for r in rows]
    return t


@st.composite
def streams(draw: st.DrawFn) -> list[tuple]:
    n = draw(st.integers(1, 120))
    t = 10 * SEC
    out = []
    for _ in range(n):
        t += draw(st.integers(0, 20 * SEC))
        skew = draw(st.sampled_from([0, 0, 0, 1, 3, 8])) * SEC  # some arrive out of order
        out.append(
            (
                draw(st.sampled_from([1, 2, 3])),
                t - skew,
                draw(st.integers(100, 110)) * 250_000_000,
                draw(st.integers(1, 50)),
                draw(st.sampled_from([ord("B"), ord("A"), ord("N")])),
                t,
                draw(st.sampled_from([False, False, False, True])),  # counts in volume only
            )
        )
    return out


def _run(stream: list[tuple], cuts: list[int], per_instrument: bool) -> tuple[list, int]:
    e = BarEngine([MIN, 5 * MIN], 2 * SEC)
    trades = _trades(stream)
    bars: list[Bar] = []
    bounds = sorted({0, len(stream), *[c % (len(stream) + 1) for c in cuts]})
    for lo, hi in itertools.pairwise(bounds):
        piece = trades[lo:hi]
        if per_instrument:  # as the agent sees them: runs of one instrument
            run_cuts = np.flatnonzero(np.diff(piece["instrument_id"])) + 1
            for run in np.split(piece, run_cuts):
                e.add(int(run["instrument_id"][0]), run)
        else:
            e.add_stream(piece)
        if len(piece):
            e.advance(int(piece["ts_recv"].max()))
        bars += e.close()
    return [_as_tuple(b) for b in bars + e.flush()], e.late_count


@settings(max_examples=150, deadline=None)
@given(streams(), st.lists(st.integers(0, 200), max_size=6), st.booleans())
def test_bars_equal_the_reference_in_any_batches(
    stream: list[tuple], cuts: list[int], per_instrument: bool
) -> None:
    want, late = reference(stream, [MIN, 5 * MIN], 2 * SEC)
    got, late_count = _run(stream, cuts, per_instrument)
    assert sorted(got) == sorted(want)
    assert late_count == len(late)


@settings(max_examples=150, deadline=None)
@given(streams(), st.booleans())
def test_bars_equal_the_reference_fed_one_trade_at_a_time(
    stream: list[tuple], per_instrument: bool
) -> None:
    # Closes between every trade: a trade late into a window no trade had opened still finds
    # the time the price stood there before it.
    want, late = reference(stream, [MIN, 5 * MIN], 2 * SEC)
    got, late_count = _run(stream, list(range(len(stream))), per_instrument)
    assert sorted(got) == sorted(want)
    assert late_count == len(late)


def test_a_late_trade_opening_a_window_gets_the_price_that_stood_there() -> None:
    # 100 stands from 0:30; a trade at 2:00.5; then one stamped 1:59, received 2:01.5, within
    # the lateness: it opens [1:00, 2:00), where 100 stood throughout (the trade itself takes
    # effect at 2:00.5, the latest time already taken).
    stream = [
        (1, 30 * SEC, 100 * 10**9, 1, ord("B")),
        (1, 120_500_000_000, 110 * 10**9, 1, ord("B")),
        (1, 119 * SEC, 105 * 10**9, 1, ord("B"), 121_500_000_000),
    ]
    for cuts in ([], [1, 2]):
        bars = {b[2]: b for b in _run(stream, cuts, per_instrument=True)[0] if b[1] == MIN}
        assert bars[MIN][-1] == 100 * 10**9  # twap of [1:00, 2:00)
        assert bars[MIN][3] == bars[MIN][6] == 105 * 10**9  # its open and close: the trade


def test_a_trade_within_the_lateness_lands_in_its_window_one_beyond_is_late() -> None:
    e = BarEngine([MIN], 5 * SEC)
    e.add(1, _trades([(1, 10 * SEC, 100, 1, ord("B")), (1, 63 * SEC, 101, 1, ord("B"))]))
    e.advance(63 * SEC)
    # stamped 0:59, received 1:04: its minute ended 4 s before it came, within the 5 s
    got = e.add(1, _trades([(1, 59 * SEC, 99, 2, ord("A"), 64 * SEC)]))
    assert len(got.late) == 0
    e.add(1, _trades([(1, 70 * SEC, 102, 1, ord("B"))]))
    assert e.close() == []  # the source has not said 1:05 has passed
    e.advance(70 * SEC)  # watermark 1:05: 0:00-1:00 closes
    (first,) = e.close()
    assert (first.start, first.volume, first.low, first.close) == (0, 3, 99, 99)
    got = e.add(1, _trades([(1, 58 * SEC, 50, 7, ord("A"), 71 * SEC)]))
    assert len(got.late) == 1 and got.late_intervals.tolist() == [MIN]
    assert e.late_count == 1
    (second,) = e.flush()
    assert second.start == MIN and second.volume == 2 and second.low == 101


def test_lateness_is_the_records_own_whatever_the_watermark() -> None:
    # Received 6 s after its minute ended: late with a 5 s lateness even while the watermark
    # lags (as a slow source's does), so a slow source and a fast one agree.
    e = BarEngine([MIN], 5 * SEC)
    got = e.add(1, _trades([(1, 59 * SEC, 99, 2, ord("A"), 66 * SEC)]))
    assert len(got.late) == 1 and e.watermark is None
    # A trade received out of order, after the watermark closed its window, is late too.
    e.advance(70 * SEC)
    got = e.add(1, _trades([(1, 59 * SEC, 99, 2, ord("A"), 61 * SEC)]))
    assert len(got.late) == 1 and e.late_count == 2


def test_an_idle_instrument_closes_when_its_partition_moves_on() -> None:
    e = BarEngine([MIN], 0)
    e.add(7, _trades([(7, 5 * SEC, 100, 1, ord("B"))]))
    e.add(8, _trades([(8, 30 * SEC, 200, 1, ord("B"))]))
    e.advance(30 * SEC)
    assert e.close() == []
    e.add(8, _trades([(8, 61 * SEC, 200, 1, ord("B"))]))
    e.advance(61 * SEC)
    closed = e.close()
    assert [(b.instrument_id, b.start) for b in closed] == [(7, 0), (8, 0)]


@settings(max_examples=60, deadline=None)
@given(streams(), st.integers(0, 200))
def test_exported_state_restores_to_the_same_bars(stream: list[tuple], cut: int) -> None:
    # What a checkpoint keeps: every instrument's export and the watermark.
    trades = _trades(stream)
    cut %= len(stream) + 1
    whole = BarEngine([MIN, 5 * MIN], 2 * SEC)
    first = BarEngine([MIN, 5 * MIN], 2 * SEC)
    got: list[Bar] = []
    want: list[Bar] = []
    for e, out, part in ((whole, want, trades[:cut]), (first, got, trades[:cut])):
        e.add_stream(part)
        if len(part):
            e.advance(int(part["ts_recv"].max()))
        out += e.close()
    again = BarEngine([MIN, 5 * MIN], 2 * SEC)
    for iid in first.instruments():
        again.restore(iid, json.loads(json.dumps(first.export(iid))))
    again.watermark = first.watermark
    for e, out in ((whole, want), (again, got)):
        rest = trades[cut:]
        e.add_stream(rest)
        if len(rest):
            e.advance(int(rest["ts_recv"].max()))
        out += e.close() + e.flush()
    assert got == want


def test_empty_windows_make_no_bar_and_twap_carries_the_standing_price() -> None:
    e = BarEngine([MIN], 0)
    e.add(1, _trades([(1, 30 * SEC, 100, 1, ord("B"))]))
    e.add(1, _trades([(1, 200 * SEC, 110, 1, ord("B"))]))  # 1-3 min are empty
    bars = e.flush()
    assert [b.start for b in bars] == [0, 3 * MIN]
    assert bars[0].twap == 100.0  # from its first trade to the end of the minute
    # 3:00-3:20 at the price standing since 0:30, then 110 for 40 s
    assert bars[1].twap == (100 * 20 + 110 * 40) / 60


def test_intervals_parse_and_print() -> None:
    assert parse_interval("1m") == MIN and parse_interval("15m") == 15 * MIN
    assert interval_name(parse_interval("2h")) == "2h"
    for bad in ("", "0m", "1x", "m", "1.5m"):
        try:
            parse_interval(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_backfill_bars_and_indicators_equal_the_reference_over_the_files_trades(
    tmp_path: Path,
) -> None:
    from app.file_driver import run_files
    from app.settings import load_settings
    from load_tests.gen_mbo import GenConfig, write
    from tables.indicators import Indicators

    path = tmp_path / "g.mbo.dbn.zst"
    write(path, GenConfig(records=150_000, instruments=6, events_per_second=100, seed=3))
    settings = load_settings({"TAPESTREAM_BAR_INTERVALS": "1m,5m"})
    result = run_files([str(path)], settings, progress=False)
    mbo = np.concatenate(list(open_trades(path).chunks()))
    stream = [
        (
            int(t["instrument_id"]),
            int(t["ts_event"]),
            int(t["price"]),
            int(t["size"]),
            int(t["side"]),
            int(t["ts_recv"]),
        )
        for t in mbo
    ]
    want, late = reference(stream, [MIN, 5 * MIN], 2 * SEC)
    # The watermark ends at the last record's arrival, trade or not, less the lateness.
    last_recv = max(int(c["ts_recv"].max()) for c in open_mbo(path).chunks())
    want = [b for b in want if b[2] + b[1] <= last_recv - 2 * SEC]
    got = [
        (
            r["instrument_id"],
            parse_interval(r["interval"]),
            r["start"],
            r["open"],
            r["high"],
            r["low"],
            r["close"],
            r["volume"],
            r["trades"],
            r["buy_volume"],
            r["sell_volume"],
            r["vwap"],
            r["twap"],
        )
        for name in ("bars.1m", "bars.5m")
        for r in result.row_topics[name]
    ]
    assert len(got) > 100 and sorted(got) == sorted(want)
    assert len(result.row_topics["trades.late"]) == len(late)
    # indicators: one row per bar, each the indicators after that bar's close
    ind: dict[tuple[int, str], Indicators] = {}
    rows = result.row_topics["indicators"]
    assert len(rows) == len(got)
    closes = {
        (r["instrument_id"], r["interval"], r["start"]): r["close"]
        for name in ("bars.1m", "bars.5m")
        for r in result.row_topics[name]
    }
    for r in rows:
        key = (r["instrument_id"], r["interval"])
        values = ind.setdefault(key, Indicators()).add(closes[(*key, r["start"])])
        assert {k: r[k] for k in values} == values


def test_volume_only_trades_count_in_volume_and_set_no_price() -> None:
    b, a = ord("B"), ord("A")
    e = BarEngine([MIN], 0)
    e.add(1, _trades([(1, 5 * SEC, 100, 10, b, 5 * SEC, True)]))  # no price yet: no bar
    e.add(1, _trades([(1, 70 * SEC, 100, 10, b), (1, 80 * SEC, 300, 5, a, 80 * SEC, True)]))
    e.add(1, _trades([(1, 90 * SEC, 102, 30, a)]))
    e.add(1, _trades([(1, 130 * SEC, 999, 4, b, 130 * SEC, True)]))  # a window of only those
    e.add(1, _trades([(1, 200 * SEC, 101, 1, b)]))
    e.advance(10 * MIN)
    bars = {bar.start // MIN: bar for bar in e.close()}
    assert 0 not in bars and e.unpriced_volume == 10
    one = bars[1]
    assert (one.open, one.high, one.low, one.close) == (100, 102, 100, 102)  # not 300
    assert (one.volume, one.trades, one.buy_volume, one.sell_volume) == (45, 3, 10, 35)
    assert one.vwap == (100 * 10 + 102 * 30) / 40
    two = bars[2]  # flat at the close before it
    assert (two.open, two.high, two.low, two.close, two.volume) == (102, 102, 102, 102, 4)
    assert two.vwap == two.twap == 102.0
    assert bars[3].open == 101


def test_bars_restored_from_a_checkpoint_go_on_as_before_also_from_an_older_one() -> None:
    stream = [
        (1, 10 * SEC, 100, 10, ord("B"), 10 * SEC, False),
        (1, 20 * SEC, 400, 3, ord("A"), 20 * SEC, True),
        (1, 70 * SEC, 105, 2, ord("B"), 70 * SEC, False),
        (1, 130 * SEC, 400, 3, ord("A"), 130 * SEC, True),
        (1, 200 * SEC, 99, 1, ord("A"), 200 * SEC, False),
    ]

    def run(restore_after: int | None, older: bool = False) -> list[tuple]:
        e = BarEngine([MIN], 0)
        out = []
        for i, row in enumerate(stream):
            e.add(1, _trades([row]))
            e.advance(row[5])
            out += [_as_tuple(bar) for bar in e.close()]
            if i == restore_after:
                state = json.loads(json.dumps(e.export(1)))
                if older:  # as written before priced_volume and last_close were kept
                    state["open"] = [w[:-1] for w in state["open"]]
                    state["tracks"] = [t[:4] for t in state["tracks"]]
                e = BarEngine([MIN], 0)
                e.advance(row[5])
                e.restore(1, state)
        return out + [_as_tuple(bar) for bar in e.flush()]

    whole = run(None)
    assert [b[7] for b in whole] == [13, 2, 3, 1]  # volumes, the flat third bar among them
    for i in range(len(stream)):
        assert run(i) == whole, i
    assert run(0, older=True)[0][7] == 13  # an older checkpoint takes its volume as priced
