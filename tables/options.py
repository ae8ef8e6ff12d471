"""Options flow aggregated across contracts: per underlying, expiry, strike and right, from
instrument definitions (see "Institutional flow detection" in ../shared/design.md). No Faust here.

An option's own pressure windows are made like any instrument's (tables/pressure.py). When one
closes, it also becomes a *part* of each group the option belongs to: a group keeps some of the
fields (underlying, expiration, strike, right) and sums every contract that shares them, so
`underlying+right` is all calls (or all puts) on one underlying, and
`underlying+expiration+strike+right` the contract across its listings. `OptionsAggregator` adds the
parts of a group's window and, once every source partition's pressure watermark has passed the
window's end, scores the sum against the group's own baseline, exactly as an instrument's window is
scored (tables/signals.py), and can fire a signal of kind `options_flow`.

The contracts of one group sit on many partitions, so a group's window is complete only when all
of them have passed its end: each source partition reports its pressure watermark, and the lowest
one closes windows. What a group's window holds therefore depends only on the data, never on
pace, batching, partitions or worker restarts; a part of a window already closed (a source
repeating itself after a restart) is dropped and counted.

A group is named `underlying|expiration|strike|right`, with `*` for a field the group leaves
out: `ES|*|*|C`, `ESM4|2024-06-21|*|P`, `AAPL|2025-01-17|200|C`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from models.mbo import UNDEF_PRICE
from tables.baselines import Baselines, SessionClock
from tables.pressure import PressureWindow
from tables.signals import SignalEngine

if TYPE_CHECKING:
    from tables.ifd import IfdConfig

FIELDS: Final = ("underlying", "expiration", "strike", "right")
DEFAULT_GROUPS: Final = "underlying+right,underlying+expiration+right"
RIGHTS: Final = {"C": "C", "P": "P"}  # Databento instrument_class of a call, of a put
UNDEF_TIMESTAMP: Final = (1 << 64) - 1
OPTIONS_PRESSURE: Final = "options.pressure"
OPTIONS_SIGNALS: Final = "options.signals"
OPTION_PARTS: Final = "options.parts"
# A part's sums, in this order: what `_add_up` needs to rebuild the window exactly.
SUMS: Final = (
    "buy",
    "sell",
    "volume",
    "trades",
    "large",
    "pv",
    "ofi",
    "ofi_steps",
    "sq",
    "last_ts",
    "last_px",
)
# Parts from a worker older than the `sq` sum: ten sums, `sq` absent.
_OLD_SUMS: Final = len(SUMS) - 1

Row = tuple[str, dict[str, Any]]
Part = tuple[str, int, int, int | None, list[Any]]  # group, start, instrument, publisher, sums
Get = Callable[[bytes], bytes | None]


@dataclass(frozen=True, slots=True)
class OptionInfo:
    """What a definition says of an option: enough to place it in its groups."""

    underlying: str
    expiration: str  # YYYY-MM-DD (UTC), or "" when the definition gives none
    strike: str  # decimal, as few digits as it needs, or "" when undefined
    right: str  # "C" or "P"

    @classmethod
    def from_definition(cls, d: Any) -> OptionInfo | None:
        """From a databento InstrumentDefMsg (or anything with its fields); None for an
        instrument that is not an option. An option on a future names the future in
        `underlying`; where that is empty, the product (`asset`) stands in."""
        right = RIGHTS.get(str(getattr(d, "instrument_class", "")))
        if right is None:
            return None
        underlying = str(d.underlying or "").strip() or str(d.asset or "").strip()
        if not underlying:
            raise ValueError(f"option {d.instrument_id} has neither underlying nor asset")
        if "|" in underlying:
            raise ValueError(f"option {d.instrument_id}: underlying {underlying!r} holds '|'")
        exp = int(d.expiration)
        expiration = ""
        if exp != UNDEF_TIMESTAMP:
            expiration = datetime.fromtimestamp(exp // 1_000_000_000, UTC).date().isoformat()
        strike = "" if int(d.strike_price) == UNDEF_PRICE else _decimal(int(d.strike_price))
        return cls(underlying, expiration, strike, right)

    def export(self) -> list[str]:
        return [self.underlying, self.expiration, self.strike, self.right]

    def group(self, fields: Sequence[str]) -> str:
        return "|".join(getattr(self, f) or "*" if f in fields else "*" for f in FIELDS)


def _decimal(price: int) -> str:
    return format(Decimal(price).scaleb(-9).normalize(), "f")


def parse_groups(text: str) -> tuple[tuple[str, ...], ...]:
    """`underlying+right,underlying+expiration+right` -> the groups' fields; "" or "none": no
    aggregation. Every group keeps the underlying."""
    if text.strip().lower() in ("", "none"):
        return ()
    out = []
    for spec in text.split(","):
        fields = tuple(f.strip() for f in spec.split("+") if f.strip())
        unknown = [f for f in fields if f not in FIELDS]
        if unknown:
            raise ValueError(f"unknown option group field {unknown[0]!r} (use {'+'.join(FIELDS)})")
        if "underlying" not in fields:
            raise ValueError(f"option group {spec.strip()!r} must keep the underlying")
        ordered = tuple(f for f in FIELDS if f in fields)
        if ordered not in out:
            out.append(ordered)
    return tuple(out)


def describe(group: str) -> dict[str, str | None]:
    """A group's name as its fields (None for one the group leaves out)."""
    values = group.split("|")
    return {f: (None if v == "*" else v) for f, v in zip(FIELDS, values, strict=True)}


