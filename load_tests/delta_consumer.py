"""An example consumer of tapestream's `deltas` topic, with nothing but aiokafka and the
standard library: it applies every delta to rebuild each instrument's top-N books and latest
bars, indicators, pressure and signals, and prints a line per instrument now and then.

    python -m load_tests.delta_consumer --bootstrap 127.0.0.1:9092 --topic deltas

docs/topics.md ("The delta topic") documents the record. A delta repeated under at-least-once (same
instrument_id and start) is recognised and skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from dataclasses import dataclass, field
from typing import Any

UNDEF_PRICE = (1 << 63) - 1


@dataclass
class Book:
    bids: list[list[int]] = field(default_factory=list)  # [price, size, count], best first
    asks: list[list[int]] = field(default_factory=list)


@dataclass
class DeltaState:
    """Everything the deltas say, as of the last one applied."""

    books: dict[tuple[int, int], Book] = field(default_factory=dict)  # (instrument, publisher)
    bars: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)  # (iid, interval)
    indicators: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)
    pressure: dict[int, dict[str, Any]] = field(default_factory=dict)
    signals: list[dict[str, Any]] = field(default_factory=list)
    last_start: dict[int, int] = field(default_factory=dict)
    applied: int = 0
    repeats: int = 0

    def apply(self, delta: dict[str, Any]) -> bool:
        """Apply one delta; False for a repeat (an instrument's deltas come in time order)."""
        iid, start = delta["instrument_id"], delta["start"]
        if start <= self.last_start.get(iid, -1):
            self.repeats += 1
            return False
        self.last_start[iid] = start
        for change in delta.get("books", ()):
            book = self.books.setdefault((iid, change["publisher_id"]), Book())
            book.bids = _levels(book.bids, change["bid_depth"], change["bids"])
            book.asks = _levels(book.asks, change["ask_depth"], change["asks"])
        for bar in delta.get("bars", ()):
            self.bars[(iid, bar["interval"])] = bar
        for row in delta.get("indicators", ()):
            self.indicators[(iid, row["interval"])] = row
        for row in delta.get("pressure", ()):
            self.pressure[iid] = row
        self.signals.extend(delta.get("signals", ()))
        self.applied += 1
        return True


def _levels(levels: list[list[int]], depth: int, changes: list[list[int]]) -> list[list[int]]:
    """A side after a change: cut (or padded) to `depth` levels, then each [level, price, size,
    count] set."""
    out = [list(lv) for lv in levels[:depth]]
    out += [[UNDEF_PRICE, 0, 0]] * (depth - len(out))
    for i, price, size, count in changes:
        out[i] = [price, size, count]
    return out


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


async def consume(bootstrap: str, topic: str, seconds: float | None, every: float) -> DeltaState:
    from aiokafka import AIOKafkaConsumer

    state = DeltaState()
    consumer = AIOKafkaConsumer(
        topic,
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
    deadline = None if seconds is None else time.monotonic() + seconds
    shown = time.monotonic()
    try:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            batches = await consumer.getmany(timeout_ms=500)
            touched: set[int] = set()
            for records in batches.values():
                for rec in records:
                    delta = json.loads(rec.value)
                    if state.apply(delta):
                        touched.add(delta["instrument_id"])
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
    args = ap.parse_args()
    asyncio.run(consume(args.bootstrap, args.topic, args.seconds, args.every))


if __name__ == "__main__":
    main()
