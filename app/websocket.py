"""The WebSocket feed: subscriptions to the public topics, a snapshot then ordered updates, one
bounded queue and writer per client. No Faust here; `agents/web.py` serves it at `/ws` and
`app/topic_feed.py` feeds it from the broker.

Protocol (JSON text frames; docs/web.md#websocket has the whole schema):

    -> {"op": "subscribe", "channel": "bars.1m", "instrument_id": 7, "ref": "any"}
    <- {"type": "subscribed", "sub": 1, "channel": "bars.1m", "ref": "any", "seq": 0,
        "snapshot": [...]}
    <- {"type": "update", "sub": 1, "seq": 1, "data": {...}, "sent": ns}
    -> {"op": "unsubscribe", "sub": 1}
    -> {"op": "ping"}                      <- {"type": "pong"}
    <- {"type": "heartbeat", "ts": ns}     every HEARTBEAT_S
    <- {"type": "gap", "sub": 1, "seq": 9, "dropped": 40}    events a slow client missed
    <- {"type": "error", "error": "...", "ref": "any"}

Channels are the topics' names: `bbo`, `bars.<interval>`, `indicators`, `pressure` and `deltas`
are state, keyed by instrument (indicators by instrument and interval); `signals` are events.
A subscription takes one instrument or, without `instrument_id`, all; `signals` also filter by
`kind`, `direction` and `min_confidence`. The snapshot holds the channel's latest value per key
(events: the recent ones, oldest first) as the feed has read them; updates follow in the order
the feed reads them, `seq` counting each subscription's frames from the snapshot's 0.

A client that reads slower than the feed publishes never delays another: publishing only puts
the frame in the client's queue, and each client has its own writer. When the queue is full,
state channels keep the latest value per key (a newer bar replaces the unsent older one of the
same instrument), and event channels drop the newest and say so with a `gap` frame (how many,
before the next event of that subscription); a client that has dropped more than
`max_dropped` events in a row is closed with code 1013 and the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from app import metrics
from models.units import Units, parse_units, show

STATE_CHANNELS: Final = ("bbo", "indicators", "pressure", "deltas")  # and bars.<interval>
EVENT_CHANNELS: Final = ("signals",)
SIGNAL_FILTERS: Final = ("kind", "direction", "min_confidence")
HEARTBEAT_S: Final = 15.0
SEND_TIMEOUT_S: Final = 10.0  # a frame the client's connection takes longer to accept: too slow
MAX_SUBSCRIPTIONS: Final = 100
TOO_SLOW: Final = 1013  # WebSocket close code: try again later


def is_channel(name: str, bar_intervals: Iterable[str]) -> bool:
    return (
        name in STATE_CHANNELS
        or name in EVENT_CHANNELS
        or (name.startswith("bars.") and name[5:] in bar_intervals)
    )


def state_key(channel: str, row: dict[str, Any]) -> tuple[Any, ...]:
    """What a state channel keeps one latest value of."""
    if channel == "indicators":
        return (row.get("instrument_id"), row.get("interval"))
    if channel == "bbo":  # one book per publisher of the instrument
        return (row.get("instrument_id"), row.get("publisher_id"))
    return (row.get("instrument_id"),)


class RequestError(ValueError):
    """A client frame the feed cannot act on; the message says why."""


@dataclass(frozen=True)
class Subscription:
    sub: int
    channel: str
    instrument_id: int | None = None
    kind: str | None = None
    direction: str | None = None
    min_confidence: float | None = None
    units: Units = "decimal"

    @classmethod
    def parse(cls, sub: int, frame: dict[str, Any], bar_intervals: Iterable[str]) -> Subscription:
        channel = frame.get("channel")
        if not isinstance(channel, str) or not is_channel(channel, bar_intervals):
            raise RequestError(f"unknown channel {channel!r}")
        iid = frame.get("instrument_id")
        if iid is not None and (not isinstance(iid, int) or isinstance(iid, bool) or iid < 0):
            raise RequestError("instrument_id is a non-negative integer")
        filters = {k: frame[k] for k in SIGNAL_FILTERS if frame.get(k) is not None}
        if filters and channel not in EVENT_CHANNELS:
            raise RequestError(f"{', '.join(filters)}: only signals take these filters")
        if "direction" in filters and filters["direction"] not in ("BUY", "SELL"):
            raise RequestError("direction is BUY or SELL")
        if "kind" in filters and not isinstance(filters["kind"], str):
            raise RequestError("kind is a string")
        conf = filters.get("min_confidence")
        if conf is not None and (not isinstance(conf, int | float) or not 0 <= conf <= 1):
            raise RequestError("min_confidence is a number from 0 to 1")
        try:
            units = parse_units(frame.get("units"))
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        return cls(sub, channel, iid, **filters, units=units)

    def wants(self, row: dict[str, Any]) -> bool:
        if self.instrument_id is not None and row.get("instrument_id") != self.instrument_id:
            return False
        if self.kind is not None and row.get("kind") != self.kind:
            return False
        if self.direction is not None and row.get("direction") != self.direction:
            return False
        return self.min_confidence is None or (row.get("confidence") or 0) >= self.min_confidence


@dataclass
class ClientQueue:
    """What one client has yet to receive: the latest unsent value per (subscription, key) of
    state channels, and a bounded queue of events, each subscription's frames numbered as they
    leave. Pure bookkeeping; the writer takes frames with `take`."""

    max_pending: int = 1000
    max_dropped: int = 10_000
    _state: OrderedDict[tuple[int, tuple[Any, ...]], dict[str, Any]] = field(
        default_factory=OrderedDict
    )
    _events: deque[tuple[int, dict[str, Any]]] = field(default_factory=deque)
    _dropped: dict[int, int] = field(default_factory=dict)  # sub -> events dropped since sent
    _seq: dict[int, int] = field(default_factory=dict)
    dropped_total: int = 0
    conflated_total: int = 0

    def start(self, sub: int) -> None:
        self._seq[sub] = 0

    def stop(self, sub: int) -> None:
        self._seq.pop(sub, None)
        self._dropped.pop(sub, None)
        self._events = deque(e for e in self._events if e[0] != sub)
        for k in [k for k in self._state if k[0] == sub]:
            del self._state[k]

    def put_state(self, sub: int, key: tuple[Any, ...], data: dict[str, Any]) -> None:
        k = (sub, key)
        if k in self._state:
            self.conflated_total += 1
        self._state[k] = data

    def put_event(self, sub: int, data: dict[str, Any]) -> bool:
        """False when the queue is full and the event was dropped (a gap frame will say so)."""
        if len(self._events) >= self.max_pending:
            self._dropped[sub] = self._dropped.get(sub, 0) + 1
            self.dropped_total += 1
            return False
        self._events.append((sub, data))
        return True

    @property
    def too_slow(self) -> bool:
        return any(n > self.max_dropped for n in self._dropped.values())

    def __len__(self) -> int:
        return len(self._state) + len(self._events)

    def take(self) -> list[dict[str, Any]]:
        """Every frame waiting, numbered: gap notices first (so a client learns of a loss
        before it sees the events after it), then events in order, then state values."""
        out = []
        for sub, n in self._dropped.items():
            out.append({"type": "gap", "sub": sub, "seq": self._next(sub), "dropped": n})
        self._dropped.clear()
        while self._events:
            sub, data = self._events.popleft()
            out.append({"type": "update", "sub": sub, "seq": self._next(sub), "data": data})
        while self._state:
            (sub, _), data = self._state.popitem(last=False)
            out.append({"type": "update", "sub": sub, "seq": self._next(sub), "data": data})
        return out

    def _next(self, sub: int) -> int:
        self._seq[sub] = self._seq.get(sub, 0) + 1
        return self._seq[sub]


class Cache:
    """The feed's memory for snapshots: per state channel the latest row per key, per event
    channel the last `keep_events` rows."""

    def __init__(self, keep_events: int = 1000) -> None:
        self.state: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
        self.events: dict[str, deque[dict[str, Any]]] = {}
        self.keep_events = keep_events

    def add(self, channel: str, row: dict[str, Any]) -> None:
        if channel in EVENT_CHANNELS:
            self.events.setdefault(channel, deque(maxlen=self.keep_events)).append(row)
        else:
            self.state.setdefault(channel, {})[state_key(channel, row)] = row

    def snapshot(self, s: Subscription) -> list[dict[str, Any]]:
        if s.channel in EVENT_CHANNELS:
            return [r for r in self.events.get(s.channel, ()) if s.wants(r)]
        rows = self.state.get(s.channel, {})
        return [r for _, r in sorted(rows.items(), key=lambda kv: str(kv[0])) if s.wants(r)]


Send = Callable[[str], Any]  # an awaitable sending one text frame


class Row:
    """A row the feed read, shown in either units (models/units.py); the decimal form is made
    once, for the first subscription that wants it, whoever else gets the row."""

    __slots__ = ("_decimal", "raw")

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self._decimal: dict[str, Any] | None = None

    def shown(self, units: Units) -> dict[str, Any]:
        if units == "raw":
            return self.raw
        if self._decimal is None:
            self._decimal = show(self.raw)
        return self._decimal


class Client:
    """One connection: its subscriptions, its queue and its writer task."""

    _ids = itertools.count(1)

    def __init__(self, hub: Hub, send: Send, max_pending: int) -> None:
        self.id = next(self._ids)
        self.hub = hub
        self.send = send
        self.queue = ClientQueue(max_pending=max_pending, max_dropped=10 * max_pending)
        self.subs: dict[int, Subscription] = {}
        self.wake = asyncio.Event()
        self.closed: str | None = None  # why, once the hub stopped feeding it
        self._sub_ids = itertools.count(1)

    def publish(self, channel: str, row: Row) -> None:
        for s in self.subs.values():
            if s.channel == channel and s.wants(row.raw):
                if channel in EVENT_CHANNELS:
                    if not self.queue.put_event(s.sub, row.shown(s.units)):
                        metrics.ws_events_dropped.inc()
                else:
                    self.queue.put_state(s.sub, state_key(channel, row.raw), row.shown(s.units))
                self.wake.set()

    async def request(self, text: str) -> None:
        """Act on one frame from the client; errors go back to it as error frames."""
        ref = None
        try:
            frame = orjson.loads(text)
            if not isinstance(frame, dict):
                raise RequestError("a request is a JSON object")
            ref = frame.get("ref")
            op = frame.get("op")
            if op == "subscribe":
                await self._subscribe(frame, ref)
            elif op == "unsubscribe":
                sub = frame.get("sub")
                # an int first: a list or an object is unhashable, and the lookup would raise
                if not isinstance(sub, int) or isinstance(sub, bool) or sub not in self.subs:
                    raise RequestError(f"no subscription {sub!r}")
                del self.subs[sub]
                self.hub.listening(self)
                self.queue.stop(sub)
                await self._send({"type": "unsubscribed", "sub": sub, "ref": ref})
            elif op == "ping":
                await self._send({"type": "pong", "ref": ref})
            else:
                raise RequestError(f"unknown op {op!r} (subscribe, unsubscribe, ping)")
        except orjson.JSONDecodeError:
            await self._send({"type": "error", "error": "not JSON", "ref": None})
        except RequestError as exc:
            await self._send({"type": "error", "error": str(exc), "ref": ref})

    async def _subscribe(self, frame: dict[str, Any], ref: Any) -> None:
        if len(self.subs) >= MAX_SUBSCRIPTIONS:
            raise RequestError(f"at most {MAX_SUBSCRIPTIONS} subscriptions per client")
        s = Subscription.parse(next(self._sub_ids), frame, self.hub.bar_intervals)
        await self.hub.ensure_channel(s.channel)
        # Snapshot and registration with no await between them: nothing the feed reads can
        # fall between the snapshot and the first update.
        snapshot = [Row(r).shown(s.units) for r in self.hub.cache.snapshot(s)]
        self.queue.start(s.sub)
        self.subs[s.sub] = s
        self.hub.listening(self)
        frame_out = {
            "type": "subscribed",
            "sub": s.sub,
            "channel": s.channel,
            "ref": ref,
            "seq": 0,
            "snapshot": snapshot,
        }
        # Through the queue's order: the snapshot goes out before any update of it.
        await self._send(frame_out)

    async def _send(self, frame: dict[str, Any]) -> None:
        async with self.hub.send_lock(self):
            await self.send(orjson.dumps(frame).decode())

    async def writer(self) -> None:
        """Send what the queue holds whenever there is some; heartbeats when idle."""
        while self.closed is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), HEARTBEAT_S)
            self.wake.clear()
            if self.queue.too_slow:
                self.closed = f"too slow: more than {self.queue.max_dropped} signals dropped"
                return
            frames = self.queue.take() or [{"type": "heartbeat", "ts": time.time_ns()}]
            gaps = sum(f["type"] == "gap" for f in frames)
            if gaps:
                metrics.ws_gap_notices.inc(gaps)
            sent = time.time_ns()
            async with self.hub.send_lock(self):
                for f in frames:
                    f["sent"] = sent
                    try:
                        text = orjson.dumps(f).decode()
                        await asyncio.wait_for(self.send(text), self.hub.send_timeout)
                    except TimeoutError:
                        self.closed = (
                            f"too slow: a frame waited more than {self.hub.send_timeout:g} s"
                        )
                        return
            metrics.ws_frames_sent.inc(len(frames))


class Hub:
    """Every client of this worker, and the cache of what the feed has read."""

    def __init__(
        self,
        bar_intervals: Iterable[str],
        max_pending: int = 1000,
        keep_events: int = 1000,
        send_timeout: float = SEND_TIMEOUT_S,
    ) -> None:
        self.bar_intervals = tuple(bar_intervals)
        self.send_timeout = send_timeout
        self.clients: dict[int, Client] = {}
        self.cache = Cache(keep_events)
        self.max_pending = max_pending
        # awaitable: starts reading a channel's topic and returns once caught up (read_from)
        self._start_channel: Callable[[str], Any] | None = None
        self._channels: dict[str, asyncio.Future[None]] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        # (channel, instrument or None for all) -> the clients subscribed: a row visits only those
        self._listeners: dict[tuple[str, int | None], dict[int, Client]] = {}

    def read_from(self, start_channel: Callable[[str], Any]) -> None:
        """Where channels come from: `start_channel(name)` starts reading one and returns
        (awaitable) once caught up with it."""
        self._start_channel = start_channel

    def connect(self, send: Send) -> Client:
        c = Client(self, send, self.max_pending)
        self.clients[c.id] = c
        self._locks[c.id] = asyncio.Lock()
        return c

    def disconnect(self, c: Client) -> None:
        self.clients.pop(c.id, None)
        for clients in self._listeners.values():
            clients.pop(c.id, None)
        self._locks.pop(c.id, None)
        c.closed = c.closed or "disconnected"
        c.wake.set()

    def send_lock(self, c: Client) -> asyncio.Lock:
        return self._locks.setdefault(c.id, asyncio.Lock())

    async def ensure_channel(self, channel: str) -> None:
        """Read the channel's topic from now on (and its recent past, for snapshots)."""
        if self._start_channel is None:
            return
        fut = self._channels.get(channel)
        if fut is None:
            fut = self._channels[channel] = asyncio.ensure_future(self._start_channel(channel))
        try:
            await asyncio.shield(fut)
        except Exception as exc:
            # Not for good: the next subscription to the channel tries again.
            if self._channels.get(channel) is fut:
                del self._channels[channel]
            raise RequestError(
                f"the feed could not read {channel} ({type(exc).__name__}); try again"
            ) from None

    def listening(self, c: Client) -> None:
        """A client's subscriptions changed: which (channel, instrument or None for all) it
        gets, so a row visits only the clients that may want it."""
        wanted = {(s.channel, s.instrument_id) for s in c.subs.values()}
        for key, clients in self._listeners.items():
            if key not in wanted:
                clients.pop(c.id, None)
        for key in wanted:
            self._listeners.setdefault(key, {})[c.id] = c

    def publish(self, channel: str, rows: Iterable[dict[str, Any]]) -> None:
        every = self._listeners.get((channel, None), {})
        for raw in rows:
            self.cache.add(channel, raw)
            mine = self._listeners.get((channel, raw.get("instrument_id")))
            row = Row(raw)
            for c in ({**every, **mine} if mine else every).values():
                c.publish(channel, row)
