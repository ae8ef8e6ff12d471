"""Institutional flow detection (tables/pressure.py, baselines.py, signals.py, ifd.py):
scenarios with flows planted at known windows over 30 sessions, the side rules and OFI on
small cases, and the baseline's independence from the window it scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.mbo import UNDEF_PRICE
from models.trades import empty_trades
from tables.baselines import Baselines, SessionClock, Stat
from tables.ifd import PRESSURE, IfdConfig, IfdStage
from tables.pressure import BUY, SELL, FlowState, PressureEngine, PressureWindow
from tables.signals import SignalConfig, SignalEngine

MIN = 60_000_000_000
DAY = 86_400_000_000_000
T0 = 19_000 * DAY  # a midnight
WINDOW = 5 * MIN
SESSIONS = 30
BUCKETS = 12  # each session trades for an hour: 12 five-minute windows
INSTRUMENTS = (11, 12)


def _trades(rows: list[tuple[int, int, int, int]]) -> np.ndarray:
    """(ts, price, size, side) each; received when stamped."""
    t = empty_trades(len(rows))
    if rows:
        ts, px, sz, side = zip(*rows, strict=True)
        t["ts_event"], t["ts_recv"], t["price"], t["size"], t["side"] = ts, ts, px, sz, side
        t["publisher_id"] = 1
    return t


def scenario(
    plants: dict[tuple[int, int, int], str], seed: int = 5, flip: bool = False
) -> list[np.ndarray]:
    """One array of trades per (session, window), both instruments, in time order. Background:
    about 100 trades a window with random sides; a plant adds 1.5 times that volume, 95% of
    it on one side. `plants`: (instrument, session, bucket) -> "BUY" or "SELL"."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(SESSIONS):
        for b in range(BUCKETS):
            start = T0 + s * DAY + b * WINDOW
            rows = []
            for iid in INSTRUMENTS:
                n = int(rng.poisson(100))
                sides = rng.choice([ord("B"), ord("A")], n)
                sizes = rng.integers(1, 11, n)
                plant = plants.get((iid, s, b))
                if plant is not None:
                    m = int(rng.poisson(150))
                    main, other = (ord("B"), ord("A")) if plant == "BUY" else (ord("A"), ord("B"))
                    sides = np.concatenate([sides, np.where(rng.random(m) < 0.95, main, other)])
                    sizes = np.concatenate([sizes, rng.integers(1, 11, m)])
                    n += m
                times = np.sort(rng.integers(0, WINDOW, n))
                price = 100_000_000_000 + rng.integers(-20, 21, n) * 250_000_000
                if flip:
                    sides = np.where(sides == ord("B"), ord("A"), ord("B"))
                rows += [
                    (iid, start + int(t), int(p), int(z), int(d))
                    for t, p, z, d in zip(times, price, sizes, sides, strict=True)
                ]
            rows.sort(key=lambda r: r[1])
            out.append(rows)
    return out


def run(windows: list, config: IfdConfig | None = None) -> tuple[list[dict], list[dict]]:
    stage = IfdStage(config or IfdConfig())
    pressure, signals = [], []
    for rows in windows:
        for iid in INSTRUMENTS:
            mine = [r[1:] for r in rows if r[0] == iid]
            if mine:
                t = _trades(mine)
                t["instrument_id"] = iid
                stage.add(iid, t, np.arange(len(t)))
        if rows:
            for topic, row in stage.advance(rows[-1][1]):
                (pressure if topic == PRESSURE else signals).append(row)
    for topic, row in stage.flush():
        (pressure if topic == PRESSURE else signals).append(row)
    return pressure, signals


PLANTS = {
    (iid, 8 + 2 * k, (5 * k + iid) % BUCKETS): ("BUY" if (k + iid) % 2 else "SELL")
    for iid in INSTRUMENTS
    for k in range(11)
}


def _where(sig: dict) -> tuple[int, int, int]:
    return (sig["instrument_id"], sig["session"] - _session0(), sig["bucket"])


def _session0() -> int:
    return T0 // DAY


