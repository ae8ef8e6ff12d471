"""Event-time windows of any aggregate, per key: tumbling, hopping, sliding and session windows,
closed by a watermark, never by the wall clock. No Faust here.

The bars engine (tables/bars.py) is the vectorised special case of tumbling windows for trades;
this module serves every other aggregate, one record at a time, with the same rules:

- A record has an event time `ts` (which windows it belongs to) and an arrival time `recv`
  (ts_recv, or the time it was read). It is late for a window that ended more than the allowed
  lateness before it arrived (`end <= recv - lateness`): a property of the record, so the same
  records make the same windows at any pace, batch size or partition count.
- The caller `advance`s the watermark to a bound on arrivals still to come, less the lateness;
  `close()` emits each window once, final, when the watermark reaches its end, so idle keys
  close as time moves on.
- A record late for a window, or for a window already emitted (only input out of arrival order
  can do that), goes to `late` with the window it missed, and is counted; never silently lost.

Window kinds (times in ns; `end` exclusive except where said):
- `Tumbling(size)`: [k*size, (k+1)*size).
- `Hopping(size, hop)`: [k*hop, k*hop + size), every one that holds the record.
- `Sliding(size)`: one window per distinct record time t of a key, [t - size, t] inclusive,
  holding every record of the key in that range (as Quix Streams defines sliding windows).
  A record is late when its own window is: the windows that hold it all end at or after it.
- `Session(gap)`: a key's records closer than `gap` to one another; reported as start = first
  record time, end = last record time, and closed at last + gap. A record is late when its own
  session would have closed before it came, or when a session it would join had closed.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

A = TypeVar("A")  # an aggregate
V = TypeVar("V")  # a record's value
K = Hashable


@dataclass(frozen=True, slots=True)
class Tumbling:
    size: int

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError("a tumbling window's size must be positive")


@dataclass(frozen=True, slots=True)
class Hopping:
    size: int
    hop: int

    def __post_init__(self) -> None:
        if self.size <= 0 or self.hop <= 0:
            raise ValueError("a hopping window's size and hop must be positive")
        if self.hop > self.size:
            raise ValueError("a hop longer than the window would leave records in no window")


@dataclass(frozen=True, slots=True)
class Sliding:
    size: int

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError("a sliding window's size must not be negative")


@dataclass(frozen=True, slots=True)
class Session:
    gap: int

    def __post_init__(self) -> None:
        if self.gap <= 0:
            raise ValueError("a session gap must be positive")


WindowSpec = Tumbling | Hopping | Sliding | Session


@dataclass(frozen=True, slots=True)
class Aggregate(Generic[A, V]):
    """How records fold into a window: `zero()`, `add(acc, value)`, and for sessions
    `merge(a, b)` (a record can join two sessions into one)."""

    zero: Callable[[], A]
    add: Callable[[A, V], A]
    merge: Callable[[A, A], A] | None = None


@dataclass(frozen=True, slots=True)
class Window(Generic[A]):
    key: Any
    start: int
    end: int
    value: A


@dataclass(frozen=True, slots=True)
class Late(Generic[V]):
    key: Any
    ts: int
    recv: int
    value: V
    window_start: int  # the window it missed (a session: where its own would have started)


@dataclass
class _Session(Generic[A]):
    first: int
    last: int
    acc: A


@dataclass
class _Key(Generic[A, V]):
    # tumbling and hopping: start -> aggregate
    open: dict[int, A] = field(default_factory=dict)
    # sliding: the key's records by time, and the window ends (record times) not yet emitted
    times: list[int] = field(default_factory=list)
    values: list[V] = field(default_factory=list)
    ends: set[int] = field(default_factory=set)
    # session: open sessions by first time, and the end of the latest one emitted
    sessions: list[_Session[A]] = field(default_factory=list)
    closed_until: int | None = None


class WindowEngine(Generic[A, V]):
    def __init__(self, spec: WindowSpec, aggregate: Aggregate[A, V], lateness_ns: int) -> None:
        if lateness_ns < 0:
            raise ValueError("lateness must not be negative")
        if isinstance(spec, Session) and aggregate.merge is None:
            raise ValueError("session windows need an aggregate that can merge")
        if isinstance(spec, Tumbling):
            spec = Hopping(spec.size, spec.size)
        self.spec = spec
        self.agg = aggregate
        self.lateness = lateness_ns
        self.watermark: int | None = None
        self.late: list[Late[V]] = []  # the side output; the caller takes and clears it
        self.late_count = 0
        self._keys: dict[Any, _Key[A, V]] = {}
        self._due: list[tuple[int, int, Any]] = []  # heap of (closes at, tiebreak, key)
        self._seq = 0

    def advance(self, received_through: int) -> None:
        """Everything still to come arrives at or after `received_through`."""
        wm = received_through - self.lateness
        if self.watermark is None or wm > self.watermark:
            self.watermark = wm

    def _limit(self, recv: int) -> int:
        limit = recv - self.lateness
        return limit if self.watermark is None else max(limit, self.watermark)

    def _due_at(self, when: int, key: Any) -> None:
        self._seq += 1
        heapq.heappush(self._due, (when, self._seq, key))

    def _late(self, key: Any, ts: int, recv: int, value: V, start: int) -> None:
        self.late.append(Late(key, ts, recv, value, start))
        self.late_count += 1

    def add(self, key: Any, ts: int, recv: int, value: V) -> None:
        st = self._keys.get(key)
        if st is None:
            st = self._keys[key] = _Key()
        limit = self._limit(recv)
        spec = self.spec
        if isinstance(spec, Hopping):
            k = (ts - spec.size) // spec.hop + 1
            while k * spec.hop <= ts:
                start = k * spec.hop
                k += 1
                if start + spec.size <= limit:
                    self._late(key, ts, recv, value, start)
                    continue
                acc = st.open.get(start)
                if acc is None:
                    acc = self.agg.zero()
                    self._due_at(start + spec.size, key)
                st.open[start] = self.agg.add(acc, value)
        elif isinstance(spec, Sliding):
            if ts <= limit:
                self._late(key, ts, recv, value, ts - spec.size)
                return
            i = bisect.bisect_right(st.times, ts)
            st.times.insert(i, ts)
            st.values.insert(i, value)
            if ts not in st.ends:
                st.ends.add(ts)
                self._due_at(ts, key)
        else:
            self._add_session(st, key, ts, recv, value, limit)

    def _add_session(
        self, st: _Key[A, V], key: Any, ts: int, recv: int, value: V, limit: int
    ) -> None:
        gap = self.spec.gap  # type: ignore[union-attr]
        touching = [s for s in st.sessions if s.first - gap < ts < s.last + gap]
        ends = [ts + gap, *(s.last + gap for s in touching)]
        if min(ends) <= limit or (st.closed_until is not None and ts < st.closed_until):
            self._late(key, ts, recv, value, ts)
            return
        merge = self.agg.merge
        assert merge is not None
        acc = self.agg.add(self.agg.zero(), value)
        first = last = ts
        for s in touching:
            acc = merge(s.acc, acc) if s.first <= ts else merge(acc, s.acc)
            first, last = min(first, s.first), max(last, s.last)
            st.sessions.remove(s)
        bisect.insort(st.sessions, _Session(first, last, acc), key=lambda s: s.first)
        self._due_at(last + gap, key)

    def close(self) -> list[Window[A]]:
        """Every window the watermark has passed, in the order they close."""
        out: list[Window[A]] = []
        wm = self.watermark
        while self._due and wm is not None and self._due[0][0] <= wm:
            when, _, key = heapq.heappop(self._due)
            out.extend(self._emit(key, when))
        return out

    def flush(self) -> list[Window[A]]:
        """Every open window, as at the end of a finite input."""
        out: list[Window[A]] = []
        while self._due:
            when, _, key = heapq.heappop(self._due)
            out.extend(self._emit(key, when))
        return out

    def _emit(self, key: Any, when: int) -> list[Window[A]]:
        st = self._keys[key]
        spec = self.spec
        if isinstance(spec, Hopping):
            start = when - spec.size
            acc = st.open.pop(start)
            return [Window(key, start, when, acc)]
        if isinstance(spec, Sliding):
            st.ends.discard(when)
            lo = bisect.bisect_left(st.times, when - spec.size)
            hi = bisect.bisect_right(st.times, when)
            acc = self.agg.zero()
            for v in st.values[lo:hi]:
                acc = self.agg.add(acc, v)
            # Records older than any window still to come are no longer needed: a window
            # yet to close, or one a record still to come would open (after the watermark).
            after = when + 1 if self.watermark is None else max(when, self.watermark) + 1
            oldest = min(min(st.ends, default=after), after) - spec.size
            drop = bisect.bisect_left(st.times, oldest)
            del st.times[:drop], st.values[:drop]
            return [Window(key, when - spec.size, when, acc)]
        # A session's due time moves when it grows: only a session that ends here closes.
        out = []
        for s in [s for s in st.sessions if s.last + spec.gap == when]:
            st.sessions.remove(s)
            st.closed_until = max(when, st.closed_until or when)
            out.append(Window(key, s.first, s.last, s.acc))
        return out
