"""Vendor trades as the stages need them: which side was the aggressor, and whether a trade may
touch bars at all.

Aggressor side (`../shared/design.md`): the quote rule against the latest quote before the
trade (above its midpoint a buyer took the offer, B; below it a seller hit the bid, A); at the
midpoint, or with no usable quote, the tick rule against the previous trade's price (up: B,
down: A, unchanged: the previous trade's side); with neither, N.

Conditions: a trade whose sale conditions say it must not set the high/low or the open/close
(an average-price print, an odd lot, a prior-day report...) sets no price in the bars: it still
counts in their volume, unless a condition also says it must not update volume (a market
center's official open or close, which reports a price, not a trade), and then it is kept out of
everything the stages make from trades. The default table lists the US equities sale
conditions, by the vendor's (Massive, formerly Polygon.io) unified condition ids, whose
consolidated update rules say so; `Conditions.from_reference` builds the table from the
vendor's own `/v3/reference/conditions` answer instead, which is the authority.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

BID, ASK, NONE = ord("B"), ord("A"), ord("N")

# id -> name: sale conditions that update neither high/low nor open/close (consolidated).
DEFAULT_EXCLUDED: dict[int, str] = {
    2: "Average Price Trade",
    7: "Cash Sale",
    12: "Form T (extended hours)",
    13: "Extended Trading Hours (Sold Out of Sequence)",
    15: "Market Center Official Close",
    16: "Market Center Official Open",
    20: "Next Day",
    21: "Price Variation Trade",
    29: "Seller",
    37: "Odd Lot Trade",
    52: "Contingent Trade",
    53: "Qualified Contingent Trade",
}


# Of those, the ones that must not update volume either.
DEFAULT_NO_VOLUME: frozenset[int] = frozenset({15, 16})


@dataclass(frozen=True)
class Conditions:
    excluded: Mapping[int, str] = field(default_factory=lambda: dict(DEFAULT_EXCLUDED))
    no_volume: frozenset[int] = DEFAULT_NO_VOLUME

    @classmethod
    def from_reference(cls, body: Mapping[str, Any]) -> Conditions:
        """From the vendor's conditions reference (`{"results": [{"id", "name", "data_types",
        "update_rules": {"consolidated": {...}}}]}`): every trade condition whose consolidated
        rules leave the high/low or the open/close alone."""
        out: dict[int, str] = {}
        no_volume = set()
        for c in body.get("results", []):
            if "trade" not in c.get("data_types", ["trade"]):
                continue
            rules = c.get("update_rules", {}).get("consolidated", {})
            if not rules.get("updates_high_low", True) or not rules.get("updates_open_close", True):
                out[int(c["id"])] = str(c.get("name", ""))
                if not rules.get("updates_volume", True):
                    no_volume.add(int(c["id"]))
        return cls(out, frozenset(no_volume))

    def as_json(self) -> dict[str, Any]:
        return {
            "excluded": {str(k): v for k, v in sorted(self.excluded.items())},
            "no_volume": sorted(self.no_volume),
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Conditions:
        """What `as_json` wrote. A table written before `no_volume` was kept kept every
        excluded trade out of volume too, and is read so, as its recording was made."""
        excluded = {int(k): str(v) for k, v in body["excluded"].items()}
        no_volume = body.get("no_volume")
        return cls(excluded, frozenset(excluded if no_volume is None else map(int, no_volume)))

    def excluding(self, conditions: Iterable[int]) -> int | None:
        """The first condition that keeps a trade out of the bars' prices, or None."""
        for c in conditions:
            if c in self.excluded:
                return c
        return None

    def counts_volume(self, conditions: Iterable[int]) -> bool:
        return not any(c in self.no_volume for c in conditions)


class Aggressor:
    """One instrument's latest quote and last trade, for classifying its trades in order."""

    def __init__(self) -> None:
        self.bid = 0
        self.ask = 0
        self.last_price: int | None = None
        self.last_side = NONE

    def quote(self, bid: int, ask: int) -> None:
        """A quote; a side at 0 (none), or a crossed one, leaves no usable midpoint."""
        usable = bid > 0 and ask > 0 and bid <= ask
        self.bid, self.ask = (bid, ask) if usable else (0, 0)

    def side(self, price: int, *, last: bool = True) -> int:
        """The aggressor of a trade at `price`; with `last`, the trade becomes the last one
        (a trade that sets no price does not)."""
        side = NONE
        if self.bid:
            twice_mid = self.bid + self.ask  # compared doubled: no rounding at a half tick
            side = BID if 2 * price > twice_mid else ASK if 2 * price < twice_mid else NONE
        if side == NONE and self.last_price is not None:
            if price > self.last_price:
                side = BID
            elif price < self.last_price:
                side = ASK
            else:
                side = self.last_side
        if last:
            self.last_price = price
            if side != NONE:
                self.last_side = side
        return side


RECENT_TRADES = 256  # trade sequence numbers remembered per instrument and day
KEEP_DAYS = 2  # a vendor's sequence may start again each day; the day before is kept too


class _Recent:
    """One day's trade numbers: the latest `RECENT_TRADES` by value, and the largest one let
    go (`floor`): a number at or below it may have been taken, so it counts as a repeat."""

    def __init__(self) -> None:
        self.heap: list[int] = []
        self.seen: set[int] = set()
        self.floor = 0

    def take(self, sequence: int) -> bool:
        if sequence <= self.floor or sequence in self.seen:
            return False
        heapq.heappush(self.heap, sequence)
        self.seen.add(sequence)
        if len(self.heap) > RECENT_TRADES:
            gone = heapq.heappop(self.heap)
            self.seen.discard(gone)
            self.floor = max(self.floor, gone)
        return True

    def copy(self) -> _Recent:
        out = _Recent()
        out.heap, out.seen, out.floor = list(self.heap), set(self.seen), self.floor
        return out


class Sequences:
    """One instrument's sequence numbers taken, per trading day, to drop repeats (a retried
    webhook request, a vendor's resend) without dropping what merely came late.

    A quote is taken only if it is newer than the last quote taken: an older one is stale, and
    the newer one stands. A trade is taken unless it was taken before: one older than the
    newest that was never seen is late, not a repeat (concurrent requests may be taken in any
    order), and counts in its bars as any late trade does. Trades are remembered by their
    latest `RECENT_TRADES` numbers; one at or below the largest number let go counts as a
    repeat. A tick of a day older than the `KEEP_DAYS` kept is refused as stale."""

    def __init__(self) -> None:
        self.quotes: dict[int, int] = {}
        self.trades: dict[int, _Recent] = {}

    def take(self, kind: str, day: int, sequence: int) -> bool:
        """Whether the tick is new; it is remembered if so."""
        days = self.quotes if kind == "quote" else self.trades
        if day not in days and len(days) >= KEEP_DAYS and day < min(days):
            return False
        if kind == "quote":
            if sequence <= self.quotes.get(day, 0):
                return False
            self.quotes[day] = sequence
            _prune(self.quotes)
            return True
        recent = self.trades.get(day)
        if recent is None:
            recent = self.trades[day] = _Recent()
            _prune(self.trades)
        return recent.take(sequence)

    def copy(self) -> Sequences:
        out = Sequences()
        out.quotes = dict(self.quotes)
        out.trades = {d: r.copy() for d, r in self.trades.items()}
        return out


def _prune(by_day: dict[int, Any]) -> None:
    while len(by_day) > KEEP_DAYS:
        del by_day[min(by_day)]
