"""What the books agent publishes, per input message and instrument: `book.deltas`, `bbo` and
`trades`, as columnar JSON (orjson; one array per field, one element per row).

Columnar because a message carries a thousand events: building one JSON object per row in
Python would cost more than the books themselves. `rows()` turns a message back into one dict
per row (backfill writes those, and consumers can too).

Every row names its book (`publisher_id`, the message's `instrument_id`) and `event`: the
book's event number (its F_LAST records, counted from 0 across restarts). Under at-least-once a
restarted worker can publish an event again; drop rows whose (publisher_id, event) you have
seen. Prices are integers in units of 1e-9; UNDEF_PRICE (2^63 - 1) marks an empty side.

book.deltas: side ("B", "A", or "R": the book was cleared, drop every level before applying
    the rows that follow), price, size and count after the event (0 and 0: the level is gone),
    sequence, ts_event, ts_recv of the event's F_LAST record.
bbo: bid_px, bid_sz, bid_ct, ask_px, ask_sz, ask_ct after each event that changed them.
trades: every T record: price, size, side (the aggressor: "B", "A" or "N"), sequence,
    ts_event, ts_recv, and `event`, the book event the trade belongs to.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from models.mbo import F_LAST
from tables.book_engine import Published
from tables.book_state import Applied, BookSet

TRADE = ord("T")
_OPTS = orjson.OPT_SERIALIZE_NUMPY


def _chars(codes: np.ndarray) -> str:
    return codes.astype(np.uint8).tobytes().decode("ascii")


def _event_fields(records: np.ndarray, rec: np.ndarray) -> dict[str, Any]:
    return {
        "sequence": np.ascontiguousarray(records["sequence"][rec]).astype(np.int64),
        "ts_event": np.ascontiguousarray(records["ts_event"][rec]),
        "ts_recv": np.ascontiguousarray(records["ts_recv"][rec]),
    }


DELTAS, BBO, TRADES = "book.deltas", "bbo", "trades"


def messages(instrument_id: int, applied: Applied, books: BookSet) -> dict[str, dict]:
    """The messages (by topic base name) one applied input message publishes; empty ones are
    left out."""
    out: dict[str, dict] = {}
    pub = applied.published
    if pub is not None:
        publishers = books.publisher_of()
        if len(pub.rec):
            out[DELTAS] = deltas(instrument_id, pub, applied.records, publishers)
        if len(pub.bbo_rec):
            out[BBO] = bbo(instrument_id, pub, applied.records, publishers)
    t = trades(instrument_id, applied.records, books.event_counts(instrument_id))
    if t is not None:
        out[TRADES] = t
    return out


def deltas(instrument_id: int, pub: Published, records: np.ndarray, publishers: np.ndarray) -> dict:
    return {
        "instrument_id": instrument_id,
        "publisher_id": publishers[pub.book],
        "event": pub.event,
        **_event_fields(records, pub.rec),
        "side": _chars(pub.side),
        "price": pub.price,
        "size": pub.size,
        "count": pub.count,
    }


def bbo(instrument_id: int, pub: Published, records: np.ndarray, publishers: np.ndarray) -> dict:
    q = pub.bbo
    return {
        "instrument_id": instrument_id,
        "publisher_id": publishers[pub.bbo_book],
        "event": pub.bbo_event,
        **_event_fields(records, pub.bbo_rec),
        "bid_px": np.ascontiguousarray(q[:, 0]),
        "bid_sz": np.ascontiguousarray(q[:, 1]),
        "bid_ct": np.ascontiguousarray(q[:, 2]),
        "ask_px": np.ascontiguousarray(q[:, 3]),
        "ask_sz": np.ascontiguousarray(q[:, 4]),
        "ask_ct": np.ascontiguousarray(q[:, 5]),
    }


def trades(instrument_id: int, records: np.ndarray, events_after: dict[int, int]) -> dict | None:
    """T records of the applied records. `events_after` maps publisher to its book's event
    count after these records, from which each record's event number is counted back."""
    is_trade = records["action"] == TRADE
    if not is_trade.any():
        return None
    event = np.zeros(len(records), np.int64)
    last = (records["flags"] & F_LAST) != 0
    pubs = records["publisher_id"]
    for pub, after in events_after.items():
        mine = pubs == pub
        closes = np.cumsum(last & mine)  # F_LASTs of this book up to and including each record
        before = after - int(closes[-1])
        event[mine] = before + closes[mine] - last[mine]
    t = records[is_trade]
    return {
        "instrument_id": instrument_id,
        "publisher_id": t["publisher_id"].astype(np.int64),
        "event": event[is_trade],
        "sequence": t["sequence"].astype(np.int64),
        "ts_event": np.ascontiguousarray(t["ts_event"]),
        "ts_recv": np.ascontiguousarray(t["ts_recv"]),
        "price": np.ascontiguousarray(t["price"]),
        "size": t["size"].astype(np.int64),
        "side": _chars(t["side"]),
    }


def encode(message: dict) -> bytes:
    return orjson.dumps(message, option=_OPTS)


def rows(message: dict) -> list[dict[str, Any]]:
    """One dict per row of a columnar message (decoded from JSON, or as `messages` made it)."""
    iid = message["instrument_id"]
    cols = {
        k: v.tolist() if isinstance(v, np.ndarray) else v
        for k, v in message.items()
        if k != "instrument_id"
    }
    names = list(cols)
    # a string column (side) indexes to one character per row
    return [
        {"instrument_id": iid, **dict(zip(names, values, strict=True))}
        for values in zip(*cols.values(), strict=True)
    ]
