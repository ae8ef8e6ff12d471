"""Bars on event time: tumbling windows per instrument, closed by a watermark, never by the
wall clock. No Faust here; the bars stage (pipeline/stages.py) and `ohlcv` drive this class.

A trade belongs to the window of its `ts_event`. Lateness is measured on when it was received
(`ts_recv`): a trade is late when its window ended more than the allowed lateness before it
arrived (`end <= ts_recv - lateness`). That is a property of the record alone, so which trades are
late, and so every bar, is the same at any replay pace, batch size or partition count.

One `BarEngine` serves one input partition (or one whole file in backfill). Its watermark is
`advance`d by the caller to a bound on what is still to come ("everything still to arrive was
received at or after T"), less the lateness; a window is emitted once, final, by `close` when the
watermark reaches its end. Live, the bound comes from the source (replay stamps it on every
message, see app/feeds/watermarks.py); reading a file in order, it is the last ts_recv read.
Because the watermark belongs to the partition, an idle instrument's window still closes when
time moves on. A late trade is returned to the caller (the `late` side output) and counted, never
silently dropped; so is a trade for a window already emitted, which only input out of ts_recv
order can produce.

Every field is exact integer arithmetic except the two averages computed from exact sums at
emission, so the same trades give the same bars whatever the batches they arrive in.

A trade flagged F_VOLUME_ONLY (a vendor's sale condition that must not set the high/low or
open/close but counts in volume: an odd lot, an average-price print) adds to `volume`, `trades`
and the buy and sell volumes, and sets no price: not the OHLC, not the VWAP, not the TWAP. A
window that takes only such trades is a flat bar at the price standing when it began (the close
of the instrument's bar before it); before any priced bar there is no price to stand, and its
volume is counted in `unpriced_volume` instead of a bar.
"""

from __future__ import annotations

import heapq
import operator
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from models.intervals import interval_name
from models.mbo import F_VOLUME_ONLY
from models.trades import TRADE_DTYPE
from tables.watermark import Watermark, Watermarked

SIDE_BUY: Final = ord("B")
SIDE_SELL: Final = ord("A")


_SAFE: Final = 1 << 62
# An open window's price fields before a priced trade reached it: any price replaces them.
_NO_OPEN_TS: Final = (1 << 63) - 1
_NO_HIGH: Final = -(1 << 63)
_NO_LOW: Final = (1 << 63) - 1


def exact_dot(values: np.ndarray, weights: np.ndarray) -> int:
    """sum(values * weights) as an exact int, in int64 when that provably cannot overflow.

    Values are prices (up to 2**63) and weights sizes or nanoseconds: their products overflow
    int64, but the spread of prices within one batch is small. So the sum is taken as
    base * sum(weights) + sum((values - base) * weights), the second in numpy (split in two
    limbs if need be) when its bound fits, else in Python ints (exact at any size, slower).
    """
    if not len(values):
        return 0
    base = int(values.min())
    spread = int(values.max()) - base
    total_w = int(weights.sum())  # sizes or durations within one batch: far below 2**63
    if spread == 0:
        return base * total_w
    if spread * total_w < _SAFE:
        return base * total_w + int(np.dot(values - base, weights))
    if total_w < _SAFE >> 20 and ((spread >> 20) + 1) * total_w < _SAFE:
        # Two limbs: each dot product stays under 2**62.
        q = values - base
        hi = int(np.dot(q >> 20, weights))
        lo = int(np.dot(q & 0xFFFFF, weights))
        return base * total_w + (hi << 20) + lo
    return sum(map(operator.mul, values.tolist(), weights.tolist()))


@dataclass(slots=True)
class _Acc:
    """An open window's running totals; every sum an exact int."""

    open_ts: int
    open_px: int
    high: int
    low: int
    close_ts: int
    close_px: int
    volume: int = 0
    trades: int = 0
    buy_volume: int = 0
    sell_volume: int = 0
    pv: int = 0  # sum of price * size
    twap_area: int = 0  # sum of price * ns it stood, up to the instrument's clock
    twap_from: int = 0  # where the window's time-weighting starts
    priced_volume: int = 0  # the volume of trades that set prices: the VWAP's weight

    @property
    def priced(self) -> bool:
        return self.open_ts != _NO_OPEN_TS

    def to_list(self) -> list[int]:
        return [getattr(self, f) for f in _ACC_FIELDS]


