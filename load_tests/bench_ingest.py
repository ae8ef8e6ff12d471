"""Ticks pushed to POST /ingest/ticks of one worker, printed as JSON.

    python -m load_tests.bench_ingest [--ticks 200000] [--batch 500] [--clients 4] [--runs 3]

A fresh worker (the broker must be running: `make broker-start`) with ingest on; `--clients`
concurrent HTTP clients post the ticks (normalised records of 20 symbols, 40% trades, stamped
now, with sequence numbers) in requests of `--batch`. Measured: ticks/s answered 200 (the
webhook's own rate: checks, aggressor and condition rules, one message per instrument sent and
acknowledged) and records/s until the instruments agent has applied every record (every stage
on). Medians over runs, with every run's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

import aiohttp
import orjson

from load_tests.worker_proc import BenchWorker, bench_worker

TOKEN = "bench-ingest-token-0123456789"
PX = 1_000_000_000


def requests_of(ticks: int, batch: int, symbols: int, seed: int = 7) -> list[bytes]:
    """The request bodies, in order; each symbol's sequence grows across them."""
    rng = random.Random(seed)
    syms = [f"S{i:03d}" for i in range(symbols)]
    mids = {s: rng.randint(20, 500) * PX for s in syms}
    seq = dict.fromkeys(syms, 0)
    bodies, body = [], []
    t0 = time.time_ns()
    for n in range(ticks):
        s = rng.choice(syms)
        seq[s] += 1
        mid = mids[s] = max(PX, mids[s] + rng.choice((-1, 0, 1)) * PX // 100)
        ts = t0 + n * 1000  # a microsecond apart: on time for every bar
        if rng.random() < 0.4:
            body.append({"kind": "trade", "symbol": s, "ts_event": ts, "sequence": seq[s],
                         "price": mid + rng.choice((-1, 1)) * PX // 200,
                         "size": rng.choice((1, 100, 100, 200, 500))})  # fmt: skip
        else:
            body.append({"kind": "quote", "symbol": s, "ts_event": ts, "sequence": seq[s],
                         "bid_px": mid - PX // 200, "bid_sz": rng.randint(1, 9) * 100,
                         "ask_px": mid + PX // 200, "ask_sz": rng.randint(1, 9) * 100})  # fmt: skip
        if len(body) == batch:
            bodies.append(orjson.dumps(body))
            body = []
    if body:
        bodies.append(orjson.dumps(body))
    return bodies


async def post_all(url: str, bodies: list[bytes], clients: int) -> tuple[float, int, int]:
    """(seconds, ticks taken, records made), with `clients` posting from one shared queue."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    taken = records = 0
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal taken, records
        while not queue.empty():
            body = queue.get_nowait()
            async with session.post(url, data=body, headers=headers) as r:
                answer = await r.json()
                if r.status != 200:
                    raise RuntimeError(f"{r.status}: {answer}")
                taken += answer["ticks"] - answer["duplicates"]
                records += answer["records"]

    t0 = time.monotonic()
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return time.monotonic() - t0, taken, records


def run(w: BenchWorker, ticks: int, batch: int, clients: int, symbols: int) -> dict[str, float]:
    bodies = requests_of(ticks, batch, symbols)
    t0 = time.monotonic()
    seconds, taken, records = asyncio.run(post_all(f"{w.url}/ingest/ticks", bodies, clients))
    done = w.wait_processed("instruments", records)
    return {
        "ticks_per_s": taken / seconds,
        "records_per_s_applied": records / (done - t0),
        "ticks": taken,
        # quotes taken after a newer one of their symbol (requests race): stale, dropped
        "stale_quotes": ticks - taken,
        "records": records,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ticks", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--symbols", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--broker", default="kafka://127.0.0.1:9092")
    args = ap.parse_args()
    runs = []
    for _ in range(args.runs):
        with bench_worker(args.broker, TAPESTREAM_INGEST_TOKEN=TOKEN) as w:
            runs.append(run(w, args.ticks, args.batch, args.clients, args.symbols))
    keys = ("ticks_per_s", "records_per_s_applied")
    median = {k: statistics.median(r[k] for r in runs) for k in keys}
    out = {"batch": args.batch, "clients": args.clients, "median": median, "runs": runs}
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
