"""Binance USD-M futures market streams as MBO records: diff-depth updates, REST depth snapshots
and trades, from a recorded capture or from the live source (`app/depth/`).

A capture holds one message per line, `<local receive time, ns> <json>`, plain or gzipped:
combined-stream messages (`{"stream": ..., "data": {...}}`: `depthUpdate`, `trade`,
`bookTicker`) and REST snapshots, either bare (`{"lastUpdateId": ...}`, for the file's one
symbol) or wrapped as `{"stream": "<symbol>@depthSnapshot", "data": {...}}` (as the live
source records them).

The book is kept by `tables.depth_sync.DepthSync` and reaches the L3 engine as MBP records
(F_MBP: each sets one level's aggregate size, with no orders behind it), so L2 books publish
through the same stages, topics and views as MBO books, with no order counts:

    snapshot            R (F_SNAPSHOT), then an A per level (F_MBP | F_SNAPSHOT)
    new level           A          size changed   M          level removed   C    (F_MBP)
    pu break            N with F_MAYBE_BAD_BOOK: the book is suspect until the next snapshot
    trade               T, side = aggressor (`m`: the buyer made the market, so A sold into it)

The records of one message end with F_LAST. Prices are the MBO fixed point (1e-9); sizes are in
lots of 10^-SIZE_DECIMALS of the base asset (0.001 BTC), and a quantity finer than that is an
error rather than a rounding. `ts_event` is the venue's transaction time `T`, `ts_recv` the local
receive time. `bookTicker` messages are not records: the L3 engine publishes the BBO itself, and
the tests hold it to them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.feeds.captures import (
    MAX_NS,
    BadMessage,
    capture_chunks,
    first_line,
    named,
    parse_line,
)
from models.mbo import (
    F_LAST,
    F_MAYBE_BAD_BOOK,
    F_MBP,
    F_SNAPSHOT,
    MBO_DTYPE,
    UNDEF_PRICE,
    instrument_id_for,
    mbo_row,
)
from tables.depth_sync import ASK, BID, DepthSnapshot, DepthSync, DepthUpdate, Kind
from tables.venues import BINANCE_USDM

if TYPE_CHECKING:
    from app.feeds.mbo_files import MboFile

VENUE = "BINANCE-USDM"
SIZE_DECIMALS = 3
A, C, M, T, R, N = (ord(x) for x in "ACMTRN")
NONE = ord("N")
PUBLISHER_ID = BINANCE_USDM  # the project's own (tables/venues.py)
MS = 1_000_000


def instrument_for(symbol: str) -> int:
    return instrument_id_for(f"{VENUE}:{symbol.upper()}")


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def decimal_units(text: Any, decimals: int, what: str, limit: int = 1 << 62) -> int:
    """A non-negative decimal string as an integer count of 10^-decimals, below `limit`."""
    if not isinstance(text, str) or not text or len(text) > 40:
        raise BadMessage(f"{what} {text!r} is not a decimal string")
    whole, _, frac = text.partition(".")
    if not _digits(whole) or (frac and not _digits(frac)):
        raise BadMessage(f"{what} {text!r} is not a non-negative decimal")
    extra = frac[decimals:]
    if extra.strip("0"):
        raise BadMessage(f"{what} {text!r} has more than {decimals} decimals")
    value = int(whole) * 10**decimals + int(frac[:decimals].ljust(decimals, "0") or "0")
    if value >= limit:
        raise BadMessage(f"{what} {text!r} is too large for the record's field")
    return value


SIZE_LIMIT = 1 << 32  # an MBO size is a uint32: 4,294,967 of the base asset in lots of 0.001


def _levels(rows: Any, what: str) -> list[tuple[int, int]]:
    if not isinstance(rows, list):
        raise BadMessage(f"{what} is not a list of [price, quantity]")
    out = []
    for row in rows:
        if not isinstance(row, list) or len(row) < 2:
            raise BadMessage(f"{what} row {row!r} is not [price, quantity]")
        price = decimal_units(row[0], 9, "price")
        out.append((price, decimal_units(row[1], SIZE_DECIMALS, "qty", SIZE_LIMIT)))
    return out


def _int(data: dict, key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadMessage(f"field {key!r} is {value!r}, not a non-negative integer")
    return value


def _ms(data: dict, key: str) -> int:
    """A venue time in ms, as ns: one a record's times cannot hold is refused."""
    value = _int(data, key)
    if value >= MAX_NS // MS:
        raise BadMessage(f"field {key!r} is {value!r}, not a time in ms")
    return value * MS


def _symbol(data: dict) -> str:
    s = data.get("s")
    if not isinstance(s, str) or not s.isalnum():
        raise BadMessage(f"field 's' is {s!r}, not a symbol")
    return s.upper()


@dataclass(frozen=True)
class Trade:
    ts_event: int
    trade_id: int
    price: int
    size: int
    aggressor: int  # BID: a buyer took the ask; ASK: a seller hit the bid


Message = DepthUpdate | DepthSnapshot | Trade | None  # None: nothing for the book (bookTicker)


