"""How served rows show their numbers: prices as decimals and times as ISO 8601 (the default of
the web views and the WebSocket feed), or as the topics carry them (`raw`: prices in integer
units of 1e-9, times in integer nanoseconds since the epoch).

What a number means is known by its field's name, the same in every topic and view (docs/
topics.md). Every numeric field an output can carry is in exactly one of the sets below; a test
runs the stages over real and generated data and fails on a field that is in none, so a new
field must say what it is before it is served.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any, Final, Literal

from models.mbo import UNDEF_PRICE

Units = Literal["decimal", "raw"]
UNITS: Final = ("decimal", "raw")
SCALE: Final = 1_000_000_000
DECIMALS: Final = 9  # the fixed-point grid: no digit beyond it means anything

PRICES: Final = frozenset(
    {
        "price",
        "open",
        "high",
        "low",
        "close",
        "vwap",
        "twap",
        "last_price",
        "bid_px",
        "ask_px",
        "sma_20",
        "sma_50",
        "sma_200",
        "ema_12",
        "ema_26",
        "macd",
        "macd_signal",
        "macd_hist",
        "bb_mid",
        "bb_upper",
        "bb_lower",
        "highest_high",
        "lowest_low",
    }
)
TIMES: Final = frozenset(
    {
        "ts_event",
        "ts_recv",
        "start",
        "end",
        "first_ts_recv",
        "last_ts_recv",
        "from_ts_event",
        "from_ts_recv",
        "to_ts_recv",
        "first_seen_ns",
    }
)
# [price, size, count], or null for an empty side
LEVEL: Final = frozenset({"bid", "ask"})
# lists of [price, size, count], or of [level, price, size, count] in the delta topic
LEVELS: Final = frozenset({"bids", "asks"})
# bid_px, bid_sz, bid_ct, ask_px, ask_sz, ask_ct
TOP: Final = "top"
# Numbers that are neither (counts, sizes, ids, scores), served as they are with whatever they
# hold. Listed so that an unlisted field fails
# the test rather than being served in units nobody chose.
PLAIN: Final = frozenset(
    {
        "instrument_id",
        "publisher_id",
        "event",
        "sequence",
        "size",
        "count",
        "volume",
        "trades",
        "buy_volume",
        "sell_volume",
        "volume_only",
        "bid_sz",
        "bid_ct",
        "ask_sz",
        "ask_ct",
        "bid_depth",
        "ask_depth",
        "bid_levels",
        "ask_levels",
        "orders",
        "last_sequence",
        "events",
        "gaps",
        "position",
        "partition",
        "offset",
        "records",
        "messages",
        "rsi_14",
        "previous_rsi_14",
        "tfi",
        "net_score",
        "ofi",
        "ofi_steps",
        "large_volume",
        "session",
        "bucket",
        "z_vol",
        "z_flow",
        "z_ofi",
        "z_net",
        "baseline_sessions",
        "confidence",
        "strength",
        "data_quality",
        "mean",
        "std",
        "n",
        "trimmed",
        "mean_volume",
        "pct_from_sma",
        "bars",
        "lag_s",
        "limit_s",
        "contracts",
        "unknown_orders",
        "duplicate_adds",
        "duplicates",
        "bad_records",
        "interval_ns",
        "publishers",
        "actions",
        "counters",
    }
)
# Plain fields that hold counts under names of their own (action letters, counter names), kept
# as they are. Any other field is looked into: `bars` is a count in an indicators row and a
# list of bars in a delta record.
PLAIN_WHOLE: Final = frozenset({"publishers", "actions", "counters"})


def price(v: float | None) -> float | None:
    """A price in currency units; None for none (an empty side is UNDEF_PRICE on the topics)."""
    if v is None or v == UNDEF_PRICE:
        return None
    return round(v / SCALE, DECIMALS)


def iso(ns: int | None) -> str | None:
    """Nanoseconds since the epoch as ISO 8601 in UTC, to the nanosecond."""
    if ns is None:
        return None
    s, frac = divmod(int(ns), SCALE)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(s))}.{frac:09d}Z"


def _each(f: Any, v: Any) -> Any:
    """f of a value, or of each of a columnar message's values."""
    return [f(x) for x in v] if isinstance(v, list) else f(v)


def _level(v: list[Any] | None) -> list[Any] | None:
    if v is None:
        return None
    if len(v) == 4:  # [level, price, size, count]
        return [v[0], price(v[1]), *v[2:]]
    return [price(v[0]), *v[1:]]


def _top(v: list[Any]) -> list[Any]:
    return [price(v[0]), *v[1:3], price(v[3]), *v[4:]]


def show(value: Any) -> Any:
    """`value` (a row, a list of rows, or anything JSON holding them) with decimal prices and
    ISO times: a copy; the value itself is not changed."""
    if isinstance(value, list):
        return [show(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for k, v in value.items():
        if k in PLAIN_WHOLE:
            out[k] = v
        elif k in PRICES and not isinstance(v, dict | str):
            out[k] = _each(price, v)
        elif k in TIMES and not isinstance(v, dict | str):
            out[k] = _each(iso, v)
        elif k in LEVEL and isinstance(v, list | type(None)):
            out[k] = _level(v)
        elif k in LEVELS and isinstance(v, list):
            out[k] = [_level(x) for x in v]
        elif k == TOP and isinstance(v, list):
            out[k] = _top(v)
        else:
            out[k] = show(v)
    return out


def shown(value: Any, units: Units) -> Any:
    return value if units == "raw" else show(value)


def parse_units(raw: str | None) -> Units:
    """The `units` a request asks for (decimal when it does not say); ValueError otherwise."""
    if raw is None or raw == "decimal":
        return "decimal"
    if raw == "raw":
        return "raw"
    raise ValueError(f"units is decimal or raw, not {raw!r}")


def parse_time(raw: str) -> int:
    """A time a request gives, as nanoseconds since the epoch: an integer of nanoseconds, or
    ISO 8601 (`2024-05-08`, `2024-05-08T13:30:00Z`, with up to nine fractional digits and an
    offset; UTC when it has none). ValueError says what is wrong."""
    raw = raw.strip()
    if raw.lstrip("-").isdigit():
        return int(raw)
    m = _ISO.fullmatch(raw)
    if m is None:
        raise ValueError(f"not nanoseconds or an ISO 8601 time: {raw!r}")
    date, clock, frac, zone = m.group("date", "clock", "frac", "zone")
    try:
        when = datetime.fromisoformat(f"{date}T{clock or '00:00:00'}{_zone(zone)}")
    except ValueError as exc:
        raise ValueError(f"not a valid time: {raw!r} ({exc})") from None
    return int(when.timestamp()) * SCALE + int((frac or "").ljust(9, "0"))


_ISO = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:[T ](?P<clock>\d{2}:\d{2}(?::\d{2})?)(?:\.(?P<frac>\d{1,9}))?"
    r"(?P<zone>Z|[+-]\d{2}:?\d{2})?)?"
)


def _zone(zone: str | None) -> str:
    if zone is None or zone == "Z":
        return "+00:00"
    return zone if ":" in zone else f"{zone[:3]}:{zone[3:]}"
