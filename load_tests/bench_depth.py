"""L2 depth books: the engine against a plain dict book, and one worker's sustained rate,
printed as JSON.

    python -m load_tests.bench_depth [--capture FILE] [--runs 3] [--phases engine,worker]

  engine  the real BTCUSDT capture's messages, parsed once, applied in the same run by
          (a) a plain dict book: per update, set or pop each level's price in a dict per side;
          (b) the L2 path the stages use: `DepthBooks` (the venue's sync procedure, then the
              MBO records of each change) and the L3 engine applying those records with
              publication on, in runs of up to 4096 records as a raw-topic message brings them.
          Depth updates/s and level changes/s of each, and (b)/(a).
  worker  the capture replayed at full speed into a fresh worker (the broker must be running:
          `make broker-start`): records/s and depth updates/s from the start of the replay until
          the instruments agent has applied every record, every stage on.
Medians over runs are printed, with every run's figures.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import time
from pathlib import Path

import orjson

from app.feeds.captures import parse_line
from app.feeds.depth_capture import DepthBooks, parse_stream_message
from app.feeds.mbo_files import open_mbo
from load_tests.bench_pipeline import throughput
from load_tests.worker_proc import ROOT, bench_worker
from tables.book_engine import BookEngine
from tables.depth_sync import ASK, BID, DepthUpdate

CAPTURE = ROOT.parent / "shared" / "data" / "binance" / "usdm-btcusdt-2024-08-08.depth-trades.gz"
RUN_RECORDS = 4096


def _messages(path: Path) -> list[tuple[str, object, int]]:
    out = []
    with gzip.open(path, "rb") as fh:
        for line in fh:
            ts, body = parse_line(line)
            symbol, msg = parse_stream_message(body)
            if msg is not None:
                out.append((symbol or "BTCUSDT", msg, ts))
    return out


def _dict_book(messages: list) -> tuple[float, int]:
    book: dict[int, dict[int, int]] = {BID: {}, ASK: {}}
    changes = 0
    t0 = time.perf_counter()
    for _, msg, _ in messages:
        if type(msg) is DepthUpdate:
            for side, rows in ((book[BID], msg.bids), (book[ASK], msg.asks)):
                for price, size in rows:
                    if size:
                        side[price] = size
                    else:
                        side.pop(price, None)
                changes += len(rows)
    return time.perf_counter() - t0, changes


def _l2_engine(messages: list) -> tuple[float, int]:
    books, engine = DepthBooks(), BookEngine()
    records = 0
    t0 = time.perf_counter()
    for symbol, msg, ts in messages:
        books.add(symbol, msg, ts)
        if len(books.rows) >= RUN_RECORDS:
            run = books.take()
            records += len(run)
            engine.apply(run, emit=True)
    run = books.take()
    records += len(run)
    engine.apply(run, emit=True)
    return time.perf_counter() - t0, records


def engine_phase(path: Path) -> dict[str, float]:
    messages = _messages(path)
    updates = sum(type(m) is DepthUpdate for _, m, _ in messages)
    dict_s, changes = _dict_book(messages)
    l2_s, records = _l2_engine(messages)
    return {
        "depth_updates": updates,
        "level_changes": changes,
        "dict_updates_per_s": updates / dict_s,
        "dict_level_changes_per_s": changes / dict_s,
        "l2_updates_per_s": updates / l2_s,
        "l2_level_changes_per_s": changes / l2_s,
        "l2_records": records,
        "l2_over_dict": dict_s / l2_s,
    }


def worker_phase(path: Path, broker: str) -> dict[str, float]:
    records = sum(len(c) for c in open_mbo(path).chunks())
    updates = sum(type(m) is DepthUpdate for _, m, _ in _messages(path))
    with bench_worker(broker) as w:
        r = throughput(w, path, records)
    seconds = records / r["events_per_s"]
    return {
        "records": records,
        "records_per_s": r["events_per_s"],
        "depth_updates_per_s": updates / seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--capture", type=Path, default=CAPTURE)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--phases", default="engine,worker")
    ap.add_argument("--broker", default="kafka://127.0.0.1:9092")
    args = ap.parse_args()
    phases = args.phases.split(",")
    runs: list[dict[str, dict[str, float]]] = []
    for _ in range(args.runs):
        r: dict[str, dict[str, float]] = {}
        if "engine" in phases:
            r["engine"] = engine_phase(args.capture)
        if "worker" in phases:
            r["worker"] = worker_phase(args.capture, args.broker)
        runs.append(r)
    median = {
        phase: {k: statistics.median(run[phase][k] for run in runs) for k in runs[0][phase]}
        for phase in runs[0]
    }
    print(orjson.dumps({"median": median, "runs": runs}, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