@pytest.fixture(scope="module")
def planted() -> tuple[list[dict], list[dict]]:
    return run(scenario(PLANTS))


def test_every_planted_flow_fires_once_in_its_window_with_its_direction(planted) -> None:
    pressure, signals = planted
    assert len(pressure) == SESSIONS * BUCKETS * len(INSTRUMENTS)
    fired = {}
    for s in signals:
        assert _where(s) not in fired, "two signals for one window"
        fired[_where(s)] = s["direction"]
    for where, direction in PLANTS.items():
        assert fired.get(where) == direction, where
    false = [w for w in fired if w not in PLANTS]
    unplanted = len(pressure) - len(PLANTS)
    # Two-sided z >= 2 on both volume and flow is rare by chance; allow 1% of windows.
    assert len(false) <= max(2, unplanted // 100), false


def test_nothing_fires_before_the_minimum_of_sessions(planted) -> None:
    _, signals = planted
    assert all(s["baseline"]["log_volume"]["n"] >= 5 for s in signals)
    early = {(11, 2, 3): "BUY"}
    _, sig = run(scenario(early))
    assert all(_where(s) != (11, 2, 3) for s in sig)
    # the same flow with a lower minimum does fire: it is the minimum that held it back
    _, sig = run(scenario(early), IfdConfig(signal=SignalConfig(min_sessions=2)))
    assert any(_where(s) == (11, 2, 3) for s in sig)


def test_flipping_every_side_flips_every_signal_and_nothing_else(planted) -> None:
    _, signals = planted
    _, flipped = run(scenario(PLANTS, flip=True))
    assert len(flipped) == len(signals) > 0
    opposite = {"BUY": "SELL", "SELL": "BUY"}
    for a, b in zip(signals, flipped, strict=True):
        assert _where(a) == _where(b)
        assert b["direction"] == opposite[a["direction"]]
        assert (b["buy_volume"], b["sell_volume"]) == (a["sell_volume"], a["buy_volume"])
        assert b["tfi"] == pytest.approx(-a["tfi"], abs=1e-12)
        assert b["z_flow"] == pytest.approx(-a["z_flow"], abs=1e-9)
        for k in ("z_vol", "confidence", "volume", "trades", "vwap", "last_price", "start"):
            assert b[k] == pytest.approx(a[k], abs=1e-9), k


def test_a_window_never_sees_itself_in_its_baseline(planted) -> None:
    pressure, _ = planted
    history: dict[tuple[int, int], list[tuple[int, float]]] = {}
    for row in sorted(pressure, key=lambda r: r["start"]):
        key = (row["instrument_id"], row["bucket"])
        before = [v for s, v in history.get(key, []) if s < row["session"]][-20:]
        if before:
            a = np.array(before)
            median = np.median(a)
            spread = max(1.4826 * np.median(np.abs(a - median)), 0.25)
            kept = a[np.abs(a - median) <= 3 * spread]
            mean, std = kept.mean(), max(kept.std(), 0.25)
            assert row["z_vol"] == pytest.approx((math.log1p(row["volume"]) - mean) / std)
            assert row["baseline_sessions"] == len(before)
        else:
            assert "z_vol" not in row
        history.setdefault(key, []).append((row["session"], math.log1p(row["volume"])))
    # Scoring the same window again (a redelivery) neither sees it nor records it twice.
    engine = SignalEngine(SessionClock(WINDOW), Baselines())
    w = PressureWindow(1, WINDOW, T0, 60, 40, 100, 10, 0, 0, 0, 1.0, 1)
    first, again = engine.score(w), engine.score(w)
    assert first.baseline is None and again.baseline is None


def test_an_earlier_flow_in_the_bucket_does_not_hide_the_next() -> None:
    """One session's flow is an outlier of its bucket's history: it is left out of the mean
    and std (and counted), so the next flow in that bucket scores as far out as the first."""
    ordinary = np.linspace(-2.0, 2.0, 19).tolist()
    base = Baselines()
    for s, v in enumerate([*ordinary, 14.0]):  # the last session held a flow
        base.update(1, 0, s, {"log_volume": 5.0, "tfi": 0.0, "ofi": 0.0, "net_score": v})
    st = base.stats(1, 0, 20)["net_score"]
    clean = np.array(ordinary)
    assert st.trimmed == 1 and st.n == 20
    assert st.mean == pytest.approx(clean.mean()) and st.std == pytest.approx(clean.std())
    assert st.z(14.0) > 8


def test_history_from_before_the_net_score_scores_against_the_fair_coin() -> None:
    """Baselines restored from a checkpoint written before the net score existed hold no
    values of it: until sessions carrying it come in, it scores against mean 0 and std 1."""
    base = Baselines()
    base.restore(1, 0, [[s, {"log_volume": 5.0, "tfi": 0.1, "ofi": 2.0}] for s in range(6)])
    st = base.stats(1, 0, 6)
    assert st["net_score"] == Stat(0.0, 1.0, 0) and st["log_volume"].n == 6


def test_cooldown_holds_per_direction() -> None:
    plants = {(11, 10, 2): "BUY", (11, 10, 4): "BUY", (11, 10, 6): "SELL", (11, 10, 9): "BUY"}
    _, signals = run(scenario(plants), IfdConfig(signal=SignalConfig(cooldown_ns=15 * MIN)))
    mine = {(s["bucket"], s["direction"]) for s in signals if _where(s)[:2] == (11, 10)}
    # 4 is 10 minutes after 2: cooled down; 6 is the other direction; 9 is 35 minutes on
    assert mine == {(2, "BUY"), (6, "SELL"), (9, "BUY")}


def test_side_rules_quote_then_tick() -> None:
    state = FlowState()
    bbo = {
        "event": [0],
        "ts_event": [1],
        "ts_recv": [1],
        "bid_px": [99],
        "bid_sz": [5],
        "ask_px": [101],
        "ask_sz": [5],
    }
    # events 1..5, all side N: above mid, below, at mid after an up-tick, at mid again (the
    # tick rule carries the last change), and at mid after a down-tick
    t = _trades([(2, 101, 1, ord("N")), (3, 99, 1, ord("N")), (4, 100, 1, ord("N"))])
    t = np.concatenate([t, _trades([(5, 100, 1, ord("N")), (6, 100, 1, ord("B"))])])
    f = state.flow(t, np.array([1, 2, 3, 4, 5]), bbo)
    assert f.sign.tolist() == [BUY, SELL, BUY, BUY, BUY]
    # the book empties on one side: the quote rule cannot apply, the tick rule does
    empty = {**bbo, "event": [6], "ask_px": [UNDEF_PRICE], "ask_sz": [0]}
    f = state.flow(_trades([(7, 98, 1, ord("N")), (8, 98, 1, ord("A"))]), np.array([7, 8]), empty)
    assert f.sign.tolist() == [SELL, SELL]


def test_ofi_follows_cont_kukanov_stoikov() -> None:
    state = FlowState()
    rows = [
        (100, 5, 102, 5),
        (100, 7, 102, 5),
        (101, 3, 102, 5),
        (101, 3, 101, 2),
        (100, 4, 101, 6),
    ]
    bbo = {
        "event": list(range(len(rows))),
        "ts_event": [1] * len(rows),
        "ts_recv": [1] * len(rows),
        "bid_px": [r[0] for r in rows],
        "bid_sz": [r[1] for r in rows],
        "ask_px": [r[2] for r in rows],
        "ask_sz": [r[3] for r in rows],
    }
    f = state.flow(_trades([]), np.zeros(0, np.int64), bbo)

    def e(p: tuple, c: tuple) -> int:
        pb0, qb0, pa0, qa0 = p
        pb, qb, pa, qa = c
        return (pb >= pb0) * qb - (pb <= pb0) * qb0 - (pa <= pa0) * qa + (pa >= pa0) * qa0

    assert f.ofi.tolist() == [0] + [e(rows[i - 1], rows[i]) for i in range(1, len(rows))]
    assert f.ofi.tolist() == [0, 2, 3, -2, -7]


def test_pressure_lateness_and_large_trades() -> None:
    p = PressureEngine(WINDOW, 2_000_000_000, large_size=5)
    t = _trades([(T0 + 1, 100, 5, ord("B")), (T0 + 2, 101, 1, ord("A"))])
    p.add(1, FlowState().flow(t, np.arange(2), None))
    p.advance(T0 + WINDOW + 2_000_000_000)
    (w,) = p.close()
    assert (w.buy_volume, w.sell_volume, w.large_volume, w.trades, w.last_price) == (
        5,
        1,
        5,
        2,
        101,
    )
    assert w.tfi == pytest.approx(4 / 6)
    late = _trades([(T0 + 3, 100, 1, ord("B"))])
    late["ts_recv"] = T0 + WINDOW + 3_000_000_000
    assert p.add(1, FlowState().flow(late, np.arange(1), None)) == 1


def test_quote_rule_on_real_itch_trades_agrees_with_databento_books() -> None:
    """ARL (Nasdaq ITCH): 35 of its 46 trades have side N. Each is classified against the mid
    of the book before its event; Databento's own MBP-10 rows (the expected file) give that
    book independently."""
    import csv
    from decimal import Decimal

    from app.feeds.batching import Batcher
    from app.feeds.mbo_files import read_all
    from models.trades import trades_from_columns
    from tables import book_messages
    from tables.book_state import BookSet
    from tests.conftest import ARL_MBO_CSV, ARL_MBP10_CSV, require

    records = read_all(require(ARL_MBO_CSV))
    books, flows = BookSet(), FlowState()
    signs: list[int] = []
    sides: list[int] = []
    for pos, batch in enumerate([*Batcher(1).add(records), *Batcher(1).flush_all()]):
        iid = batch.instrument_id
        if not books.loaded(iid):
            books.load(iid, 0, {}.get)
        applied = books.process(iid, batch.records, pos)
        out = book_messages.messages(iid, applied, books)
        if "trades" in out or "bbo" in out:
            t, ev = trades_from_columns(out["trades"]) if "trades" in out else (_trades([]), [])
            f = flows.flow(t, np.asarray(ev, np.int64), out.get("bbo"))
            signs += f.sign.tolist()
            sides += t["side"].tolist()
    assert len(signs) == 46
    with open(require(ARL_MBP10_CSV)) as fh:
        rows = [r for r in csv.DictReader(fh) if r["action"] == "T"]
    last_px = None
    last_dir = 0
    checked = 0
    for row, sign, side in zip(rows, signs, sides, strict=True):
        px = Decimal(row["price"])
        if last_px is not None and px != last_px:
            last_dir = 1 if px > last_px else -1
        last_px = px
        if side != ord("N"):
            assert sign == (BUY if side == ord("B") else SELL)
            continue
        bid, ask = row["bid_px_00"], row["ask_px_00"]
        want = last_dir
        if bid and ask:
            rel = 2 * px - Decimal(bid) - Decimal(ask)
            want = (rel > 0) - (rel < 0) or last_dir
        assert sign == want, row[""]
        checked += 1
    assert checked == 35


def test_backfill_pressure_and_signals_do_not_depend_on_batch_size(tmp_path) -> None:
    from app.file_driver import run_files
    from app.settings import load_settings
    from load_tests.gen_mbo import GenConfig, write

    path = tmp_path / "g.mbo.dbn.zst"
    write(path, GenConfig(records=120_000, instruments=5, events_per_second=100, seed=11))
    got = []
    for batch in ("300", "4096"):
        s = load_settings({"TAPESTREAM_BATCH_RECORDS": batch, "TAPESTREAM_PRESSURE_INTERVAL": "1m"})
        r = run_files([str(path)], s, progress=False)
        got.append((r.row_topics["pressure"], r.row_topics["signals"], r.tables["baselines"]))
    assert len(got[0][0]) > 30
    for a, b in zip(got[0], got[1], strict=True):
        assert sorted(a, key=repr) == sorted(b, key=repr)


def test_session_start_follows_the_venue_of_the_publisher() -> None:
    """The scenario's trades come from publisher 1 (CME Globex, GLBX): a GLBX start places
    its windows as a global start would, another venue's start changes nothing."""
    windows = scenario(PLANTS)
    glbx = IfdConfig(venue_starts=(("GLBX", 13 * 3_600_000_000_000),))
    everywhere = IfdConfig(session_start_ns=13 * 3_600_000_000_000)
    other = IfdConfig(venue_starts=(("XNAS", 13 * 3_600_000_000_000),))
    by_venue, by_default = run(windows, glbx), run(windows, other)
    assert by_venue == run(windows, everywhere)
    assert by_default == run(windows)
    assert [r["session"] for r in by_venue[0]] != [r["session"] for r in by_default[0]]
    clock = SessionClock(WINDOW, 0, (("GLBX", 22 * 3_600_000_000_000),))
    hour = 3_600_000_000_000
    # 21:00 UTC: the last hour of CME's session that began at 22:00 the day before
    assert clock.place(T0 + 21 * hour, 1) == (18_999, 23 * 12)
    assert clock.place(T0 + 21 * hour, 2) == (19_000, 21 * 12)
    # 23:00 UTC: an hour into CME's next session
    ts = T0 + 23 * hour
    assert clock.place(ts, 1) == (19_000, 12) and clock.place(ts, 2) == (19_000, 23 * 12)
    assert clock.place(ts, None) == clock.place(ts, 2)
    assert clock.place(ts, 99_999) == clock.place(ts, 2)  # a publisher Databento does not list


def test_ifd_state_restored_from_a_checkpoint_goes_on_as_if_never_stopped() -> None:
    from tables.ifd_state import IfdSet

    windows = scenario(PLANTS)
    cfg = IfdConfig()

    def feed(ifd: IfdSet, part: list) -> list:
        out = []
        for rows in part:
            for iid in INSTRUMENTS:
                mine = [r[1:] for r in rows if r[0] == iid]
                t = _trades(mine)
                t["instrument_id"] = iid
                ifd.add(0, iid, t, np.arange(len(t)), None)
            out += ifd.advance(0, rows[-1][1])
        return out

    whole = IfdSet(cfg)
    whole.load(0, {}.get)
    want = feed(whole, windows)
    cut = len(windows) * 2 // 3
    first = IfdSet(cfg)
    first.load(0, {}.get)
    got = feed(first, windows[:cut])
    store: dict[bytes, bytes] = {}
    for _ in range(2):  # the second checkpoint writes nothing new
        for rows in first.checkpoint().values():
            store.update((k, v) for k, v in rows if v is not None)
    again = IfdSet(cfg)
    again.load(0, store.get)
    got += feed(again, windows[cut:])
    assert got == want
    assert again.recent_signals(11) == whole.recent_signals(11)
    assert again.partitions[0].stage.publishers == {11: 1, 12: 1}


def test_trades_that_set_no_price_are_left_out_of_pressure() -> None:
    """An odd lot far off the market (F_VOLUME_ONLY: volume in the bars, no price) changes no
    pressure window: not its VWAP, its last price or its volume."""
    from models.trades import VOLUME_ONLY

    sec, px = 1_000_000_000, 1_000_000_000

    def window(with_odd_lot: bool) -> dict:
        stage = IfdStage(IfdConfig(interval_ns=60 * sec, lateness_ns=0))
        msg = {
            "instrument_id": 7,
            "publisher_id": [1, 1, 1],
            "event": [1, 2, 3],
            "sequence": [1, 2, 3],
            "ts_event": [sec, 2 * sec, 3 * sec],
            "ts_recv": [sec, 2 * sec, 3 * sec],
            "price": [100 * px, 300 * px, 101 * px],
            "size": [10, 7, 20],
            "side": "BBA",
        }
        if with_odd_lot:
            msg[VOLUME_ONLY] = [0, 1, 0]
        else:  # the same trades without it
            msg = {k: [v[0], v[2]] if isinstance(v, list) else v for k, v in msg.items()}
            msg["side"] = "BA"
        stage.add_book_output(7, {"trades": msg})
        rows = stage.advance(120 * sec)
        return next(r for t, r in rows if t == PRESSURE)

    assert window(True) == window(False)