def parse_stream_message(body: Any) -> tuple[str | None, Message]:
    """(symbol, message) of one decoded message; symbol None for a bare REST snapshot."""
    if not isinstance(body, dict):
        raise BadMessage("not a JSON object")
    if "lastUpdateId" in body:
        return None, parse_snapshot(body)
    stream, data = body.get("stream"), body.get("data")
    if not isinstance(stream, str) or not isinstance(data, dict):
        raise BadMessage("neither a combined-stream message nor a depth snapshot")
    if stream.endswith("@depthSnapshot"):
        return stream.split("@", 1)[0].upper(), parse_snapshot(data)
    event = data.get("e")
    if event == "depthUpdate":
        return _symbol(data), DepthUpdate(
            first_id=_int(data, "U"),
            last_id=_int(data, "u"),
            previous_id=_int(data, "pu"),
            ts_event=_ms(data, "T"),
            bids=_levels(data.get("b"), "b"),
            asks=_levels(data.get("a"), "a"),
        )
    if event == "trade":
        maker = data.get("m")
        if not isinstance(maker, bool):
            raise BadMessage(f"field 'm' is {maker!r}, not a boolean")
        return _symbol(data), Trade(
            ts_event=_ms(data, "T"),
            trade_id=_int(data, "t"),
            price=decimal_units(data.get("p"), 9, "price"),
            size=decimal_units(data.get("q"), SIZE_DECIMALS, "qty", SIZE_LIMIT),
            aggressor=ASK if maker else BID,
        )
    if event == "bookTicker":
        return _symbol(data), None
    raise BadMessage(f"unknown event {event!r}")


def parse_snapshot(data: dict) -> DepthSnapshot:
    key = "T" if "T" in data else "E"
    ts = data.get(key)
    return DepthSnapshot(
        last_update_id=_int(data, "lastUpdateId"),
        # a snapshot may come without a time (then 0); one given must be one
        ts_event=_ms(data, key) if isinstance(ts, int) else 0,
        bids=_levels(data.get("bids"), "bids"),
        asks=_levels(data.get("asks"), "asks"),
    )


@dataclass
class DepthBooks:
    """Every symbol's `DepthSync`, and the MBO records of what each message did to it."""

    rows: list[tuple] = field(default_factory=list)
    books: dict[str, DepthSync] = field(default_factory=dict)
    gaps: int = 0  # pu breaks, over every symbol

    def book(self, symbol: str) -> DepthSync:
        sync = self.books.get(symbol)
        if sync is None:
            sync = self.books[symbol] = DepthSync()
        return sync

    def take(self) -> np.ndarray:
        out = np.array(self.rows, dtype=MBO_DTYPE) if self.rows else np.zeros(0, MBO_DTYPE)
        self.rows = []
        return out

    def add(self, symbol: str, message: Message, ts_recv: int) -> None:
        if message is None:
            return
        iid = instrument_for(symbol)
        if isinstance(message, Trade):
            self._rec(
                iid,
                message.ts_event,
                ts_recv,
                T,
                message.aggressor,
                message.price,
                message.size,
                0,
                F_LAST,
            )
            return
        sync = self.book(symbol)
        before = sync.counters.gaps
        if isinstance(message, DepthSnapshot):
            changes = sync.snapshot(message)
        else:
            changes = sync.update(message)
        self.gaps += sync.counters.gaps - before
        for change in changes:
            ts = change.ts_event
            if change.kind is Kind.GAP:
                self._rec(iid, ts, ts_recv, N, NONE, UNDEF_PRICE, 0, 0, F_MAYBE_BAD_BOOK | F_LAST)
                continue
            start = len(self.rows)
            if change.kind is Kind.SNAPSHOT:
                self._rec(iid, ts, ts_recv, R, NONE, UNDEF_PRICE, 0, 0, F_SNAPSHOT)
            flags = F_MBP | (F_SNAPSHOT if change.kind is Kind.SNAPSHOT else 0)
            for lv in change.changes:
                action = A if not lv.old_size else C if not lv.size else M
                self._rec(iid, ts, ts_recv, action, lv.side, lv.price, lv.size, 0, flags)
            if len(self.rows) > start:
                last = list(self.rows[-1])
                last[8] |= F_LAST
                self.rows[-1] = tuple(last)

    def _rec(
        self,
        iid: int,
        ts: int,
        ts_recv: int,
        action: int,
        side: int,
        price: int,
        size: int,
        oid: int,
        flags: int,
    ) -> None:
        self.rows.append(
            mbo_row(PUBLISHER_ID, iid, ts, ts_recv, action, side, price, size, oid, flags)
        )


def is_depth_capture(path: Path) -> bool:
    """A capture's first line is `<ns> {...}` naming a stream or a snapshot."""
    stamp, _, body = first_line(path).partition(b" ")
    return (
        stamp.isdigit()
        and body.lstrip().startswith(b"{")
        and (b'"stream"' in body or b'"lastUpdateId"' in body)
    )


def depth_chunks(f: MboFile, chunk_records: int) -> Iterator[np.ndarray]:
    books = DepthBooks()
    bare: list[tuple[int, DepthSnapshot]] = []  # snapshots before the file named its symbol
    f.dataset = VENUE

    def take(number: int, line: bytes) -> None:
        nonlocal bare
        ts_recv, body = parse_line(line)
        symbol, message = parse_stream_message(body)
        if symbol is None:
            if len(f.symbols) > 1:
                raise BadMessage("a bare snapshot in a file of many symbols")
            symbol = next(iter(f.symbols.values()), None)
            if symbol is None:
                assert isinstance(message, DepthSnapshot)
                bare.append((ts_recv, message))
                return
        if symbol not in f.symbols.values():
            named(f, instrument_for(symbol), symbol)
            for ts, snap in bare:
                books.add(symbol, snap, ts)
            bare = []
        books.add(symbol, message, ts_recv)

    yield from capture_chunks(f, chunk_records, books, take)
