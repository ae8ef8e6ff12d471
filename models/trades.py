"""Trades as the bars engine reads them: Databento's trades schema record (DBN `TradeMsg`,
48 little-endian bytes, rtype 0), from trades files as they are or from MBO's T records."""

from __future__ import annotations

from typing import Final

import numpy as np
import orjson

from models.mbo import F_VOLUME_ONLY, MBO_DTYPE

TRADE_DTYPE: Final = np.dtype(
    [
        ("length", "u1"),  # 12 words
        ("rtype", "u1"),
        ("publisher_id", "<u2"),
        ("instrument_id", "<u4"),
        ("ts_event", "<u8"),
        ("price", "<i8"),
        ("size", "<u4"),
        ("action", "u1"),  # always T
        ("side", "u1"),  # aggressor: B A N
        ("flags", "u1"),
        ("depth", "u1"),
        ("ts_recv", "<u8"),
        ("ts_in_delta", "<i4"),
        ("sequence", "<u4"),
    ]
)
TRADE_SIZE: Final = 48
TRADE_RTYPE: Final = 0x00
TRADE_LENGTH_WORDS: Final = TRADE_SIZE // 4
assert TRADE_DTYPE.itemsize == TRADE_SIZE

_TRADE = ord("T")


def empty_trades(n: int = 0) -> np.ndarray:
    out = np.zeros(n, dtype=TRADE_DTYPE)
    out["length"] = TRADE_LENGTH_WORDS
    out["rtype"] = TRADE_RTYPE
    out["action"] = _TRADE
    return out


def trades_from_mbo(records: np.ndarray) -> np.ndarray:
    """The T records of a run of MBO records, as trades-schema records (depth 0)."""
    assert records.dtype == MBO_DTYPE
    t = records[records["action"] == _TRADE]
    out = empty_trades(len(t))
    for name in (
        "publisher_id",
        "instrument_id",
        "ts_event",
        "price",
        "size",
        "side",
        "flags",
        "ts_recv",
        "ts_in_delta",
        "sequence",
    ):
        out[name] = t[name]
    return out


_MESSAGE_COLUMNS: Final = ("publisher_id", "sequence", "ts_event", "ts_recv", "price", "size")
# A column only messages with such trades carry: 1 for a trade that counts in volume and sets
# no price (F_VOLUME_ONLY; tables/bars.py).
VOLUME_ONLY: Final = "volume_only"


def trades_message(instrument_id: int, t: np.ndarray, event: np.ndarray) -> dict:
    """The `trades` message (models/book_events.py) of one instrument's trades (trades-schema
    records or MBO T records) and their book event numbers: what `trades_from_columns` reads."""
    out = {
        "instrument_id": instrument_id,
        "publisher_id": t["publisher_id"].astype(np.int64),
        "event": event,
        "sequence": t["sequence"].astype(np.int64),
        "ts_event": np.ascontiguousarray(t["ts_event"]),
        "ts_recv": np.ascontiguousarray(t["ts_recv"]),
        "price": np.ascontiguousarray(t["price"]),
        "size": t["size"].astype(np.int64),
        "side": t["side"].astype(np.uint8).tobytes().decode("ascii"),
    }
    volume_only = (t["flags"] & F_VOLUME_ONLY) != 0
    if volume_only.any():
        out[VOLUME_ONLY] = volume_only.astype(np.int64)
    return out


def trades_from_columns(message: dict) -> tuple[np.ndarray, np.ndarray]:
    """(trades, their book event numbers) of a trades message as the books stage builds it
    (models/book_events.py), before or after JSON."""
    side = message["side"]
    out = empty_trades(len(side))
    out["instrument_id"] = message["instrument_id"]
    for name in _MESSAGE_COLUMNS:
        out[name] = message[name]
    out["side"] = np.frombuffer(side.encode("ascii"), np.uint8)
    volume_only = message.get(VOLUME_ONLY)
    if volume_only is not None:
        out["flags"] = np.where(np.asarray(volume_only, bool), F_VOLUME_ONLY, 0)
    return out, np.asarray(message["event"], np.int64)


def trades_from_message(key: bytes | None, value: bytes) -> tuple[int, np.ndarray, np.ndarray]:
    """(instrument_id, trades, their book event numbers) of a `trades` topic message
    (models/book_events.py); ValueError saying what is wrong with one that is not."""
    try:
        msg = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ValueError("a trades message is a JSON object")
    iid = msg.get("instrument_id")
    if not isinstance(iid, int) or isinstance(iid, bool) or not 0 <= iid < 1 << 32:
        raise ValueError(f"instrument_id must be a 32-bit unsigned integer, not {iid!r}")
    if key is not None and key != str(iid).encode():
        raise ValueError(f"key {key!r} is not the message's instrument {iid}")
    side = msg.get("side")
    if not isinstance(side, str) or not side.isascii():
        raise ValueError("side must be a string of B, A or N, one per trade")
    n = len(side)
    for name in (*_MESSAGE_COLUMNS, "event"):
        col = msg.get(name)
        if not isinstance(col, list) or len(col) != n:
            raise ValueError(f"{name} must be a list of {n} integers, one per trade")
        if not all(type(v) is int for v in col):
            raise ValueError(f"{name} holds a value that is not an integer")
        try:
            np.array(col, dtype=np.int64 if name in ("price", "event") else TRADE_DTYPE[name])
        except OverflowError:
            raise ValueError(f"{name} holds an integer out of range for {name}") from None
    if side.strip("BAN"):
        raise ValueError("side must be B, A or N for every trade")
    flags = msg.get(VOLUME_ONLY)
    if flags is not None and (
        not isinstance(flags, list) or len(flags) != n or not all(v in (0, 1) for v in flags)
    ):
        raise ValueError(f"{VOLUME_ONLY}, where present, is a list of {n} 0s and 1s")
    trades, events = trades_from_columns(msg)
    return iid, trades, events
