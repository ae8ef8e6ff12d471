"""Vendor ticks through one worker, printed as JSON.

    python -m load_tests.bench_ticks [--events 400000] [--symbols 20] [--runs 3]

Writes a capture of generated Massive stocks events (the stand-in vendor's market: 40% trades,
one in 25 an excluded odd lot; the rest quotes), 2,000 events a second of event time, then
replays it at full speed into a fresh worker (the broker must be running: `make broker-start`)
and measures ticks/s (events) and records/s from the start of the replay until the
instruments agent has applied every record, every stage on. Medians over runs, with every
run's figures.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
from pathlib import Path

import orjson

from app.feeds.mbo_files import open_mbo
from app.ticks.vendor import StandInVendor
from load_tests.bench_pipeline import throughput
from load_tests.worker_proc import BENCH_DIR, bench_worker

EVENTS_PER_S = 2000
T0_MS = 1_700_000_000_000


def capture(events: int, symbols: int) -> tuple[Path, int]:
    """The capture (one event per frame, received 2 ms after its time) and its record count."""
    path = BENCH_DIR / f"ticks-{events}-{symbols}.jsonl.gz"
    if not path.exists():
        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        vendor = StandInVendor(symbols=[f"S{i:03d}" for i in range(symbols)], seed=7)
        n = 0
        vendor.clock_ms = lambda: T0_MS + n * 1000 // EVENTS_PER_S
        with gzip.open(path, "wb", compresslevel=1) as fh:
            for n in range(1, events + 1):
                event = vendor.event(n)
                fh.write(b"%d %s\n" % ((event["t"] + 2) * 1_000_000, orjson.dumps([event])))
    records = sum(len(c) for c in open_mbo(path).chunks())
    return path, records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--symbols", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--broker", default="kafka://127.0.0.1:9092")
    args = ap.parse_args()
    path, records = capture(args.events, args.symbols)
    runs = []
    for _ in range(args.runs):
        with bench_worker(args.broker) as w:
            r = throughput(w, path, records)
        seconds = records / r["events_per_s"]
        runs.append({"ticks_per_s": args.events / seconds, "records_per_s": r["events_per_s"]})
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out = {"events": args.events, "records": records, "median": median, "runs": runs}
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
