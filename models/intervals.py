"""Bar intervals as topics and settings name them: "1m" <-> nanoseconds."""

from __future__ import annotations

import re
from typing import Final

NS: Final = {
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
}


def parse_interval(text: str) -> int:
    """'1m' -> nanoseconds. Accepts <n>s, <n>m, <n>h, <n>d; raises ValueError otherwise."""
    m = re.fullmatch(r"([1-9][0-9]*)([smhd])", text.strip())
    if not m:
        raise ValueError(f"bad interval {text!r}: expected a number and s, m, h or d, as in 1m")
    return int(m.group(1)) * NS[m.group(2)]


def interval_name(ns: int) -> str:
    for unit in ("d", "h", "m", "s"):
        if ns % NS[unit] == 0:
            return f"{ns // NS[unit]}{unit}"
    raise ValueError(f"interval of {ns} ns is not a whole number of seconds")
