"""Pressure: per instrument, event-time tumbling windows of who is trading and how the top of
the book moves (see "Institutional flow detection" in ../shared/design.md). No Faust here.

Inputs come in book order per instrument, as the books stage makes them from one raw message:
its trades (`models.trades` records with the book event each belongs to) and its top-of-book
after every event that changed it. `FlowState` turns them into classified trades and OFI
increments; `PressureEngine` folds those into windows with the bars engine's rules (window by
`ts_event`; late when the window ended more than the lateness before `ts_recv`; closed when the
source watermark passes the end; see tables/bars.py).

Aggressor side: Databento's `side` on T records (B buy, A sell). Side N falls back to the quote
rule against the mid of the book before the trade's event (above: buy, below: sell), and at the
mid, or with a side of the book empty, to the tick rule (a price above the last different trade
price: buy; below: sell; the first trade of an instrument: unclassified, counted in neither).

OFI, Cont, Kukanov & Stoikov (2014), over consecutive top-of-book states n-1, n:
    e_n = [Pb_n >= Pb_n-1] qb_n - [Pb_n <= Pb_n-1] qb_n-1
        - [Pa_n <= Pa_n-1] qa_n + [Pa_n >= Pa_n-1] qa_n-1
in contracts (shares). A side that is empty in either state contributes nothing to that step.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from models.intervals import interval_name
from models.mbo import UNDEF_PRICE
from tables.bars import SIDE_BUY, SIDE_SELL, exact_dot
from tables.watermark import Watermark, Watermarked

BUY: Final = 1
SELL: Final = -1


@dataclass
class Flow:
    """One message's worth of classified trades and OFI steps, each with its times."""

    trade_ts: np.ndarray  # int64 ts_event
    trade_recv: np.ndarray  # int64 ts_recv
    price: np.ndarray  # int64, 1e-9 units
    size: np.ndarray  # int64
    sign: np.ndarray  # int8: BUY, SELL or 0
    ofi_ts: np.ndarray  # int64 ts_event of the event that changed the top of book
    ofi_recv: np.ndarray  # int64
    ofi: np.ndarray  # int64 e_n


@dataclass
class FlowState:
    """Per instrument: the top of book and the tick rule's memory, carried across messages."""

    bbo: tuple[int, int, int, int] | None = None  # bid_px, bid_sz, ask_px, ask_sz
    last_px: int | None = None  # the last trade price
    last_dir: int = 0  # the direction of the last price change (the tick rule's answer)

    def export(self) -> list[Any]:
        return [list(self.bbo) if self.bbo is not None else None, self.last_px, self.last_dir]

    @classmethod
    def restore(cls, state: list[Any]) -> FlowState:
        bbo, last_px, last_dir = state
        return cls(tuple(bbo) if bbo is not None else None, last_px, last_dir)  # type: ignore[arg-type]

    def flow(
        self, trades: np.ndarray, trade_events: np.ndarray, bbo: dict[str, Any] | None
    ) -> Flow:
        """Classify `trades` (in book order, with their book event numbers) and take OFI steps
        from `bbo` (columns of the books stage's bbo message: event, ts_event, ts_recv,
        bid_px, bid_sz, ask_px, ask_sz), then carry the state on."""
        if bbo is not None and len(bbo["event"]):
            b_ev = np.asarray(bbo["event"], np.int64)
            q = np.column_stack(
                [np.asarray(bbo[c], np.int64) for c in ("bid_px", "bid_sz", "ask_px", "ask_sz")]
            )
        else:
            b_ev = np.zeros(0, np.int64)
            q = np.zeros((0, 4), np.int64)
        sign = self._classify(trades, trade_events, b_ev, q)
        ofi = self._ofi(q)
        if len(q):
            self.bbo = tuple(int(x) for x in q[-1])  # type: ignore[assignment]
        return Flow(
            trade_ts=trades["ts_event"].astype(np.int64),
            trade_recv=trades["ts_recv"].astype(np.int64),
            price=trades["price"].astype(np.int64),
            size=trades["size"].astype(np.int64),
            sign=sign,
            ofi_ts=np.asarray(bbo["ts_event"], np.int64) if len(q) else np.zeros(0, np.int64),
            ofi_recv=np.asarray(bbo["ts_recv"], np.int64) if len(q) else np.zeros(0, np.int64),
            ofi=ofi,
        )

    def _classify(
        self, trades: np.ndarray, events: np.ndarray, b_ev: np.ndarray, q: np.ndarray
    ) -> np.ndarray:
        n = len(trades)
        sign = np.zeros(n, np.int8)
        if not n:
            return sign
        side = trades["side"]
        px = trades["price"].astype(np.int64)
        sign[side == SIDE_BUY] = BUY
        sign[side == SIDE_SELL] = SELL
        # Tick rule for every trade (used only where nothing better applies): the direction of
        # the last price change up to and including this trade.
        prev = np.empty(n, np.int64)
        prev[0] = px[0] if self.last_px is None else self.last_px
        prev[1:] = px[:-1]
        step = np.sign(px - prev).astype(np.int8)
        idx = np.where(step != 0, np.arange(n), -1)
        np.maximum.accumulate(idx, out=idx)
        tick = np.where(idx >= 0, step[np.maximum(idx, 0)], self.last_dir).astype(np.int8)
        undecided = sign == 0
        if undecided.any():
            # The top of book before each trade's event: the last change of an earlier event.
            at = np.searchsorted(b_ev, events, side="left") - 1
            before = np.empty((n, 4), np.int64)
            have = at >= 0
            before[have] = q[at[have]]
            if self.bbo is not None:
                before[~have] = self.bbo
            known = have | (self.bbo is not None)
            bid, ask = before[:, 0], before[:, 2]
            two_sided = known & (bid != UNDEF_PRICE) & (ask != UNDEF_PRICE)
            bid = np.where(two_sided, bid, 0)
            ask = np.where(two_sided, ask, 0)
            # Compare 2 * price with bid + ask: exact in integers (prices are far below 2**61).
            rel = np.sign(2 * px - (bid + ask))
            quote = np.where(two_sided, rel, 0).astype(np.int8)
            sign = np.where(undecided, np.where(quote != 0, quote, tick), sign).astype(np.int8)
        self.last_px = int(px[-1])
        self.last_dir = int(tick[-1])
        return sign

    def _ofi(self, q: np.ndarray) -> np.ndarray:
        if not len(q):
            return np.zeros(0, np.int64)
        prev = np.empty_like(q)
        prev[1:] = q[:-1]
        if self.bbo is not None:
            prev[0] = self.bbo
        else:
            prev[0] = q[0]  # no earlier state: the first step counts nothing
        pb, qb, pa, qa = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
        pb0, qb0, pa0, qa0 = prev[:, 0], prev[:, 1], prev[:, 2], prev[:, 3]
        bid_ok = (pb != UNDEF_PRICE) & (pb0 != UNDEF_PRICE)
        ask_ok = (pa != UNDEF_PRICE) & (pa0 != UNDEF_PRICE)
        e = np.where(bid_ok, (pb >= pb0) * qb - (pb <= pb0) * qb0, 0)
        e += np.where(ask_ok, (pa >= pa0) * qa0 - (pa <= pa0) * qa, 0)
        if self.bbo is None:
            e[0] = 0
        return e.astype(np.int64)


