"""LOBSTER message files as MBO records.

`<TICKER>_<DATE>_<START>_<END>_message_<LEVELS>.csv` rows are `time, type, order_id, size,
price, direction`: time in seconds after midnight (New York), price in dollars x 10000,
direction 1 buy / -1 sell (for executions, the side of the resting order). Types map to MBO:

    1 submit             A
    2 partial cancel     C (the cancelled size)
    3 delete             C (the remaining size)
    4 visible execution  T (aggressor = the other side), F and C on the resting order
    5 hidden execution   T only: no visible book change
    6 cross              T only (side N)
    7 halt / resume      N

Every message's last record carries F_LAST and the message number as its sequence.

Orders resting before the file starts are unknown to any replay. When the LOBSTER orderbook
file sits beside the message file, its first row (the book after message 1, with message 1
undone) is emitted first as an R and F_SNAPSHOT adds, one aggregate order per visible level;
a cancel or execution of an order id the file never submitted then reduces the aggregate order
at its price. Without the orderbook file, or beyond its depth, such records reference unknown
orders, which the book counts and otherwise ignores.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import numpy as np

from models.mbo import (
    F_LAST,
    F_SNAPSHOT,
    UNDEF_PRICE,
    OutOfRange,
    instrument_id_for,
    mbo_row,
    records_from_rows,
)

if TYPE_CHECKING:
    from app.feeds.mbo_files import MboFile

NAME = re.compile(
    r"^(?P<ticker>[A-Za-z0-9.]+)_(?P<date>\d{4}-\d{2}-\d{2})_\d+_\d+_message_\d+\.csv$"
)
PRICE_SCALE = 100_000  # dollars x 10000 -> units of 1e-9
NEW_YORK = ZoneInfo("America/New_York")
SEED_ID_BASE = 1 << 62  # aggregate orders for the pre-file book; LOBSTER ids are far smaller
A, C, T, F, R, N = (ord(x) for x in "ACTFRN")
BID, ASK, NONE = ord("B"), ord("A"), ord("N")
PUBLISHER_ID = 0


def is_lobster(path: Path) -> bool:
    return NAME.match(path.name) is not None


def orderbook_path(message_path: Path) -> Path:
    return message_path.with_name(message_path.name.replace("_message_", "_orderbook_"))


class _Translator:
    def __init__(self, iid: int, midnight_ns: int) -> None:
        self.iid = iid
        self.midnight_ns = midnight_ns
        self.submitted: set[int] = set()
        self.seed: dict[tuple[int, int], list[int]] = {}  # (side, price) -> [seed id, size]
        self.rows: list[tuple] = []

    def _rec(
        self, ts: int, action: int, side: int, price: int, size: int, oid: int, flags: int, seq: int
    ) -> None:
        self.rows.append(
            mbo_row(PUBLISHER_ID, self.iid, ts, ts, action, side, price, size, oid, flags, seq)
        )

    def seed_book(self, levels: list[tuple[int, int, int]]) -> None:
        """levels: (side, price, size) of the book before message 1."""
        ts = self.midnight_ns
        self._rec(ts, R, NONE, UNDEF_PRICE, 0, 0, F_SNAPSHOT | (0 if levels else F_LAST), 0)
        for i, (side, price, size) in enumerate(levels):
            oid = SEED_ID_BASE + i
            self.seed[(side, price)] = [oid, size]
            last = F_LAST if i == len(levels) - 1 else 0
            self._rec(ts, A, side, price, size, oid, F_SNAPSHOT | last, 0)

    def _resting(self, oid: int, side: int, price: int, size: int) -> int | None:
        """The order id a cancel or execution applies to: its own, or the level's seed."""
        if oid in self.submitted:
            return oid
        seeded = self.seed.get((side, price))
        if seeded is None or seeded[1] <= 0:
            return oid  # unknown to the book; it counts it
        seeded[1] -= size
        return seeded[0]

    def message(self, seq: int, t: str, kind: int, oid: int, size: int, px: int, d: int) -> None:
        ts = self.midnight_ns + _seconds_ns(t)
        price = px * PRICE_SCALE
        side = BID if d == 1 else ASK
        other = ASK if side == BID else BID
        if kind == 1:
            self.submitted.add(oid)
            self._rec(ts, A, side, price, size, oid, F_LAST, seq)
        elif kind in (2, 3):
            self._rec(ts, C, side, price, size, self._resting(oid, side, price, size), F_LAST, seq)
        elif kind == 4:
            resting = self._resting(oid, side, price, size)
            self._rec(ts, T, other, price, size, 0, 0, seq)
            self._rec(ts, F, side, price, size, resting, 0, seq)
            self._rec(ts, C, side, price, size, resting, F_LAST, seq)
        elif kind == 5:
            self._rec(ts, T, other, price, size, 0, F_LAST, seq)
        elif kind == 6:
            self._rec(ts, T, NONE, price, size, 0, F_LAST, seq)
        elif kind == 7:
            self._rec(ts, N, NONE, UNDEF_PRICE if px < 0 else price, 0, 0, F_LAST, seq)
        else:
            raise ValueError(f"unknown LOBSTER event type {kind}")


