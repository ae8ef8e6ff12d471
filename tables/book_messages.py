"""The messages one applied input message publishes, in the layouts `models.book_events`
documents: `book.deltas` and `bbo` from the engine's published changes, `trades` from the
records."""

from __future__ import annotations

from typing import Any

import numpy as np

from models.book_events import BBO, DELTAS, TRADES
from models.mbo import F_LAST
from models.trades import trades_message
from tables.book_engine import Published
from tables.book_state import Applied, BookSet

TRADE = ord("T")


def _chars(codes: np.ndarray) -> str:
    return codes.astype(np.uint8).tobytes().decode("ascii")


def _event_fields(records: np.ndarray, rec: np.ndarray) -> dict[str, Any]:
    return {
        "sequence": np.ascontiguousarray(records["sequence"][rec]).astype(np.int64),
        "ts_event": np.ascontiguousarray(records["ts_event"][rec]),
        "ts_recv": np.ascontiguousarray(records["ts_recv"][rec]),
    }


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
    return trades_message(instrument_id, records[is_trade], event[is_trade])