@dataclass(slots=True)
class _Acc:
    buy: int = 0
    sell: int = 0
    trades: int = 0
    volume: int = 0
    large: int = 0
    pv: int = 0
    ofi: int = 0
    ofi_steps: int = 0
    last_ts: int = -1
    last_px: int | None = None
    # sum of squared sizes of the classified trades; last, so rows written before it restore
    sq: int = 0

    def to_list(self) -> list[Any]:
        return [getattr(self, f) for f in self.__slots__]  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class PressureWindow:
    instrument_id: int
    interval_ns: int
    start: int
    buy_volume: int
    sell_volume: int
    volume: int  # every trade, classified or not
    trades: int
    large_volume: int  # volume of trades of at least the large-trade size
    ofi: int
    ofi_steps: int
    vwap: float | None
    last_price: int | None
    # What a sum over contracts needs (tables/options.py); not published.
    pv: int = 0  # sum of price x size, exact
    last_ts: int = -1  # ts_event of the trade that set last_price
    sq: int = 0  # sum of squared sizes of the classified trades (what net_score divides by)

    @property
    def end(self) -> int:
        return self.start + self.interval_ns

    @property
    def tfi(self) -> float:
        """(buy - sell) / (buy + sell), in [-1, 1]; 0 with no classified volume."""
        total = self.buy_volume + self.sell_volume
        return (self.buy_volume - self.sell_volume) / total if total else 0.0

    @property
    def net_score(self) -> float:
        """Net signed volume (buy - sell) in units of its own standard error: divided by the
        square root of the sum of the classified trades' squared sizes. Were each trade's side a
        fair coin, this would be about standard normal whatever the window's volume or sizes,
        which is why it separates a large one-sided window from a quiet lopsided one where TFI
        cannot. 0 with no classified volume."""
        classified = self.buy_volume + self.sell_volume
        if not classified:
            return 0.0
        # sq >= classified for sizes >= 1: the bound also covers windows opened before sq existed
        return (self.buy_volume - self.sell_volume) / math.sqrt(max(self.sq, classified))

    def as_dict(self) -> dict[str, Any]:
        return {
            "instrument_id": self.instrument_id,
            "interval": interval_name(self.interval_ns),
            "start": self.start,
            "end": self.end,
            "buy_volume": self.buy_volume,
            "sell_volume": self.sell_volume,
            "volume": self.volume,
            "trades": self.trades,
            "large_volume": self.large_volume,
            "tfi": self.tfi,
            "net_score": self.net_score,
            "ofi": self.ofi,
            "ofi_steps": self.ofi_steps,
            "vwap": self.vwap,
            "last_price": self.last_price,
        }