_ACC_FIELDS: Final = tuple(_Acc.__slots__)  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class _Part:
    """What some trades of one window add to it."""

    open_ts: int
    open_px: int
    high: int
    low: int
    close_ts: int
    close_px: int
    volume: int
    trades: int
    buy_volume: int
    sell_volume: int
    pv: int
    priced_volume: int

    @classmethod
    def of(cls, ts: np.ndarray, px: np.ndarray, size: np.ndarray, side: np.ndarray) -> _Part:
        first = int(np.argmin(ts))  # first arrival among the earliest
        last = len(ts) - 1 - int(np.argmax(ts[::-1]))  # last arrival among the latest
        return cls(
            open_ts=int(ts[first]),
            open_px=int(px[first]),
            high=int(px.max()),
            low=int(px.min()),
            close_ts=int(ts[last]),
            close_px=int(px[last]),
            volume=int(size.sum()),
            trades=len(size),
            buy_volume=int(size[side == SIDE_BUY].sum()),
            sell_volume=int(size[side == SIDE_SELL].sum()),
            pv=exact_dot(px, size),
            priced_volume=int(size.sum()),
        )

    @classmethod
    def volume_only(cls, size: np.ndarray, side: np.ndarray) -> _Part:
        """Trades that count in volume and set no price."""
        return cls(
            open_ts=_NO_OPEN_TS,
            open_px=0,
            high=_NO_HIGH,
            low=_NO_LOW,
            close_ts=-1,
            close_px=0,
            volume=int(size.sum()),
            trades=len(size),
            buy_volume=int(size[side == SIDE_BUY].sum()),
            sell_volume=int(size[side == SIDE_SELL].sum()),
            pv=0,
            priced_volume=0,
        )


@dataclass(frozen=True, slots=True)
class Bar:
    instrument_id: int
    publisher_id: int  # of the instrument's first trade
    interval_ns: int
    start: int  # ts_event of the window start, ns
    open: int  # prices in 1e-9 units, as in DBN
    high: int
    low: int
    close: int
    volume: int
    trades: int
    buy_volume: int  # aggressor side B
    sell_volume: int  # aggressor side A (side N counts in neither)
    vwap: float
    twap: float

    @property
    def end(self) -> int:
        return self.start + self.interval_ns

    def as_dict(self) -> dict[str, Any]:
        return {
            "instrument_id": self.instrument_id,
            "publisher_id": self.publisher_id,
            "interval": interval_name(self.interval_ns),
            "start": self.start,
            "open": self.open,
            "high": self.high,
            "low": self.low,
            "close": self.close,
            "volume": self.volume,
            "trades": self.trades,
            "buy_volume": self.buy_volume,
            "sell_volume": self.sell_volume,
            "vwap": self.vwap,
            "twap": self.twap,
        }


@dataclass
class _Track:
    """One instrument's price over time for one interval, from the trades that interval took
    (a trade too late for a window changes nothing about it, its TWAP included)."""

    last_px: int | None = None  # the price standing now
    clock: int = 0  # latest ts_event taken: a trade stamped earlier takes effect here
    first_t: int | None = None  # when a price first stood: time-weighting starts there
    last_close: int | None = None  # the close of the last bar emitted: the price standing
    # price * time the track ran through windows that had no trade then, by window start: a
    # trade that comes late into one (within the lateness) opens it with this time credited
    unopened: dict[int, int] = field(default_factory=dict)


@dataclass
class _Instrument:
    open: dict[int, dict[int, _Acc]] = field(default_factory=dict)  # interval -> start -> acc
    tracks: dict[int, _Track] = field(default_factory=dict)  # interval -> price track
    publisher_id: int = 0


@dataclass
class Added:
    late: np.ndarray  # trades whose window had been emitted, per interval
    late_intervals: np.ndarray  # the interval each late row was late for


