"""Seeded, deterministic synthetic Databento MBO for many instruments, with exact ground truth.

    python -m load_tests.gen_mbo --records 5000000 --out var/sample/synth.mbo.dbn.zst

Writes a valid DBN (v3) MBO file, `.dbn` or `.dbn.zst`, and beside it `<out>.truth.json`: the
exact final book of every instrument (levels with size and order count, live orders, last
sequence) and the number of records of each action, as the ground truth tests and benchmarks
check against.

The mix follows real MBO: every instrument starts with an R and an F_SNAPSHOT book; then adds
(some events carry several adds under one F_LAST), full and partial cancels, modifies that move
the price (losing priority), raise the size (losing priority) or lower it (keeping it), trades
whose T (aggressor side) is followed by an F and a C per resting order filled, and now and then a
fresh snapshot (R, then the live book as F_SNAPSHOT adds). Each event gets the next
per-instrument sequence number. Memory is bounded by the live orders, not by the record count.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import databento_dbn
import numpy as np
import orjson
import zstandard

from models.mbo import (
    F_LAST,
    F_SNAPSHOT,
    MBO_DTYPE,
    MBO_LENGTH_WORDS,
    MBO_RTYPE,
    UNDEF_PRICE,
)

TICK = 10_000_000  # 0.01 in 1e-9 units
A, C, M, R, T, F = (ord(x) for x in "ACMRTF")
BID, ASK, NONE = ord("B"), ord("A"), ord("N")
CHUNK = 65_536
DATASET = "SYNTH.MBO"
PUBLISHER_ID = 1


@dataclass
class GenConfig:
    records: int = 1_000_000
    instruments: int = 50
    orders_per_instrument: int = 200
    seed: int = 7
    start_ns: int = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z
    events_per_second: float = 20_000.0
    snapshot_every: int = 200_000  # mean records between mid-stream snapshots of one instrument


@dataclass
class _Book:
    iid: int
    mid: int
    orders: dict[int, list[int]] = field(default_factory=dict)  # id -> [side, price, size]
    levels: tuple[dict[int, list[int]], dict[int, list[int]]] = field(
        default_factory=lambda: ({}, {})
    )  # per side (bid, ask): price -> order ids in priority order
    ids: list[int] = field(default_factory=list)  # live order ids, for O(1) random picks
    pos: dict[int, int] = field(default_factory=dict)
    sequence: int = 0
    ts_event: int = 0  # the last one: a matching engine's clock never steps back
    records: int = 0
    actions: dict[str, int] = field(default_factory=dict)

    def best(self, side: int) -> int | None:
        lv = self.levels[0 if side == BID else 1]
        if not lv:
            return None
        return max(lv) if side == BID else min(lv)

    def add(self, oid: int, side: int, price: int, size: int) -> None:
        self.orders[oid] = [side, price, size]
        self.levels[0 if side == BID else 1].setdefault(price, []).append(oid)
        self.pos[oid] = len(self.ids)
        self.ids.append(oid)

    def remove(self, oid: int) -> None:
        side, price, _ = self.orders.pop(oid)
        i = self.pos.pop(oid)
        last = self.ids.pop()
        if last != oid:
            self.ids[i] = last
            self.pos[last] = i
        lv = self.levels[0 if side == BID else 1]
        q = lv[price]
        q.remove(oid)
        if not q:
            del lv[price]

    def truth(self) -> dict:
        def side_levels(i: int, reverse: bool) -> list[list[int]]:
            return [
                [p, sum(self.orders[o][2] for o in q), len(q)]
                for p, q in sorted(self.levels[i].items(), reverse=reverse)
            ]

        return {
            "publisher_id": PUBLISHER_ID,
            "records": self.records,
            "actions": dict(sorted(self.actions.items())),
            "orders": len(self.orders),
            "last_sequence": self.sequence,
            "bids": side_levels(0, True),
            "asks": side_levels(1, False),
        }


class MboGenerator:
    def __init__(self, config: GenConfig) -> None:
        self.cfg = config
        self.rng = random.Random(config.seed)
        self.clock = config.start_ns
        self.next_oid = 1_000_000
        self.books = [
            _Book(iid=1000 + i, mid=(50_00 + 37 * i) * TICK) for i in range(config.instruments)
        ]
        # Zipf-like activity: a few instruments are busy, most are quiet, as on a real feed.
        self.weights = [1.0 / (i + 1) ** 0.8 for i in range(config.instruments)]
        self.emitted = 0

    # -- output ---------------------------------------------------------------------------
    def chunks(self) -> Iterator[np.ndarray]:
        rows: list[tuple] = []
        cfg = self.cfg
        for book in self.books:
            self._snapshot(book, rows, initial=True)
        while self.emitted + len(rows) < cfg.records:
            if len(rows) >= CHUNK:
                yield self._flush(rows)
                rows = []
            book = self.rng.choices(self.books, self.weights)[0]
            self._event(book, rows)
        if rows:
            yield self._flush(rows)

    def _flush(self, rows: list[tuple]) -> np.ndarray:
        # The last event may run past `records`; whole events only, so the book stays exact.
        self.emitted += len(rows)
        return np.array(rows, dtype=MBO_DTYPE)

    def truth(self) -> dict:
        return {
            "records": self.emitted,
            "dataset": DATASET,
            "seed": self.cfg.seed,
            "instruments": {str(b.iid): b.truth() for b in self.books if b.records},
        }

    # -- events ---------------------------------------------------------------------------
    def _emit(
        self, rows: list[tuple], book: _Book, event: list[tuple[int, int, int, int, int, int]]
    ) -> None:
        """event: (action, side, price, size, order_id, flags) records sharing one sequence."""
        self.clock += max(1, int(self.rng.expovariate(self.cfg.events_per_second) * 1e9))
        book.sequence += 1
        ts_recv = self.clock
        delta = self.rng.randrange(2_000, 40_000)
        delta = min(delta, ts_recv - book.ts_event)
        book.ts_event = ts_recv - delta
        last = len(event) - 1
        for i, (action, side, price, size, oid, flags) in enumerate(event):
            fl = flags | (F_LAST if i == last else 0)
            rows.append(
                (
                    MBO_LENGTH_WORDS,
                    MBO_RTYPE,
                    PUBLISHER_ID,
                    book.iid,
                    ts_recv - delta,
                    oid,
                    price,
                    size,
                    fl,
                    0,
                    action,
                    side,
                    ts_recv,
                    delta,
                    book.sequence,
                )
            )
            key = chr(action)
            book.actions[key] = book.actions.get(key, 0) + 1
        book.records += len(event)

    def _snapshot(self, book: _Book, rows: list[tuple], initial: bool) -> None:
        if initial:
            for _ in range(self.cfg.orders_per_instrument // 2):
                side = BID if self.rng.random() < 0.5 else ASK
                self._place(book, side, self._price_for(book, side), record=None)
        event = [(R, NONE, UNDEF_PRICE, 0, 0, F_SNAPSHOT)]
        for i, side in ((0, BID), (1, ASK)):
            lv = book.levels[i]
            for price in sorted(lv, reverse=(side == BID)):
                for oid in lv[price]:
                    event.append((A, side, price, book.orders[oid][2], oid, F_SNAPSHOT))
        self._emit(rows, book, event)

    def _price_for(self, book: _Book, side: int) -> int:
        opp = book.best(ASK if side == BID else BID)
        depth = 1 + min(int(self.rng.expovariate(0.35)), 30)
        if side == BID:
            anchor = opp if opp is not None else book.mid + TICK
            return anchor - depth * TICK
        anchor = opp if opp is not None else book.mid - TICK
        return anchor + depth * TICK

    def _size(self) -> int:
        return max(1, int(self.rng.lognormvariate(2.5, 1.0)))

    def _place(self, book: _Book, side: int, price: int, record: list | None) -> None:
        oid = self.next_oid
        self.next_oid += 1
        size = self._size()
        book.add(oid, side, price, size)
        if record is not None:
            record.append((A, side, price, size, oid, 0))

    def _event(self, book: _Book, rows: list[tuple]) -> None:
        rng = self.rng
        n = len(book.orders)
        target = self.cfg.orders_per_instrument
        if rng.random() * self.cfg.snapshot_every < 1.0:
            self._snapshot(book, rows, initial=False)
            return
        u = rng.random()
        # Below target the book fills; above it removals outpace adds, so it hovers near target.
        p_add = 0.65 if n < target else 0.2
        if n == 0 or u < p_add:
            event: list = []
            for _ in range(1 if rng.random() < 0.9 else rng.randint(2, 4)):
                side = BID if rng.random() < 0.5 else ASK
                self._place(book, side, self._price_for(book, side), event)
            self._emit(rows, book, event)
            return
        u = (u - p_add) / (1 - p_add)
        if u < 0.45:
            self._cancel(book, rows)
        elif u < 0.75:
            self._modify(book, rows)
        else:
            self._trade(book, rows)

    def _random_order(self, book: _Book) -> int:
        return book.ids[self.rng.randrange(len(book.ids))]

    def _cancel(self, book: _Book, rows: list[tuple]) -> None:
        oid = self._pick(book)
        side, price, size = book.orders[oid]
        if size > 1 and self.rng.random() < 0.3:
            part = self.rng.randrange(1, size)
            book.orders[oid][2] = size - part
            self._emit(rows, book, [(C, side, price, part, oid, 0)])
        else:
            book.remove(oid)
            self._emit(rows, book, [(C, side, price, size, oid, 0)])

    def _modify(self, book: _Book, rows: list[tuple]) -> None:
        oid = self._pick(book)
        side, price, size = book.orders[oid]
        roll = self.rng.random()
        new_price, new_size = price, size
        if roll < 0.4:
            step = self.rng.choice((-3, -2, -1, 1, 2, 3)) * TICK
            opp = book.best(ASK if side == BID else BID)
            cand = price + step
            if opp is None or (cand < opp if side == BID else cand > opp):
                new_price = cand
        elif roll < 0.7 or size == 1:
            new_size = size + self.rng.randint(1, 20)
        else:
            new_size = self.rng.randrange(1, size)
        if new_price != price or new_size > size:
            book.remove(oid)  # loses priority: goes to the back of its (new) level
            book.add(oid, side, new_price, new_size)
        else:
            book.orders[oid][2] = new_size
        self._emit(rows, book, [(M, side, new_price, new_size, oid, 0)])

    def _trade(self, book: _Book, rows: list[tuple]) -> None:
        aggressor = BID if self.rng.random() < 0.5 else ASK
        resting = ASK if aggressor == BID else BID
        price = book.best(resting)
        if price is None:
            self._cancel(book, rows)
            return
        queue = book.levels[0 if resting == BID else 1][price]
        want = self._size()
        fills: list[tuple[int, int]] = []
        for oid in list(queue[:3]):
            if want <= 0:
                break
            qty = min(want, book.orders[oid][2])
            fills.append((oid, qty))
            want -= qty
        total = sum(q for _, q in fills)
        event = [(T, aggressor, price, total, 0, 0)]
        for oid, qty in fills:
            event.append((F, resting, price, qty, oid, 0))
        for oid, qty in fills:
            event.append((C, resting, price, qty, oid, 0))
            if qty == book.orders[oid][2]:
                book.remove(oid)
            else:
                book.orders[oid][2] -= qty
        self._emit(rows, book, event)

    def _pick(self, book: _Book) -> int:
        # Mostly orders near the touch, where real cancels and modifies cluster.
        if self.rng.random() < 0.5:
            side = BID if self.rng.random() < 0.5 else ASK
            best = book.best(side)
            if best is not None:
                q = book.levels[0 if side == BID else 1][best]
                return q[self.rng.randrange(len(q))]
        return self._random_order(book)


def write_dbn(
    path: str | Path,
    records: Iterable[np.ndarray],
    *,
    start_ns: int,
    symbols: list[str],
    dataset: str = DATASET,
    on_chunk: Callable[[], None] | None = None,
) -> None:
    """MBO records (MBO_DTYPE chunks) as a DBN file, `.dbn` or `.dbn.zst`, written under a
    temporary name and renamed into place, so no half file is ever read."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = databento_dbn.Metadata(
        dataset=dataset,
        schema=databento_dbn.Schema.MBO,
        start=start_ns,
        stype_in=databento_dbn.SType.INSTRUMENT_ID,
        stype_out=databento_dbn.SType.INSTRUMENT_ID,
        symbols=symbols,
    )
    tmp = out.with_name(out.name + ".part")
    with open(tmp, "wb") as raw:
        sink = (
            zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False)
            if out.name.endswith(".zst")
            else raw
        )
        sink.write(meta.encode())
        for chunk in records:
            sink.write(chunk.tobytes())
            if on_chunk is not None:
                on_chunk()
        if sink is not raw:
            sink.close()
    tmp.rename(out)