@dataclass
class PressureEngine(Watermarked):
    interval_ns: int
    lateness_ns: int
    large_size: int
    late_count: int = 0
    _open: dict[tuple[int, int], _Acc] = field(default_factory=dict)  # (iid, start) -> acc
    _ends: list[tuple[int, int]] = field(default_factory=list)  # heap of (end, iid)

    def __post_init__(self) -> None:
        if self.interval_ns <= 0 or self.large_size < 1:
            raise ValueError("pressure needs a positive interval and large-trade size")
        self.clock = Watermark(self.lateness_ns)

    def _on_time(self, ts: np.ndarray, recv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        starts = ts - ts % self.interval_ns
        ok = starts + self.interval_ns > self.clock.limits(recv)
        self.late_count += int((~ok).sum())
        return starts, ok

    def _acc(self, iid: int, start: int) -> _Acc:
        acc = self._open.get((iid, start))
        if acc is None:
            acc = self._open[(iid, start)] = _Acc()
            heapq.heappush(self._ends, (start + self.interval_ns, iid))
        return acc

    def add(self, instrument_id: int, flow: Flow) -> int:
        """Fold one message's flow in; return how many of its items were late."""
        late_before = self.late_count
        starts, ok = self._on_time(flow.trade_ts, flow.trade_recv)
        if ok.any():
            s, px, size, sign, ts = (
                starts[ok],
                flow.price[ok],
                flow.size[ok],
                flow.sign[ok],
                flow.trade_ts[ok],
            )
            for start in np.unique(s).tolist():
                m = s == start
                acc = self._acc(instrument_id, start)
                sz = size[m]
                sg = sign[m]
                acc.buy += int(sz[sg == BUY].sum())
                acc.sell += int(sz[sg == SELL].sum())
                classified = sz[sg != 0]
                acc.sq += exact_dot(classified, classified)
                acc.trades += int(m.sum())
                acc.volume += int(sz.sum())
                acc.large += int(sz[sz >= self.large_size].sum())
                acc.pv += exact_dot(px[m], sz)
                t = ts[m]
                last = len(t) - 1 - int(np.argmax(t[::-1]))  # the last to arrive of the latest
                if int(t[last]) >= acc.last_ts:
                    acc.last_ts, acc.last_px = int(t[last]), int(px[m][last])
        starts, ok = self._on_time(flow.ofi_ts, flow.ofi_recv)
        if ok.any():
            s, e = starts[ok], flow.ofi[ok]
            for start in np.unique(s).tolist():
                m = s == start
                acc = self._acc(instrument_id, start)
                acc.ofi += int(e[m].sum())
                acc.ofi_steps += int(m.sum())
        return self.late_count - late_before

    def export(self, instrument_id: int) -> list[list[Any]]:
        """The instrument's open windows, as JSON-able rows (sums can pass 64 bits)."""
        return [
            [start, *acc.to_list()] for (i, start), acc in self._open.items() if i == instrument_id
        ]

    def restore(self, instrument_id: int, rows: list[list[Any]]) -> None:
        for start, *values in rows:
            self._open[(instrument_id, start)] = _Acc(*values)
            heapq.heappush(self._ends, (start + self.interval_ns, instrument_id))

    def close(self) -> list[PressureWindow]:
        out = []
        wm = self.watermark
        while self._ends and wm is not None and self._ends[0][0] <= wm:
            end, iid = heapq.heappop(self._ends)
            out.append(self._finish(iid, end - self.interval_ns))
        return out

    def flush(self) -> list[PressureWindow]:
        out = []
        while self._ends:
            end, iid = heapq.heappop(self._ends)
            out.append(self._finish(iid, end - self.interval_ns))
        return out

    def _finish(self, iid: int, start: int) -> PressureWindow:
        a = self._open.pop((iid, start))
        return PressureWindow(
            instrument_id=iid,
            interval_ns=self.interval_ns,
            start=start,
            buy_volume=a.buy,
            sell_volume=a.sell,
            volume=a.volume,
            trades=a.trades,
            large_volume=a.large,
            ofi=a.ofi,
            ofi_steps=a.ofi_steps,
            vwap=a.pv / a.volume if a.volume else None,
            last_price=a.last_px,
            pv=a.pv,
            last_ts=a.last_ts,
            sq=a.sq,
        )