def _seconds_ns(t: str) -> int:
    whole, _, frac = t.partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()) or len(frac) > 9:
        raise ValueError(f"bad time {t!r}")
    return int(whole) * 1_000_000_000 + int(frac.ljust(9, "0") or "0")


def _seed_levels(book_row: list[str], first: list[str]) -> list[tuple[int, int, int]]:
    """The book before message 1: orderbook row 1 with message 1's change undone."""
    levels: dict[tuple[int, int], int] = {}
    for i in range(0, len(book_row) - 3, 4):
        ask_px, ask_sz, bid_px, bid_sz = (int(x) for x in book_row[i : i + 4])
        if ask_sz > 0 and abs(ask_px) < 9_999_999_999:
            levels[(ASK, ask_px * PRICE_SCALE)] = ask_sz
        if bid_sz > 0 and abs(bid_px) < 9_999_999_999:
            levels[(BID, bid_px * PRICE_SCALE)] = bid_sz
    kind, size, px, d = int(first[1]), int(first[3]), int(first[4]), int(first[5])
    key = (BID if d == 1 else ASK, px * PRICE_SCALE)
    if kind == 1:
        levels[key] = levels.get(key, 0) - size
    elif kind in (2, 3, 4):
        levels[key] = levels.get(key, 0) + size
    bids = sorted(
        ((s, p, z) for (s, p), z in levels.items() if s == BID and z > 0), key=lambda x: -x[1]
    )
    asks = sorted(
        ((s, p, z) for (s, p), z in levels.items() if s == ASK and z > 0), key=lambda x: x[1]
    )
    return bids + asks


def _records(f: MboFile, rows: list[tuple]) -> np.ndarray:
    from app.feeds.mbo_files import InputError

    try:
        return records_from_rows(rows)
    except OutOfRange as exc:
        line = rows[exc.row][-1] or 1  # a row's sequence is its line; the seed's come from line 1
        raise InputError(f.path, f"line {line}", f"bad LOBSTER row ({exc})") from None


def lobster_chunks(f: MboFile, chunk_records: int) -> Iterator[np.ndarray]:
    from app.feeds.mbo_files import InputError, csv_rows

    m = NAME.match(f.path.name)
    assert m is not None
    ticker, date = m["ticker"], m["date"]
    iid = instrument_id_for(ticker)
    f.symbols = {iid: ticker}
    f.dataset = "LOBSTER"
    midnight = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=NEW_YORK)
    tr = _Translator(iid, int(midnight.timestamp()) * 1_000_000_000)
    book_file = orderbook_path(f.path)
    # surrogateescape: a byte that is not UTF-8 fails its own line's fields (mbo_files.py)
    with open(f.path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        reader = csv.reader(fh)
        for row in csv_rows(reader, f.path):
            line = reader.line_num
            if not row:
                continue
            if len(row) < 6:
                raise InputError(f.path, f"line {line}", f"truncated row: {len(row)} of 6 fields")
            try:
                if line == 1 and book_file.exists():
                    with open(book_file, newline="") as bf:
                        first_book = next(csv.reader(bf), None)
                    if first_book:
                        tr.seed_book(_seed_levels(first_book, row))
                tr.message(
                    line, row[0], int(row[1]), int(row[2]), int(row[3]), int(row[4]), int(row[5])
                )
            except ValueError as exc:
                raise InputError(f.path, f"line {line}", f"bad LOBSTER row ({exc})") from None
            if len(tr.rows) >= chunk_records:
                f.bytes_read = fh.buffer.tell()  # progress, once a chunk
                chunk = _records(f, tr.rows)
                f.records_read += len(tr.rows)
                yield chunk
                tr.rows = []
    f.bytes_read = f.size
    if tr.rows:
        chunk = _records(f, tr.rows)
        f.records_read += len(tr.rows)
        yield chunk
