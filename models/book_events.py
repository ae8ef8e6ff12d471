"""What the books stage publishes, per input message and instrument: `book.deltas`, `bbo` and
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

DELTAS, BBO, TRADES = "book.deltas", "bbo", "trades"
_OPTS = orjson.OPT_SERIALIZE_NUMPY


def encode(message: dict) -> bytes:
    return orjson.dumps(message, option=_OPTS)


def last_rows(message: dict) -> list[dict[str, Any]]:
    """The last row of each book (publisher) in a message: where only the latest state counts
    (the WebSocket feed's `bbo`), without building the rows before it."""
    iid = message["instrument_id"]
    pubs = message["publisher_id"]
    last: dict[Any, int] = {}
    for i in range(len(pubs) - 1, -1, -1):
        last.setdefault(pubs[i], i)
    cols = [k for k in message if k != "instrument_id"]
    return [
        {"instrument_id": iid, **{k: message[k][i] for k in cols}} for i in sorted(last.values())
    ]


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
