"""A tick vendor's trades and quotes as MBO records: the Massive (formerly Polygon.io) stocks
WebSocket events, from the live source (`app/ticks/`) or a recorded capture.

A capture holds one WebSocket frame per line, `<local receive time, ns> <json array>`, plain or
gzipped, as `faust -A app ticks --record` writes them. Each event of a frame is checked and
normalised (`models.ticks`), then:

    quote (Q)   two F_TOB records, bid then ask: each replaces its side of the book with one
                level (A), or empties it (C) when the side is 0
    trade (T)   T, side = aggressor by the quote rule, else the tick rule (tables/tick_rules.py);
                a trade whose conditions keep it out of the bars' prices is flagged
                F_VOLUME_ONLY, and one kept out of their volume too makes no record at all
    status      nothing (the source's handshake)

Records carry publisher 65002 (tables/venues.py), the instrument id `instrument_for(symbol)`,
`ts_event` from the vendor's `t` (ms), `ts_recv` the local receive time and sequence 0 (the
vendor's `q` grows per symbol but not by one; repeats are dropped, tables/tick_rules.Sequences).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from copy import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from pydantic import ValidationError

from app.feeds.captures import BadMessage, capture_chunks, first_line, named, receive_ns
from models.mbo import F_LAST, F_TOB, F_VOLUME_ONLY, MBO_DTYPE, instrument_id_for, mbo_row
from models.ticks import Tick, TickQuote, TickTrade
from tables.tick_rules import ASK, BID, Aggressor, Conditions, Sequences
from tables.venues import MASSIVE

if TYPE_CHECKING:
    from app.feeds.mbo_files import MboFile

A, C, T = ord("A"), ord("C"), ord("T")
MS = 1_000_000
DAY_NS = 86_400 * 1_000_000_000
PRICE_SCALE = 1_000_000_000


NAMESPACE = "US-EQUITY"  # of the symbology (tables/symbology.py)


def instrument_for(symbol: str) -> int:
    return instrument_id_for(f"{NAMESPACE}:{symbol}")


def _price(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadMessage(f"field {what!r} is {value!r}, not a number")
    if value < 0 or value != value or value > 1e12:
        raise BadMessage(f"field {what!r} is {value!r}, out of range")
    return round(value * PRICE_SCALE)  # exact for any price quoted to 6 decimals or fewer


def _validated(model: type[TickTrade] | type[TickQuote], fields: dict) -> Tick:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadMessage(f"{model.__name__} {where}: {first['msg']}") from None


def _conditions(value: Any) -> tuple:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadMessage(f"field 'c' is {value!r}, not a list of condition ids")
    return tuple(value)  # each checked as an int by the model


def _ms(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BadMessage(f"field 't' is {value!r}, not a time in ms")
    return value * MS


def parse_event(event: Any) -> Tick | None:
    """One vendor event, normalised; None for a status event."""
    if not isinstance(event, dict):
        raise BadMessage("an event that is not a JSON object")
    ev = event.get("ev")
    if ev == "status":
        return None
    sym = event.get("sym")
    base = {
        "symbol": sym,
        "instrument_id": instrument_for(sym) if isinstance(sym, str) else -1,
        "sequence": event.get("q", 0),
    }
    if ev == "T":
        return _validated(
            TickTrade,
            {
                **base,
                "ts_event": _ms(event.get("t")),
                "venue": event.get("x", 0),
                "price": _price(event.get("p"), "p"),
                "size": event.get("s"),
                "trade_id": event.get("i", ""),
                "conditions": _conditions(event.get("c")),
            },
        )
    if ev == "Q":
        return _validated(
            TickQuote,
            {
                **base,
                "ts_event": _ms(event.get("t")),
                "bid_venue": event.get("bx", 0),
                "bid_px": _price(event.get("bp", 0), "bp"),
                "bid_sz": event.get("bs", 0),
                "ask_venue": event.get("ax", 0),
                "ask_px": _price(event.get("ap", 0), "ap"),
                "ask_sz": event.get("as", 0),
                "condition": event.get("c", 0),
            },
        )
    raise BadMessage(f"unknown event {ev!r}")


@dataclass
class TickBooks:
    """Every symbol's latest quote and last trade, and the MBO records of what each tick did."""

    conditions: Conditions = field(default_factory=Conditions)
    rows: list[tuple] = field(default_factory=list)
    state: dict[int, Aggressor] = field(default_factory=dict)
    sequences: dict[int, Sequences] = field(default_factory=dict)
    excluded: int = 0  # trades kept out of the bars by their conditions
    duplicates: int = 0  # repeats, and quotes older than one taken (tables/tick_rules.py)

    def take(self) -> np.ndarray:
        out = np.array(self.rows, dtype=MBO_DTYPE) if self.rows else np.zeros(0, MBO_DTYPE)
        self.rows = []
        return out

    def save(self, instruments: Iterable[int]) -> dict[int, tuple]:
        """What `add` may change for these instruments, for `restore` to put back."""
        out = {}
        for iid in instruments:
            agg = self.state.get(iid)
            seqs = self.sequences.get(iid)
            out[iid] = (
                copy(agg) if agg is not None else None,
                seqs.copy() if seqs is not None else None,
            )
        return out

    def restore(self, saved: dict[int, tuple]) -> None:
        for iid, (agg, seqs) in saved.items():
            if agg is None:
                self.state.pop(iid, None)
            else:
                self.state[iid] = agg
            if seqs is None:
                self.sequences.pop(iid, None)
            else:
                self.sequences[iid] = seqs

    def add(self, tick: Tick, ts_recv: int) -> None:
        iid = tick.instrument_id
        if tick.sequence:
            seqs = self.sequences.get(iid)
            if seqs is None:
                seqs = self.sequences[iid] = Sequences()
            # per trading day: a vendor's sequence may start again with each session
            if not seqs.take(tick.kind, tick.ts_event // DAY_NS, tick.sequence):
                self.duplicates += 1
                return
        agg = self.state.get(iid)
        if agg is None:
            agg = self.state[iid] = Aggressor()
        if isinstance(tick, TickQuote):
            agg.quote(tick.bid_px, tick.ask_px)
            for side, px, sz, last in (
                (BID, tick.bid_px, tick.bid_sz, 0),
                (ASK, tick.ask_px, tick.ask_sz, F_LAST),
            ):
                action = A if px > 0 and sz > 0 else C
                self.rows.append(
                    mbo_row(
                        MASSIVE, iid, tick.ts_event, ts_recv, action, side, px, sz, 0, F_TOB | last
                    )
                )
            return
        flags = F_LAST
        if self.conditions.excluding(tick.conditions) is not None:
            self.excluded += 1
            if not self.conditions.counts_volume(tick.conditions):
                return
            flags |= F_VOLUME_ONLY  # in the bars' volume, not their prices
        priced = flags == F_LAST
        side = agg.side(tick.price, last=priced)
        if tick.aggressor != "N":  # the vendor's own word, where it gives one
            side = ord(tick.aggressor)
            if priced:
                agg.last_side = side
        self.rows.append(
            mbo_row(MASSIVE, iid, tick.ts_event, ts_recv, T, side, tick.price, tick.size, 0, flags)
        )


def parse_frame(text: str | bytes) -> list[Any]:
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BadMessage(f"not JSON: {exc}") from None
    if not isinstance(frame, list):
        raise BadMessage("a frame that is not a JSON array of events")
    return frame


def is_tick_capture(path: Path) -> bool:
    """A capture's first line is `<ns> [...]` holding vendor events."""
    stamp, _, body = first_line(path).partition(b" ")
    return stamp.isdigit() and body.lstrip().startswith(b"[") and b'"ev"' in body


def conditions_beside(capture: Path) -> Path:
    """Where a recording keeps the condition table it was taken with."""
    return capture.with_name(capture.name + ".conditions.json")


def tick_chunks(f: MboFile, chunk_records: int) -> Iterator[np.ndarray]:
    table = conditions_beside(f.path)
    try:
        conditions = (
            Conditions.from_json(orjson.loads(table.read_bytes())) if table.exists() else None
        )
    except (
        OSError,
        orjson.JSONDecodeError,
        KeyError,
        ValueError,
        AttributeError,
        TypeError,
    ) as exc:
        from app.feeds.mbo_files import InputError

        raise InputError(table, "open", f"not a condition table ({exc})") from None
    books = TickBooks(conditions or Conditions())
    f.dataset = "MASSIVE.STOCKS"

    def take(number: int, line: bytes) -> None:
        stamp, _, body = line.partition(b" ")
        ts = receive_ns(stamp)
        for event in parse_frame(body):
            tick = parse_event(event)
            if tick is not None:
                named(f, tick.instrument_id, tick.symbol)
                books.add(tick, ts)

    yield from capture_chunks(f, chunk_records, books, take)
