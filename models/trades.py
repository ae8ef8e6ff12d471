"""Trades as the bars engine reads them: Databento's trades schema record (DBN `TradeMsg`,
48 little-endian bytes, rtype 0), from trades files as they are or from MBO's T records."""

from __future__ import annotations

from typing import Final

import numpy as np

from models.mbo import MBO_DTYPE

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
