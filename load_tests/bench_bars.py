"""The bars engine alone (tables/bars.py) on generated trades, printed as JSON.

    python -m load_tests.bench_bars [--trades 5000000] [--instruments 10] [--batch 500]
        [--runs 3]

Trades arrive as the agent sees them: runs of one instrument of about --batch trades, cut by
time slices as a replay does (1 s of trades a slice), 1% of them up to 0.5 s out of order: all
within the 2 s lateness, so "late" must print 0.
Prints trades/s with one interval (1m), with the default three (1m, 5m, 15m), and with those
and the indicators updated on every closed bar, each the median of --runs, with the bars
made, so a change that speeds it up by doing less shows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import orjson

from models.intervals import parse_interval
from models.trades import empty_trades
from tables.bars import BarEngine
from tables.indicators import Indicators

SEC = 1_000_000_000


Message = tuple[int, np.ndarray, int]  # instrument, its trades, the source's watermark bound


def generate(n: int, instruments: int, batch: int, seed: int = 7) -> list[Message]:
    rng = np.random.default_rng(seed)
    t = empty_trades(n)
    ts = 1_700_000_000 * SEC + np.cumsum(rng.exponential(2e5, n).astype(np.int64))  # ~5k/s
    t["ts_recv"] = ts
    # 1% stamped up to 0.5 s before they arrive: out of order, within the lateness
    t["ts_event"] = ts - (rng.random(n) < 0.01) * rng.integers(0, SEC // 2, n)
    t["instrument_id"] = rng.integers(1, instruments + 1, n)
    t["price"] = (1000 + np.cumsum(rng.integers(-1, 2, n))) * 250_000_000
    t["size"] = rng.integers(1, 20, n)
    t["side"] = rng.choice(np.array([ord("B"), ord("A")], np.uint8), n)
    t["publisher_id"] = 1
    # Messages as a replay cuts them: each instrument's trades of one slice of time (about
    # `batch` trades a message), each stamped with what replay knows: nothing still to come
    # was received before the slice's first trade.
    per_slice = batch * instruments
    out = []
    for lo in range(0, n, per_slice):
        part = t[lo : lo + per_slice]
        bound = int(part["ts_recv"][0])
        for iid in np.unique(part["instrument_id"]).tolist():
            out.append((iid, part[part["instrument_id"] == iid], bound))
    return out


def run(
    messages: list[Message], intervals: list[int], indicators: bool = False
) -> tuple[float, int, int]:
    e = BarEngine(intervals, 2 * SEC)
    ind: dict[tuple[int, int], Indicators] = {}
    bars = 0
    t0 = time.perf_counter()
    for iid, trades, bound in messages:
        e.add(iid, trades)
        e.advance(bound)
        closed = e.close()
        bars += len(closed)
        if indicators:
            for b in closed:
                ind.setdefault((b.instrument_id, b.interval_ns), Indicators()).add(b.close)
    bars += len(e.flush())
    return time.perf_counter() - t0, bars, e.late_count


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trades", type=int, default=5_000_000)
    ap.add_argument("--instruments", type=int, default=10)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    messages = generate(args.trades, args.instruments, args.batch)
    n = sum(len(m) for _, m, _ in messages)
    out: dict[str, dict] = {}
    for name, ivs, with_ind in (
        ("1m", ["1m"], False),
        ("1m,5m,15m", ["1m", "5m", "15m"], False),
        ("1m,5m,15m+indicators", ["1m", "5m", "15m"], True),
    ):
        runs = [run(messages, [parse_interval(i) for i in ivs], with_ind) for _ in range(args.runs)]
        out[name] = {
            "trades_per_s": round(n / statistics.median(r[0] for r in runs)),
            "bars": runs[0][1],
            "late": runs[0][2],
            "seconds": [round(r[0], 3) for r in runs],
        }
    print(
        orjson.dumps(
            {
                "trades": n,
                "messages": len(messages),
                "instruments": args.instruments,
                "intervals": out,
            },
            option=orjson.OPT_INDENT_2,
        ).decode()
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
