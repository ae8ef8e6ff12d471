"""A stand-in for the Massive (formerly Polygon.io) stocks WebSocket, on 127.0.0.1, for tests
and the demo.

`GET /stocks` upgrades to the WebSocket: a `connected` status, then `auth` (any key, or only
those given; the first `refuse` logins fail with `auth_failed` and a close), `subscribe` with
`T.<sym>`/`Q.<sym>` channels (`success` statuses), then frames of the subscribed events.

The market is generated per symbol: a mid on a random walk, quotes around it, trades at the bid
or the ask, `rate` events a second over all symbols; one trade in `excluded_every` carries an
odd-lot condition (37) at a price far from the market, which bars must never show. The feed
starts with the first subscription and runs whether anyone listens or not; `/status` tells what
it made.

Faults, by the count of events made: `close@N` (every connection closed after event N),
`garbage@N` (a frame that is not JSON before it), `badevent@N` (event N with a price that is not
a number), `seqgap@N` (the sequence jumps by 100 at event N).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field

import orjson
from aiohttp import WSMsgType, web

from app.stand_in import StandInServer

log = logging.getLogger(__name__)

FAULT_KINDS = ("close", "garbage", "badevent", "seqgap")
ODD_LOT = 37


class VendorError(Exception):
    pass


@dataclass(frozen=True)
class Fault:
    kind: str
    at: int

    @classmethod
    def parse(cls, spec: str) -> Fault:
        kind, _, at = spec.partition("@")
        if kind not in FAULT_KINDS or not at.isdigit() or int(at) < 1:
            raise VendorError(f"fault {spec!r}: expected KIND@N, KIND one of {FAULT_KINDS}")
        return cls(kind, int(at))


@dataclass(eq=False)
class _Client:
    ws: web.WebSocketResponse
    channels: set[str] = field(default_factory=set)


class StandInVendor:
    def __init__(
        self,
        *,
        symbols: list[str],
        rate: float = 200.0,
        events: int = 0,
        seed: int = 1,
        keys: tuple[str, ...] = (),
        refuse: int = 0,
        excluded_every: int = 25,
        faults: list[Fault] | None = None,
        port: int = 0,
    ) -> None:
        self.symbols = [s.upper() for s in symbols]
        self.rate, self.limit = rate, events
        self.rng = random.Random(seed)
        self.keys, self.refuse_left = keys, refuse
        self.excluded_every = excluded_every
        self.faults: dict[str, set[int]] = {}
        for f in faults or []:
            self.faults.setdefault(f.kind, set()).add(f.at)
        self.server = StandInServer(port)
        self.clients: set[_Client] = set()
        self.mid = {s: 100_00 + 1000 * i for i, s in enumerate(self.symbols)}  # in cents
        self.seq = dict.fromkeys(self.symbols, 0)
        self.made = 0
        self.trades: dict[str, int] = dict.fromkeys(self.symbols, 0)
        self.excluded: dict[str, int] = dict.fromkeys(self.symbols, 0)
        self.logins = self.refused = 0
        self.started = asyncio.Event()
        self.finished = asyncio.Event()
        self.clock_ms = lambda: int(time.time() * 1000)  # event times (a benchmark sets its own)

    async def start(self) -> int:
        routes = {"/stocks": self._socket, "/status": self._status}
        return await self.server.serve(routes, self._run_feed())

    async def close(self) -> None:
        await self.server.close()

    async def _status(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "events": self.made,
                "trades": self.trades,
                "excluded": self.excluded,
                "logins": self.logins,
                "refused": self.refused,
                "clients": len(self.clients),
                "finished": self.finished.is_set(),
            }
        )

    @staticmethod
    def _status_frame(status: str, message: str) -> str:
        return orjson.dumps([{"ev": "status", "status": status, "message": message}]).decode()

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        self.server.sockets.add(ws)
        await ws.send_str(self._status_frame("connected", "Connected Successfully"))
        client = _Client(ws)
        authed = False
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            try:
                action = orjson.loads(msg.data)
            except orjson.JSONDecodeError:
                await ws.send_str(self._status_frame("error", "invalid JSON"))
                continue
            if action.get("action") == "auth":
                self.logins += 1
                key = action.get("params", "")
                if self.refuse_left > 0 or (self.keys and key not in self.keys):
                    self.refuse_left -= 1
                    self.refused += 1
                    await ws.send_str(self._status_frame("auth_failed", "authentication failed"))
                    await ws.close()
                    break
                authed = True
                await ws.send_str(self._status_frame("auth_success", "authenticated"))
            elif action.get("action") == "subscribe" and authed:
                channels = [c for c in str(action.get("params", "")).split(",") if c]
                client.channels.update(channels)
                self.clients.add(client)
                self.started.set()
                for c in channels:
                    await ws.send_str(self._status_frame("success", f"subscribed to: {c}"))
            else:
                await ws.send_str(self._status_frame("error", "not authorized"))
        self.clients.discard(client)
        self.server.sockets.discard(ws)
        return ws

    async def _broadcast(self, channel: str, frame: str) -> None:
        for c in list(self.clients):
            if channel in c.channels and not c.ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await c.ws.send_str(frame)

    async def _run_feed(self) -> None:
        await self.started.wait()
        t0 = time.monotonic()
        n = 0
        while not self.limit or n < self.limit:
            n += 1
            wait = t0 + n / self.rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            event = self.event(n)
            self.made = n
            channel = f"{event['ev']}.{event['sym']}"
            if n in self.faults.get("garbage", ()):
                await self._broadcast(channel, '[{"ev": "T", "sym": ')
            if n in self.faults.get("badevent", ()):
                event = {**event, "p": "not a price", "bp": "not a price"}
            await self._broadcast(channel, orjson.dumps([event]).decode())
            if n in self.faults.get("close", ()):
                for c in list(self.clients):
                    self.clients.discard(c)
                    await c.ws.close(message=b"stand-in: closed")
        self.finished.set()

    def event(self, n: int) -> dict:
        """Event n of the generated market, on a symbol drawn at random."""
        return self._event(self.rng.choice(self.symbols), n)

    def _event(self, sym: str, n: int) -> dict:
        rng = self.rng
        self.mid[sym] += rng.choice((-1, 0, 0, 1))
        self.seq[sym] += 100 if n in self.faults.get("seqgap", ()) else 1
        t = self.clock_ms()
        mid = self.mid[sym]
        if rng.random() < 0.4:
            self.trades[sym] += 1
            buy = rng.random() < 0.5
            cents = mid + 1 if buy else mid - 1
            conditions: list[int] = []
            if self.excluded_every and self.trades[sym] % self.excluded_every == 0:
                conditions, cents = [ODD_LOT], mid * 3  # far off: a bar showing it is wrong
                self.excluded[sym] += 1
            return {
                "ev": "T", "sym": sym, "x": 4, "i": str(n), "z": 3, "p": cents / 100,
                "s": rng.randint(1, 500), "c": conditions, "t": t, "q": self.seq[sym],
            }  # fmt: skip
        return {
            "ev": "Q", "sym": sym, "bx": 11, "bp": (mid - 1) / 100, "bs": rng.randint(1, 20),
            "ax": 12, "ap": (mid + 1) / 100, "as": rng.randint(1, 20), "c": 0, "t": t,
            "q": self.seq[sym], "z": 3,
        }  # fmt: skip