def window_sums(w: PressureWindow) -> list[int | None]:
    return [
        w.buy_volume,
        w.sell_volume,
        w.volume,
        w.trades,
        w.large_volume,
        w.pv,
        w.ofi,
        w.ofi_steps,
        w.sq,
        w.last_ts,
        w.last_price,
    ]


def option_parts(
    w: PressureWindow, info: OptionInfo, groups: Iterable[Sequence[str]], publisher: int | None
) -> list[list[Any]]:
    """A closed window of one option as a part of each of its groups:
    [group, start, instrument_id, publisher, sums]."""
    sums = window_sums(w)
    return [[info.group(g), w.start, w.instrument_id, publisher, sums] for g in groups]


def check_part(item: Any) -> Part:
    """A part as `option_parts` makes it; ValueError for anything else."""
    if not (isinstance(item, list) and len(item) == 5):
        raise ValueError("an option part is [group, start, instrument_id, publisher, sums]")
    group, start, iid, publisher, sums = item
    if not isinstance(group, str) or len(group.split("|")) != len(FIELDS):
        raise ValueError(f"bad option group {group!r}")
    if not isinstance(start, int) or not isinstance(iid, int):
        raise ValueError("an option part needs integer start and instrument_id")
    if publisher is not None and not isinstance(publisher, int):
        raise ValueError("an option part's publisher is an integer or null")
    sums = current_sums(sums)
    if not (
        isinstance(sums, list)
        and len(sums) == len(SUMS)
        and all(isinstance(v, int) for v in sums[:-1])
        and (sums[-1] is None or isinstance(sums[-1], int))
    ):
        raise ValueError(f"an option part's sums are {len(SUMS)} integers ({', '.join(SUMS)})")
    return group, start, iid, publisher, sums


def current_sums(sums: Any) -> Any:
    """A part's sums in today's layout: ten sums from a worker (or checkpoint) older than
    `sq` get the classified volume in its place, a lower bound (sizes are at least 1) that
    only the windows open across an upgrade carry. Anything else is returned as it is."""
    if (
        isinstance(sums, list)
        and len(sums) == _OLD_SUMS
        and isinstance(sums[0], int)
        and isinstance(sums[1], int)
    ):
        return [*sums[:8], sums[0] + sums[1], *sums[8:]]
    return sums


