"""What bars publish: one JSON object per message, one message per bar, indicator update or
late trade (bars are few next to book events, so rows need no columnar packing).

bars.<interval> (bars.1m, bars.5m, bars.15m by default): `Bar.as_dict()`: instrument_id,
    publisher_id, interval, start (ns), open, high, low, close (1e-9 units), volume, trades,
    buy_volume, sell_volume (by aggressor side), vwap, twap.
indicators: per closed bar, instrument_id, interval, start, then sma_20, sma_50, sma_200,
    ema_12, ema_26, rsi_14, macd, macd_signal, macd_hist, bb_mid, bb_upper, bb_lower (null
    until enough bars).
trades.late: a trade that came after the watermark had closed its window: interval it was
    late for, instrument_id, publisher_id, ts_event, ts_recv, sequence, price, size, side.
"""

from __future__ import annotations

from typing import Final

from models.intervals import interval_name

INDICATORS: Final = "indicators"
LATE_TRADES: Final = "trades.late"


def bars_topic(interval_ns: int) -> str:
    return f"bars.{interval_name(interval_ns)}"
