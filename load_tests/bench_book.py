"""The book engine against bare decoding, in one run, printed as JSON.

    python -m load_tests.bench_book [--records 5000000] [--instruments 200]
                                    [--orders-per-instrument 5000] [--runs 3]
                                    [--engine compiled|reference]

On one generated file (cached under var/bench/), each run measures bare DBN decoding (the floor
any book pays) and decode-plus-book, checks every final book against the generator's ground
truth, and the JSON gives events/s for both, their ratio, peak RSS, and the RSS the books hold
per live order (RSS after building the books minus RSS before, over the live orders, from the
first run: later runs reuse what the allocator kept) and the bytes of the engine's arrays per
live order.
`compiled` is tables.book_engine.BookEngine (the default, what agents use); `reference` is the
pure-Python tables.order_book.OrderBook it is tested against. The compiled kernels are warmed
(loaded from numba's cache, or compiled) before timing.
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import orjson

from app.feeds.mbo_files import open_mbo
from load_tests.gen_mbo import GenConfig, truth_path, write
from tables.book_engine import BookEngine
from tables.order_book import ASK, BID, OrderBook

ROOT = Path(__file__).resolve().parents[1]


def _array_bytes(engine: BookEngine) -> int:
    """Bytes of the engine's state arrays (each buffer once: some arrays are views of one)."""
    seen: dict[int, int] = {}
    for a in engine.S:
        if isinstance(a, np.ndarray):
            base = a if a.base is None else a.base
            seen[id(base)] = base.nbytes
    return sum(seen.values())


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def _decode(path: Path) -> int:
    n = 0
    for chunk in open_mbo(path).chunks():
        n += len(chunk)
    return n


def _books(path: Path) -> tuple[int, dict[int, OrderBook]]:
    books: dict[int, OrderBook] = {}
    n = 0
    for chunk in open_mbo(path).chunks():
        n += len(chunk)
        for rec in chunk.tolist():
            (_, _, pub, iid, _, oid, px, sz, fl, _, act, side, _, _, seq) = rec
            b = books.get(iid)
            if b is None:
                b = books[iid] = OrderBook(pub, iid)
            b.apply(act, side, px, sz, oid, fl, seq)
    return n, books


def _engine(path: Path) -> tuple[int, BookEngine]:
    engine = BookEngine()
    n = 0
    for chunk in open_mbo(path).chunks():
        n += len(chunk)
        engine.apply(chunk)
    return n, engine


def _correct(books: dict[int, OrderBook], truth: dict) -> bool:
    for iid, t in truth["instruments"].items():
        b = books.get(int(iid))
        if b is None:
            return False
        if [list(x) for x in b.levels(BID, 1 << 30)] != t["bids"]:
            return False
        if [list(x) for x in b.levels(ASK, 1 << 30)] != t["asks"]:
            return False
        if len(b.orders) != t["orders"]:
            return False
    return True


def _engine_correct(engine: BookEngine, truth: dict) -> bool:
    for iid, t in truth["instruments"].items():
        b = next((i for i, k in enumerate(engine.book_keys) if k[1] == int(iid)), None)
        if b is None:
            return False
        if [list(x) for x in engine.levels(b, BID, 1 << 30)] != t["bids"]:
            return False
        if [list(x) for x in engine.levels(b, ASK, 1 << 30)] != t["asks"]:
            return False
        if engine.order_count(b) != t["orders"]:
            return False
    return True


def bench_file(records: int, instruments: int, orders: int) -> tuple[Path, dict]:
    """The generated benchmark file (cached under var/bench/) and its ground truth."""
    bench = ROOT / "var" / "bench"
    bench.mkdir(parents=True, exist_ok=True)
    path = bench / f"book-{records}-{instruments}-{orders}.mbo.dbn.zst"
    if not path.exists():
        cfg = GenConfig(records=records, instruments=instruments, orders_per_instrument=orders)
        write(path, cfg)
    return path, orjson.loads(truth_path(path).read_bytes())


def _warm_file() -> Path:
    path = ROOT / "var" / "bench" / "warm.mbo.dbn.zst"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path, GenConfig(records=20_000, instruments=4, orders_per_instrument=100))
    return path


def arguments(doc: str) -> argparse.ArgumentParser:
    """The benchmark file's options (bench_restart uses the same file)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=5_000_000)
    ap.add_argument("--instruments", type=int, default=200)
    ap.add_argument("--orders-per-instrument", type=int, default=5_000)
    ap.add_argument("--runs", type=int, default=3)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = arguments(__doc__)
    ap.add_argument("--engine", choices=("compiled", "reference"), default="compiled")
    args = ap.parse_args(argv)
    compiled = args.engine == "compiled"
    if compiled:
        BookEngine().apply(next(open_mbo(_warm_file()).chunks()))

    path, truth = bench_file(args.records, args.instruments, args.orders_per_instrument)

    runs = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        n = _decode(path)
        decode_s = time.perf_counter() - t0
        gc.collect()
        rss0 = _rss_bytes()
        t0 = time.perf_counter()
        if compiled:
            n2, engine = _engine(path)
        else:
            n2, books = _books(path)
        book_s = time.perf_counter() - t0
        rss1 = _rss_bytes()
        if compiled:
            live = engine.order_count()
            correct = _engine_correct(engine, truth)
            held = _array_bytes(engine)
        else:
            live = sum(len(b.orders) for b in books.values())
            correct = _correct(books, truth)
            held = 0
        runs.append(
            {
                "decode_events_per_s": n / decode_s,
                "book_events_per_s": n2 / book_s,
                "book_vs_decode": (n2 / book_s) / (n / decode_s),
                "live_orders": live,
                "bytes_per_live_order": (rss1 - rss0) / max(1, live),
                "array_bytes_per_live_order": held / max(1, live),
                "correct": correct,
            }
        )
        engine = books = None  # type: ignore[assignment]
        gc.collect()

    def med(k: str) -> float:
        return statistics.median(r[k] for r in runs)

    print(
        orjson.dumps(
            {
                "engine": (
                    "tables.book_engine.BookEngine (compiled)"
                    if compiled
                    else "tables.order_book.OrderBook (pure Python reference)"
                ),
                "file": str(path.relative_to(ROOT)),
                "events": truth["records"],
                "runs": args.runs,
                "decode_events_per_s": round(med("decode_events_per_s")),
                "book_events_per_s": round(med("book_events_per_s")),
                "book_vs_decode": round(med("book_vs_decode"), 4),
                "live_orders": int(med("live_orders")),
                # RSS from the first run only: later runs in this process reuse memory the
                # allocator kept from the one before, and their RSS deltas say little.
                "bytes_per_live_order": round(runs[0]["bytes_per_live_order"]),
                "array_bytes_per_live_order": round(med("array_bytes_per_live_order")),
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "correct": all(r["correct"] for r in runs),
            },
            option=orjson.OPT_INDENT_2,
        ).decode()
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