class BarEngine(Watermarked):
    def __init__(self, intervals_ns: list[int], lateness_ns: int) -> None:
        if not intervals_ns or any(i <= 0 for i in intervals_ns):
            raise ValueError("intervals must be positive")
        self.intervals = sorted(set(intervals_ns))
        # Windows ending at or before it are closed (emitted, or emitted at the next close).
        self.clock = Watermark(lateness_ns)
        self.late_count = 0
        self.unpriced_volume = 0  # volume-only trades before any price (module docstring)
        self._instruments: dict[int, _Instrument] = {}
        self._ends: list[tuple[int, int, int]] = []  # heap of (window end, interval, instrument)

    def add(self, instrument_id: int, trades: np.ndarray) -> Added:
        """Take one instrument's trades in arrival order; return those that came too late."""
        assert trades.dtype == TRADE_DTYPE
        if not len(trades):
            return Added(trades[:0], np.zeros(0, np.int64))
        return self._add(instrument_id, trades, self._thresholds(trades))

    def add_stream(self, trades: np.ndarray) -> Added:
        """Trades of any instruments in arrival order (a file's chunk): the same as adding
        each instrument's trades with `add`."""
        assert trades.dtype == TRADE_DTYPE
        if not len(trades):
            return Added(trades[:0], np.zeros(0, np.int64))
        thresholds = self._thresholds(trades)
        iids = trades["instrument_id"]
        late, late_iv = [], []
        for iid in np.unique(iids).tolist():
            mine = iids == iid
            got = self._add(iid, trades[mine], thresholds[mine])
            late.append(got.late)
            late_iv.append(got.late_intervals)
        return Added(np.concatenate(late), np.concatenate(late_iv))

    def _thresholds(self, trades: np.ndarray) -> np.ndarray:
        """Per trade, the window end it must beat: its arrival less the lateness, and the
        watermark (a window it has passed is closed)."""
        return self.clock.limits(trades["ts_recv"])

    def _add(self, instrument_id: int, trades: np.ndarray, thresholds: np.ndarray) -> Added:
        volume_only = (trades["flags"] & F_VOLUME_ONLY) != 0
        if not volume_only.any():
            return self._add_priced(instrument_id, trades, thresholds)
        priced = ~volume_only
        a = self._add_priced(instrument_id, trades[priced], thresholds[priced])
        b = self._add_volume(instrument_id, trades[volume_only], thresholds[volume_only])
        return Added(
            np.concatenate([a.late, b.late]), np.concatenate([a.late_intervals, b.late_intervals])
        )

    def _instrument(self, instrument_id: int, trades: np.ndarray) -> _Instrument:
        inst = self._instruments.get(instrument_id)
        if inst is None:
            inst = self._instruments[instrument_id] = _Instrument()
            inst.publisher_id = int(trades["publisher_id"][0])
        return inst

    def _add_volume(self, instrument_id: int, trades: np.ndarray, thresholds: np.ndarray) -> Added:
        """Trades that count in volume and set no price, into the windows of their ts_event."""
        inst = self._instrument(instrument_id, trades)
        ts = trades["ts_event"].astype(np.int64)
        size = trades["size"].astype(np.int64)
        side = trades["side"]
        late_rows: list[np.ndarray] = []
        late_iv: list[np.ndarray] = []
        for iv in self.intervals:
            starts = ts - ts % iv
            ok = starts + iv > thresholds
            if not ok.all():
                late_rows.append(np.flatnonzero(~ok))
                late_iv.append(np.full(len(late_rows[-1]), iv, np.int64))
            if not ok.any():
                continue
            windows = inst.open.setdefault(iv, {})
            if iv not in inst.tracks:
                inst.tracks[iv] = _Track()
            st, sz, sd = starts[ok], size[ok], side[ok]
            order = np.argsort(st, kind="stable")
            cuts = np.flatnonzero(np.diff(st[order])) + 1
            for g in np.split(order, cuts):
                start = int(st[g[0]])
                part = _Part.volume_only(sz[g], sd[g])
                self._fold(instrument_id, iv, windows, inst.tracks[iv], start, part)
        if not late_rows:
            return Added(trades[:0], np.zeros(0, np.int64))
        idx = np.concatenate(late_rows)
        self.late_count += len(idx)
        return Added(trades[idx], np.concatenate(late_iv))

    def _add_priced(self, instrument_id: int, trades: np.ndarray, thresholds: np.ndarray) -> Added:
        if not len(trades):
            return Added(trades[:0], np.zeros(0, np.int64))
        ts = trades["ts_event"].astype(np.int64)
        inst = self._instrument(instrument_id, trades)
        late_rows: list[np.ndarray] = []
        late_iv: list[np.ndarray] = []
        px = trades["price"].astype(np.int64)
        size = trades["size"].astype(np.int64)
        side = trades["side"]
        whole = None
        for iv in self.intervals:
            starts = ts - ts % iv
            ok = starts + iv > thresholds
            if ok.all():
                whole = self._take(instrument_id, inst, iv, starts, ts, px, size, side, whole)
                continue
            late_rows.append(np.flatnonzero(~ok))
            late_iv.append(np.full(len(late_rows[-1]), iv, np.int64))
            if ok.any():
                self._take(instrument_id, inst, iv, starts[ok], ts[ok], px[ok], size[ok], side[ok])
        if not late_rows:
            return Added(trades[:0], np.zeros(0, np.int64))
        idx = np.concatenate(late_rows)
        self.late_count += len(idx)
        return Added(trades[idx], np.concatenate(late_iv))

    def _take(
        self,
        iid: int,
        inst: _Instrument,
        iv: int,
        starts: np.ndarray,
        ts: np.ndarray,
        px: np.ndarray,
        size: np.ndarray,
        side: np.ndarray,
        whole: _Part | None = None,
    ) -> _Part | None:
        """Fold trades (all on time for `iv`) into the interval's windows. `whole` is what
        all of them add to one window, if another interval has worked it out already."""
        windows = inst.open.setdefault(iv, {})
        track = inst.tracks.get(iv)
        if track is None:
            track = inst.tracks[iv] = _Track()
        # The interval's own clock: a trade stamped earlier than one already taken takes
        # effect at that later time, so time never runs backwards for the TWAP.
        eff = np.maximum.accumulate(np.maximum(ts, track.clock))
        if track.first_t is None:
            track.first_t = int(eff[0])
        first = int(starts[0])
        if first == int(starts[-1]) and (starts == first).all():  # one window: the usual case
            if whole is None:
                whole = _Part.of(ts, px, size, side)
            self._fold(iid, iv, windows, track, first, whole)
        else:
            order = np.argsort(starts, kind="stable")
            cuts = np.flatnonzero(np.diff(starts[order])) + 1
            for g in np.split(order, cuts):
                part = _Part.of(ts[g], px[g], size[g], side[g])
                self._fold(iid, iv, windows, track, int(starts[g[0]]), part)
        # The price standing before each trade stood from the previous effective time to
        # this one's.
        seg_a = np.empty_like(eff)
        seg_a[0] = track.clock
        seg_a[1:] = eff[:-1]
        seg_p = np.empty_like(px)
        seg_p[1:] = px[:-1]
        seg_b = eff
        if track.last_px is None:
            seg_a, seg_b, seg_p = seg_a[1:], seg_b[1:], seg_p[1:]
        else:
            seg_p[0] = track.last_px
        keep = seg_b > seg_a
        if keep.any():
            self._credit(windows, track, iv, seg_a[keep], seg_b[keep], seg_p[keep])
        track.last_px = int(px[-1])
        track.clock = int(eff[-1])
        return whole

    def _credit(
        self,
        windows: dict[int, _Acc],
        track: _Track,
        iv: int,
        a: np.ndarray,
        b: np.ndarray,
        p: np.ndarray,
    ) -> None:
        """Credit price * time of segments [a, b) to the windows they fall in: the open ones,
        and those not open yet that a trade within the lateness may still open."""
        wa = a - a % iv
        last = b - 1
        inside = wa == last - last % iv
        w0 = int(wa[0])
        if w0 == int(wa[-1]) and inside.all():  # all in one window: the usual case
            acc = windows.get(w0)
            if acc is not None:
                acc.twap_area += exact_dot(p, b - a)
            else:
                self._unopened(track, iv, {w0: exact_dot(p, b - a)})
            return
        unopened: dict[int, int] = {}
        if inside.any():
            ws, d, pi = wa[inside], (b - a)[inside], p[inside]
            order = np.argsort(ws, kind="stable")
            ws, d, pi = ws[order], d[order], pi[order]
            cuts = (np.flatnonzero(np.diff(ws)) + 1).tolist()
            for lo, hi in zip([0, *cuts], [*cuts, len(ws)], strict=True):
                start = int(ws[lo])
                acc = windows.get(start)
                if acc is not None:
                    acc.twap_area += exact_dot(pi[lo:hi], d[lo:hi])
                else:
                    unopened[start] = exact_dot(pi[lo:hi], d[lo:hi])
        # A segment across window edges: rare in busy data, but in sparse data (a trade every
        # few seconds, and a backfill chunk holding thousands of windows) nearly every segment
        # crosses one. Only the windows it overlaps can gain: visit whichever is fewer, the
        # window starts it spans or the open windows.
        # Windows not open that a trade may still open: those the watermark has not passed.
        wm = self.watermark
        floor = None if wm is None else wm - wm % iv  # the first window a trade may still open
        for k in np.flatnonzero(~inside).tolist():
            t0, t1, price = int(a[k]), int(b[k]), int(p[k])
            first, end = t0 - t0 % iv, t1
            if (end - first) // iv < len(windows):
                spanned = ((s, windows.get(s)) for s in range(first, end, iv))
                overlapping = [(s, acc) for s, acc in spanned if acc is not None]
            else:
                overlapping = list(windows.items())
            for start, acc in overlapping:
                overlap = min(t1, start + iv) - max(t0, start)
                if overlap > 0:
                    acc.twap_area += price * overlap
            for start in range(first if floor is None else max(first, floor), end, iv):
                if start not in windows:
                    overlap = min(t1, start + iv) - max(t0, start)
                    if overlap > 0:
                        unopened[start] = unopened.get(start, 0) + price * overlap
        if unopened:
            self._unopened(track, iv, unopened)

    def _unopened(self, track: _Track, iv: int, areas: dict[int, int]) -> None:
        """Keep price * time of windows not open, for those the watermark has not passed."""
        wm = self.watermark
        kept = track.unopened
        for start, area in areas.items():
            if wm is None or start + iv > wm:
                kept[start] = kept.get(start, 0) + area
        if wm is not None:
            for start in [s for s in kept if s + iv <= wm]:
                del kept[start]

    def _fold(
        self,
        iid: int,
        iv: int,
        windows: dict[int, _Acc],
        track: _Track,
        start: int,
        part: _Part,
    ) -> None:
        acc = windows.get(start)
        if acc is None:
            # Time-weighting covers the window from its start, or from the instrument's first
            # trade ever if that came later.
            acc = windows[start] = _Acc(
                open_ts=part.open_ts,
                open_px=part.open_px,
                high=part.high,
                low=part.low,
                close_ts=part.close_ts,
                close_px=part.close_px,
                twap_from=max(start, track.first_t if track.first_t is not None else start),
                twap_area=track.unopened.pop(start, 0),
            )
            heapq.heappush(self._ends, (start + iv, iv, iid))
        else:
            if not acc.priced and part.open_ts != _NO_OPEN_TS and track.first_t is not None:
                # its first priced trade: time-weighting starts where the price first stood
                acc.twap_from = max(start, track.first_t)
            if part.open_ts < acc.open_ts:
                acc.open_ts, acc.open_px = part.open_ts, part.open_px
            if part.close_ts >= acc.close_ts:
                acc.close_ts, acc.close_px = part.close_ts, part.close_px
            acc.high = max(acc.high, part.high)
            acc.low = min(acc.low, part.low)
        acc.volume += part.volume
        acc.trades += part.trades
        acc.buy_volume += part.buy_volume
        acc.sell_volume += part.sell_volume
        acc.pv += part.pv
        acc.priced_volume += part.priced_volume

    def instruments(self) -> list[int]:
        return list(self._instruments)

    def export(self, instrument_id: int) -> dict[str, Any]:
        """An instrument's open windows and price tracks, as plain JSON-able values (sums can
        exceed 64 bits: encode with the standard json module)."""
        inst = self._instruments[instrument_id]
        return {
            "publisher_id": inst.publisher_id,
            "open": [
                [iv, start, *acc.to_list()]
                for iv, wins in inst.open.items()
                for start, acc in wins.items()
            ],
            "tracks": [
                [iv, t.last_px, t.clock, t.first_t, t.last_close, sorted(t.unopened.items())]
                for iv, t in inst.tracks.items()
            ],
        }

    def restore(self, instrument_id: int, state: dict[str, Any]) -> None:
        """Take back what `export` gave (intervals no longer configured are left out)."""
        inst = _Instrument(publisher_id=state["publisher_id"])
        for iv, start, *values in state["open"]:
            if iv in self.intervals:
                if len(values) == len(_ACC_FIELDS) - 1:
                    values.append(values[_ACC_FIELDS.index("volume")])  # all trades priced then
                inst.open.setdefault(iv, {})[start] = _Acc(*values)
                heapq.heappush(self._ends, (start + iv, iv, instrument_id))
        # four fields before last_close was kept, five before the unopened windows' time
        for iv, *track in state["tracks"]:
            if iv in self.intervals:
                unopened = dict(map(tuple, track.pop())) if len(track) == 5 else {}
                inst.tracks[iv] = _Track(*track, unopened=unopened)
        self._instruments[instrument_id] = inst

    def close(self) -> list[Bar]:
        """Bars whose window the watermark has passed, by (end, interval, instrument_id)."""
        wm = self.watermark
        out: list[Bar] = []
        while self._ends and wm is not None and self._ends[0][0] <= wm:
            end, iv, iid = heapq.heappop(self._ends)
            inst = self._instruments[iid]
            acc = inst.open[iv].pop(end - iv)
            bar = self._finish(iid, iv, end - iv, acc, inst)
            if bar is not None:
                out.append(bar)
        return out

    def flush(self) -> list[Bar]:
        """Every open window: what a watermark past them all closes."""
        out: list[Bar] = []
        while self._ends:
            end, iv, iid = heapq.heappop(self._ends)
            inst = self._instruments[iid]
            bar = self._finish(iid, iv, end - iv, inst.open[iv].pop(end - iv), inst)
            if bar is not None:
                out.append(bar)
        return out

    def _finish(self, iid: int, iv: int, start: int, acc: _Acc, inst: _Instrument) -> Bar | None:
        track = inst.tracks[iv]
        if acc.priced:
            prices = (acc.open_px, acc.high, acc.low, acc.close_px)
            vwap = acc.pv / acc.priced_volume if acc.priced_volume else float(acc.close_px)
            twap = self._twap(start + iv, acc, track)
            track.last_close = acc.close_px
        elif track.last_close is not None:
            # No trade in it set a price, so the one standing when it began (the close of the
            # bar before it: windows are finished in order) stood throughout.
            px = track.last_close
            prices, vwap, twap = (px, px, px, px), float(px), float(px)
        else:  # before the instrument's first priced bar: no price for its volume's bar
            self.unpriced_volume += acc.volume
            return None
        return Bar(
            instrument_id=iid,
            publisher_id=inst.publisher_id,
            interval_ns=iv,
            start=start,
            open=prices[0],
            high=prices[1],
            low=prices[2],
            close=prices[3],
            volume=acc.volume,
            trades=acc.trades,
            buy_volume=acc.buy_volume,
            sell_volume=acc.sell_volume,
            vwap=vwap,
            twap=twap,
        )

    @staticmethod
    def _twap(end: int, acc: _Acc, track: _Track) -> float:
        area = acc.twap_area
        if track.clock < end and track.last_px is not None:
            # Time is credited up to the track's clock; the price standing there stood until
            # the window's end.
            area += track.last_px * (end - max(track.clock, acc.twap_from))
        covered = end - acc.twap_from
        return area / covered if covered > 0 else float(acc.close_px)