def _add_up(group: str, interval_ns: int, start: int, members: dict[int, list]) -> PressureWindow:
    totals = [0] * 9
    last_ts, last_px, last_iid = -1, None, -1
    for iid in sorted(members):
        s = members[iid]
        for i in range(9):
            totals[i] += s[i]
        # the latest trade of any contract; at a tie, the highest instrument id (any fixed rule)
        if s[9] > last_ts or (s[9] == last_ts and s[9] >= 0 and iid > last_iid):
            last_ts, last_px, last_iid = s[9], s[10], iid
    buy, sell, volume, trades, large, pv, ofi, ofi_steps, sq = totals
    return PressureWindow(
        instrument_id=group,  # type: ignore[arg-type]  # a group scores as an instrument would
        interval_ns=interval_ns,
        start=start,
        buy_volume=buy,
        sell_volume=sell,
        volume=volume,
        trades=trades,
        large_volume=large,
        ofi=ofi,
        ofi_steps=ofi_steps,
        vwap=pv / volume if volume else None,
        last_price=last_px,
        pv=pv,
        last_ts=last_ts,
        sq=sq,
    )


def _as_group_row(row: dict[str, Any], group: str) -> dict[str, Any]:
    out = {"group": group, **describe(group)}
    out.update((k, v) for k, v in row.items() if k != "instrument_id")
    return out


@dataclass
class OptionsAggregator:
    """One aggregating partition's groups: parts in from `sources` source partitions, scored
    group windows and signals out."""

    config: IfdConfig
    sources: int
    watermarks: dict[int, int] = field(default_factory=dict)  # source partition -> watermark
    closed_through: int | None = None  # windows ending at or before this are published
    repeats: int = 0
    # (group, start) -> instrument -> sums
    pending: dict[tuple[str, int], dict[int, list[Any]]] = field(default_factory=dict)
    publishers: dict[str, int] = field(default_factory=dict)  # the group's session venue
    signals: SignalEngine = field(init=False)

    def __post_init__(self) -> None:
        if self.sources < 1:
            raise ValueError("an options aggregator needs at least one source partition")
        cfg = self.config
        self.signals = SignalEngine(
            SessionClock(cfg.interval_ns, cfg.session_start_ns, cfg.venue_starts),
            Baselines(cfg.sessions),
            cfg.signal,
        )

    def add(
        self, group: str, start: int, instrument_id: int, publisher: int | None, sums: list
    ) -> bool:
        """One contract's window as part of a group's; False (counted) for a part of a window
        already published."""
        done = self.closed_through
        if done is not None and start + self.config.interval_ns <= done:
            self.repeats += 1
            return False
        # a source repeating a part it sent before sends the same sums: the last one stands
        self.pending.setdefault((group, start), {})[instrument_id] = sums
        if publisher is not None:
            self.publishers.setdefault(group, publisher)
        return True

    def advance(self, source: int, watermark: int) -> list[Row]:
        """A source partition's pressure watermark; every group window all sources have now
        passed, in order of end then group, scored."""
        if not 0 <= source < self.sources:
            raise ValueError(f"source partition {source} is outside 0..{self.sources - 1}")
        if watermark <= self.watermarks.get(source, watermark - 1):
            return []
        self.watermarks[source] = watermark
        if len(self.watermarks) < self.sources:
            return []
        low = min(self.watermarks.values())
        if self.closed_through is not None and low <= self.closed_through:
            return []
        self.closed_through = low
        return self._close(low)

    def flush(self) -> list[Row]:
        """Every pending window, as at the end of a backfill."""
        return self._close(None)

    def _close(self, through: int | None) -> list[Row]:
        iv = self.config.interval_ns
        due = sorted(
            (k for k in self.pending if through is None or k[1] + iv <= through),
            key=lambda k: (k[1], k[0]),
        )
        out: list[Row] = []
        for group, start in due:
            members = self.pending.pop((group, start))
            w = _add_up(group, iv, start, members)
            scored = self.signals.score(w, self.publishers.get(group))
            row = _as_group_row(w.as_dict(), group)
            row.update(
                contracts=len(members),
                session=scored.session,
                bucket=scored.bucket,
            )
            if scored.z is not None:
                row.update(scored.z)
                row["baseline_sessions"] = scored.baseline["log_volume"].n  # type: ignore[index]
            out.append((OPTIONS_PRESSURE, row))
            if scored.signal is not None:
                signal = _as_group_row(scored.signal, group)
                signal["kind"] = "options_flow"
                signal["contracts"] = len(members)
                out.append((OPTIONS_SIGNALS, signal))
        return out

    def groups(self) -> set[str]:
        return {g for g, _ in self.pending} | {g for g, _ in self.signals.baselines.buckets()}
