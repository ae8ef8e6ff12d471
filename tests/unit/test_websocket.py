"""The WebSocket feed's bookkeeping (app/websocket.py), with no socket: subscriptions and their
checks, snapshots, numbering, conflation of state, gap notices for events, and a stuck client
that delays no other."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from app.websocket import ClientQueue, Hub, RequestError, Subscription

INTERVALS = ("1m", "5m")


def test_subscriptions_are_checked_and_filter_what_they_get() -> None:
    s = Subscription.parse(1, {"channel": "signals", "direction": "BUY", "min_confidence": 0.5}, [])
    assert s.wants({"direction": "BUY", "confidence": 0.7, "instrument_id": 3})
    assert not s.wants({"direction": "BUY", "confidence": 0.4})
    assert not s.wants({"direction": "SELL", "confidence": 0.9})
    bars = Subscription.parse(2, {"channel": "bars.5m", "instrument_id": 7}, INTERVALS)
    assert bars.wants({"instrument_id": 7}) and not bars.wants({"instrument_id": 8})
    for frame, why in (
        ({"channel": "bars.2m"}, "unknown channel"),
        ({"channel": "trades"}, "unknown channel"),
        ({"channel": "bbo", "instrument_id": "7"}, "instrument_id"),
        ({"channel": "bbo", "kind": "ifd"}, "only signals"),
        ({"channel": "signals", "direction": "UP"}, "BUY or SELL"),
        ({"channel": "signals", "min_confidence": 2}, "from 0 to 1"),
    ):
        with pytest.raises(RequestError, match=why):
            Subscription.parse(3, frame, INTERVALS)


def test_state_keeps_the_latest_per_key_and_events_announce_what_they_drop() -> None:
    q = ClientQueue(max_pending=2)
    q.start(1)
    q.start(2)
    for close in (1, 2, 3):  # three bars of one instrument, one of another
        q.put_state(1, (7,), {"instrument_id": 7, "close": close})
    q.put_state(1, (8,), {"instrument_id": 8, "close": 9})
    for n in range(5):  # room for two
        q.put_event(2, {"n": n})
    frames = q.take()
    assert frames == [
        {"type": "gap", "sub": 2, "seq": 1, "dropped": 3},
        {"type": "update", "sub": 2, "seq": 2, "data": {"n": 0}},
        {"type": "update", "sub": 2, "seq": 3, "data": {"n": 1}},
        {"type": "update", "sub": 1, "seq": 1, "data": {"instrument_id": 7, "close": 3}},
        {"type": "update", "sub": 1, "seq": 2, "data": {"instrument_id": 8, "close": 9}},
    ]
    assert q.conflated_total == 2 and q.dropped_total == 3 and not q.too_slow
    assert q.take() == []
    q.stop(2)
    q.put_state(1, (7,), {"instrument_id": 7, "close": 4})
    assert q.take() == [
        {"type": "update", "sub": 1, "seq": 3, "data": {"instrument_id": 7, "close": 4}}
    ]


class Socket:
    """What the hub sends to one client; `stuck` never lets a frame through."""

    def __init__(self, stuck: bool = False) -> None:
        self.frames: list[dict] = []
        self.stuck = stuck

    async def send(self, text: str) -> None:
        if self.stuck:
            await asyncio.Event().wait()
        self.frames.append(orjson.loads(text))


async def test_a_snapshot_then_updates_in_order_and_a_stuck_client_delays_no_one() -> None:
    hub = Hub(INTERVALS, max_pending=100, send_timeout=0.2)
    hub.publish("signals", [{"id": "a", "instrument_id": 1}, {"id": "b", "instrument_id": 2}])
    hub.publish("bars.1m", [{"instrument_id": 1, "start": 0}, {"instrument_id": 1, "start": 60}])
    fine, stuck = Socket(), Socket(stuck=True)
    a, b = hub.connect(fine.send), hub.connect(stuck.send)
    writers = [asyncio.ensure_future(c.writer()) for c in (a, b)]
    await a.request('{"op": "subscribe", "channel": "signals", "instrument_id": 1, "ref": "s"}')
    await a.request('{"op": "subscribe", "channel": "bars.1m", "ref": "b", "units": "raw"}')
    await a.request('{"op": "subscribe", "channel": "nope", "ref": "x"}')
    await a.request("[1]")
    stuck.stuck = False  # let its subscription answer through, then jam it
    await b.request('{"op": "subscribe", "channel": "signals"}')
    stuck.stuck = True
    for n in range(50):
        hub.publish("signals", [{"id": f"s{n}", "instrument_id": 1}])
        hub.publish("bars.1m", [{"instrument_id": 1, "start": 120 + 60 * n}])
        await asyncio.sleep(0)
    await asyncio.sleep(0.5)

    subscribed = [f for f in fine.frames if f["type"] == "subscribed"]
    assert subscribed[0]["snapshot"] == [{"id": "a", "instrument_id": 1}]
    assert subscribed[1]["snapshot"] == [{"instrument_id": 1, "start": 60}]
    errors = [f["error"] for f in fine.frames if f["type"] == "error"]
    assert errors == ["unknown channel 'nope'", "a request is a JSON object"]
    signals = [f for f in fine.frames if f.get("sub") == 1]
    assert [f["seq"] for f in signals] == list(range(51))
    assert [f["data"]["id"] for f in signals[1:]] == [f"s{n}" for n in range(50)]
    bars = [f for f in fine.frames if f.get("sub") == 2 and f["type"] == "update"]
    assert bars[-1]["data"]["start"] == 120 + 60 * 49  # conflated maybe, never behind
    assert b.closed is not None and b.closed.startswith("too slow")
    assert writers[1].done() and not writers[0].done()
    for w in writers:
        w.cancel()


async def test_each_subscription_gets_the_units_it_asked_for() -> None:
    bar = {"instrument_id": 1, "start": 60_000_000_000, "close": 50_080_000_000, "volume": 7}
    hub = Hub(INTERVALS)
    hub.publish("bars.1m", [bar])
    socket = Socket()
    c = hub.connect(socket.send)
    writer = asyncio.ensure_future(c.writer())
    await c.request('{"op": "subscribe", "channel": "bars.1m"}')
    await c.request('{"op": "subscribe", "channel": "bars.1m", "units": "raw"}')
    await c.request('{"op": "subscribe", "channel": "bars.1m", "units": "cents", "ref": 3}')
    hub.publish("bars.1m", [{**bar, "start": 120_000_000_000}])
    await asyncio.sleep(0.05)
    writer.cancel()
    decimal, raw, error = socket.frames[:3]
    assert decimal["snapshot"] == [
        {"instrument_id": 1, "start": "1970-01-01T00:01:00.000000000Z", "close": 50.08, "volume": 7}
    ]
    assert raw["snapshot"] == [bar]
    assert error == {"type": "error", "error": "units is decimal or raw, not 'cents'", "ref": 3}
    updates = {f["sub"]: f["data"] for f in socket.frames if f["type"] == "update"}
    assert updates[1]["start"] == "1970-01-01T00:02:00.000000000Z"
    assert updates[2]["start"] == 120_000_000_000
    assert hub.cache.snapshot(Subscription(9, "bars.1m"))[-1]["close"] == 50_080_000_000


def test_the_feed_takes_each_books_last_row_of_a_bbo_message() -> None:
    from models.book_events import last_rows, rows

    message = {
        "instrument_id": 7,
        "publisher_id": [1, 2, 1, 1],
        "event": [10, 4, 11, 12],
        "bid_px": [100, 200, 101, 102],
    }
    every = rows(message)
    assert last_rows(message) == [every[1], every[3]]


async def test_a_channel_the_feed_could_not_start_is_tried_again() -> None:
    calls = []

    async def start(channel: str) -> None:
        calls.append(channel)
        if len(calls) == 1:
            raise ConnectionError("broker away")

    hub = Hub(INTERVALS)
    hub.read_from(start)
    sock = Socket()
    c = hub.connect(sock.send)
    await c.request('{"op": "subscribe", "channel": "signals", "ref": 1}')
    await c.request('{"op": "subscribe", "channel": "signals", "ref": 2}')
    assert sock.frames[0]["type"] == "error" and "ConnectionError" in sock.frames[0]["error"]
    assert sock.frames[1]["type"] == "subscribed" and calls == ["signals", "signals"]
