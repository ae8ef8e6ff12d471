"""Patterns on bars (tables/patterns.py) against a reference that recomputes each rule from the
whole history, on random bar series, and across a save and restore."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tables.bars import Bar
from tables.indicators import Indicators
from tables.patterns import PatternConfig, Patterns

MIN = 60_000_000_000


def _bar(i: int, o: int, h: int, low: int, c: int, v: int) -> Bar:
    return Bar(7, 1, MIN, i * MIN, o, h, low, c, v, 1, 0, 0, float(c), float(c))


@st.composite
def series(draw: st.DrawFn) -> list[Bar]:
    out = []
    px = 1000
    for i in range(draw(st.integers(1, 80))):
        o = px
        px = max(10, px + draw(st.integers(-60, 60)))
        h = max(o, px) + draw(st.integers(0, 20))
        low = min(o, px) - draw(st.integers(0, 20))
        v = draw(st.sampled_from([1, 5, 10, 12, 40, 100]))
        out.append(_bar(i, o, h, low, px, v))
    return out


def reference(bars: list[Bar], cfg: PatternConfig) -> list[tuple]:
    out = []
    ind = Indicators()
    rsis: list[float | None] = []
    for i, b in enumerate(bars):
        v = ind.add(b.close)
        prev = bars[max(0, i - cfg.lookback) : i]
        if len(prev) == cfg.lookback:
            mean = sum(p.volume for p in prev) / cfg.lookback
            if b.volume > cfg.volume_factor * mean:
                out.append(("volume_spike", i, "BUY" if b.close >= b.open else "SELL"))
            hi, lo = max(p.high for p in prev), min(p.low for p in prev)
            if b.close > hi * (1 + cfg.breakout_pct / 100):
                out.append(("breakout", i, "BUY"))
            elif b.close < lo * (1 - cfg.breakout_pct / 100):
                out.append(("breakdown", i, "SELL"))
        sma = v["sma_20"]
        if sma and abs((b.close - sma) / sma * 100) > cfg.price_pct:
            out.append(("price_spike", i, "BUY" if b.close > sma else "SELL"))
        rsi = v["rsi_14"]
        last = next((r for r in reversed(rsis) if r is not None), None)
        if rsi is not None and last is not None:
            if last <= cfg.rsi_high < rsi:
                out.append(("rsi_overbought", i, "SELL"))
            elif last >= cfg.rsi_low > rsi:
                out.append(("rsi_oversold", i, "BUY"))
        rsis.append(rsi)
    return out


def run(bars: list[Bar], cfg: PatternConfig, cut: int | None = None) -> list[tuple]:
    ind = Indicators()
    p = Patterns(cfg)
    out = []
    for i, b in enumerate(bars):
        if i == cut:  # what a checkpoint keeps, through JSON
            p = Patterns.from_dict(json.loads(json.dumps(p.to_dict())), cfg)
        for s in p.add(b, ind.add(b.close)):
            out.append((s["kind"], s["start"] // MIN, s["direction"]))
    return out


@settings(max_examples=200, deadline=None)
@given(series(), st.integers(0, 80), st.sampled_from([3, 20]))
def test_patterns_equal_the_reference_and_survive_a_restore(
    bars: list[Bar], cut: int, lookback: int
) -> None:
    cfg = PatternConfig(lookback=lookback, price_pct=2.0)
    want = reference(bars, cfg)
    assert run(bars, cfg) == want
    assert run(bars, cfg, cut) == want


def test_a_volume_spike_carries_what_it_was_computed_from() -> None:
    p = Patterns(PatternConfig(lookback=3))
    for i in range(3):
        assert p.add(_bar(i, 100, 101, 99, 100, 10), {}) == []
    (s,) = p.add(_bar(3, 100, 101, 99, 99, 31), {})
    assert (s["kind"], s["direction"], s["volume"], s["mean_volume"]) == (
        "volume_spike",
        "SELL",
        31,
        10.0,
    )
    assert len(s["id"]) == 24 and s["interval"] == "1m" and s["start"] == 3 * MIN


def test_processing_lag_fires_over_the_limit_at_most_once_a_minute_per_partition() -> None:
    from tables.patterns import LagWatch

    w = LagWatch(limit_s=5.0, every_s=60.0)
    assert w.observe(0, 7, produced_s=100.0, now_s=104.0) is None
    s = w.observe(0, 7, produced_s=100.0, now_s=106.0)
    assert s is not None and s["kind"] == "processing_lag" and s["lag_s"] == 6.0
    assert w.observe(0, 7, produced_s=110.0, now_s=130.0) is None  # within the minute
    assert w.observe(1, 8, produced_s=110.0, now_s=130.0) is not None  # another partition
    assert w.observe(0, 7, produced_s=150.0, now_s=170.0) is not None
    assert LagWatch(limit_s=0).observe(0, 7, produced_s=0.0, now_s=1e9) is None  # off
