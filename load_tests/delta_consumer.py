"""An example consumer of tapestream's `deltas` topic, with nothing but aiokafka, the standard
library and models/delta_state.py (one file, standard library only, to copy): it applies every
delta to rebuild each instrument's top-N books and latest bars, indicators, pressure and signals,
and prints a line per instrument now and then.

    python -m load_tests.delta_consumer --bootstrap 127.0.0.1:9092 --topic deltas
        [--snapshots deltas.snapshots]

With `--snapshots` it joins late: it starts from each instrument's snapshot (written by
`faust -A app snapshots`) and reads only the deltas after it, and holds what a consumer that read
the delta topic from its start holds. docs/topics.md ("The delta topic", "Snapshots for late
joiners") documents both records. A delta repeated under at-least-once (same instrument_id and
start) is recognised and skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time

from models.delta_state import DeltaState, read_deltas_from, read_snapshots


def _line(state: DeltaState, iid: int) -> str:
    parts = [f"instrument {iid}"]
    for (i, pub), book in sorted(state.books.items()):
        if i == iid and book.bids and book.asks:
            bid, ask = book.bids[0], book.asks[0]
            parts.append(f"pub {pub}: {bid[1]} @ {bid[0] / 1e9:g} / {ask[1]} @ {ask[0] / 1e9:g}")
    for (i, interval), bar in sorted(state.bars.items()):
        if i == iid:
            parts.append(f"{interval} close {bar['close'] / 1e9:g} vol {bar['volume']}")
    return " | ".join(parts)


async def consume(
    bootstrap: str,
    topic: str,
    seconds: float | None,
    every: float,
    snapshots: str | None = None,
    idle: float | None = None,
) -> DeltaState:
    """Apply the delta topic (after the snapshots, with `snapshots`) until `seconds` have
    passed, or nothing has come for `idle` seconds, or SIGINT/SIGTERM."""
    from aiokafka import AIOKafkaConsumer

    state, covered, resume = DeltaState(), {}, {}
    if snapshots is not None:
        state, covered, resume = await read_snapshots(bootstrap, snapshots)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",  # deltas of unfinished transactions never show
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await consumer.start()
    await read_deltas_from(consumer, topic, resume)
    deadline = None if seconds is None else time.monotonic() + seconds
    shown = last = time.monotonic()
    try:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            batches = await consumer.getmany(timeout_ms=500)
            touched: set[int] = set()
            for records in batches.values():
                for rec in records:
                    delta = json.loads(rec.value)
                    if rec.offset <= covered.get(delta["instrument_id"], -1):
                        continue  # in the instrument's snapshot already
                    if state.apply(delta):
                        touched.add(delta["instrument_id"])
            if batches:
                last = time.monotonic()
            elif idle is not None and time.monotonic() - last > idle:
                break
            if touched and time.monotonic() - shown >= every:
                shown = time.monotonic()
                for iid in sorted(touched):
                    print(_line(state, iid), flush=True)
    finally:
        await consumer.stop()
    print(
        json.dumps({"deltas": state.applied, "repeats": state.repeats, "books": len(state.books)}),
        flush=True,
    )
    return state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--topic", default="deltas", help="with TAPESTREAM_TOPIC_PREFIX, if set")
    ap.add_argument("--seconds", type=float, default=None, help="stop after this long")
    ap.add_argument("--every", type=float, default=1.0, help="print at most this often (s)")
    ap.add_argument("--snapshots", default=None, help="start from this snapshot topic")
    args = ap.parse_args()
    asyncio.run(consume(args.bootstrap, args.topic, args.seconds, args.every, args.snapshots))


if __name__ == "__main__":
    main()