def write(path: str | Path, config: GenConfig, progress: bool = False) -> dict:
    """Write the file and its truth; return the truth."""
    gen = MboGenerator(config)
    t0 = time.monotonic()

    def show() -> None:
        rate = gen.emitted / max(1e-9, time.monotonic() - t0)
        print(
            f"\rgenerated {gen.emitted:,}/{config.records:,} records ({rate:,.0f}/s)",
            end="",
            file=sys.stderr,
        )

    write_dbn(
        path,
        gen.chunks(),
        start_ns=config.start_ns,
        symbols=[str(b.iid) for b in gen.books],
        on_chunk=show if progress else None,
    )
    if progress:
        print(file=sys.stderr)
    truth = gen.truth()
    truth_path(path).write_bytes(orjson.dumps(truth))
    return truth


def option_definitions(
    instrument_ids: list[int], underlyings: tuple[str, ...] = ("SYN", "ALT"), ts: int = 0
) -> list[databento_dbn.InstrumentDefMsg]:
    """A made-up option chain over the generated instruments: in turn a call and a put on each
    underlying, over two expiries and a ladder of strikes."""
    out = []
    for i, iid in enumerate(instrument_ids):
        right = "CP"[i % 2]
        underlying = underlyings[(i // 2) % len(underlyings)]
        expiry = ts + (30 + 30 * ((i // (2 * len(underlyings))) % 2)) * 86_400 * 10**9
        strike = (50 + 5 * (i // 4)) * 10**9
        out.append(
            databento_dbn.InstrumentDefMsg(
                publisher_id=PUBLISHER_ID,
                instrument_id=iid,
                ts_event=ts,
                ts_recv=ts,
                min_price_increment=TICK,
                display_factor=10**9,
                raw_symbol=f"{underlying} {right}{strike // 10**9}",
                asset=underlying,
                security_type="OOF",
                instrument_class=databento_dbn.InstrumentClass(right),
                security_update_action=databento_dbn.SecurityUpdateAction("A"),
                expiration=expiry,
                strike_price=strike,
                underlying=underlying,
            )
        )
    return out


def write_definitions(
    path: str | Path, definitions: list[databento_dbn.InstrumentDefMsg], start_ns: int = 0
) -> Path:
    """A definition-schema DBN file (zstd if the name ends in .zst), as Databento's."""
    out = Path(path)
    meta = databento_dbn.Metadata(
        dataset=DATASET,
        schema=databento_dbn.Schema.DEFINITION,
        start=start_ns,
        stype_in=databento_dbn.SType.INSTRUMENT_ID,
        stype_out=databento_dbn.SType.INSTRUMENT_ID,
        symbols=[str(d.instrument_id) for d in definitions],
    )
    body = meta.encode() + b"".join(bytes(d) for d in definitions)
    if out.name.endswith(".zst"):
        body = zstandard.ZstdCompressor(level=3).compress(body)
    out.write_bytes(body)
    return out


def truth_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".truth.json")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output .dbn or .dbn.zst")
    ap.add_argument("--records", type=int, default=GenConfig.records)
    ap.add_argument("--instruments", type=int, default=GenConfig.instruments)
    ap.add_argument("--orders-per-instrument", type=int, default=GenConfig.orders_per_instrument)
    ap.add_argument("--seed", type=int, default=GenConfig.seed)
    ap.add_argument(
        "--rate",
        type=float,
        default=GenConfig.events_per_second,
        help="mean events per second of event time",
    )
    args = ap.parse_args(argv)
    if not (args.out.endswith(".dbn") or args.out.endswith(".dbn.zst")):
        ap.error("--out must end in .dbn or .dbn.zst")
    cfg = GenConfig(
        records=args.records,
        instruments=args.instruments,
        orders_per_instrument=args.orders_per_instrument,
        seed=args.seed,
        events_per_second=args.rate,
    )
    t0 = time.monotonic()
    truth = write(args.out, cfg, progress=sys.stderr.isatty())
    secs = time.monotonic() - t0
    print(
        orjson.dumps(
            {
                "out": args.out,
                "records": truth["records"],
                "instruments": len(truth["instruments"]),
                "live_orders": sum(i["orders"] for i in truth["instruments"].values()),
                "seconds": round(secs, 2),
                "records_per_s": round(truth["records"] / secs),
            }
        ).decode()
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
