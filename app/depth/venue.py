"""A stand-in for Binance USD-M futures' market data, on 127.0.0.1, for tests and the demo.

- `GET /fapi/v1/depth?symbol=S&limit=N`: the REST depth snapshot (`lastUpdateId`, `E`, `T`,
  `bids`, `asks`, best first), as the venue's own book stands;
- `GET /stream?streams=a/b/...`: the combined WebSocket stream (`{"stream", "data"}` frames) of
  `<symbol>@depth[@speed]` diff-depth updates and `<symbol>@trade` trades.

It serves a recorded capture (from the capture's own snapshot on, paced by its receive times
times `speed`) or a generated market: a random walk of the mid, level updates around it and
trades at the touch, `rate` messages a second. The feed starts with the first subscriber and
runs whether anyone listens or not, like a venue; when it ends the book stays as it is, for
the snapshot.

Faults, by the count of depth updates the feed has made: `drop@N` (update N reaches no one,
though the venue's book applies it), `disconnect@N` (every connection is closed after update
N), `garbage@N` (a frame that is not JSON before update N), `stale@K` (the next K snapshots
answered are from before the last `STALE_BY` updates). `max_age_s` closes connections that old,
as the venue closes every connection at 24 hours.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import random
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiohttp import WSMsgType, web

from app.feeds.captures import lines_of, parse_line
from app.feeds.depth_capture import SIZE_DECIMALS, parse_stream_message
from app.stand_in import StandInServer
from tables.depth_sync import ASK, BID, DepthSnapshot, DepthSync, DepthUpdate

log = logging.getLogger(__name__)

STALE_BY = 50  # updates a stale snapshot lags
FAULT_KINDS = ("drop", "disconnect", "garbage", "stale")
TICK = 10**8  # 0.1 in price units of 1e-9


class VenueError(Exception):
    pass


@dataclass(frozen=True)
class Fault:
    kind: str
    at: int  # the depth update's number, 1-based; for stale: how many snapshots

    @classmethod
    def parse(cls, spec: str) -> Fault:
        kind, _, at = spec.partition("@")
        if kind not in FAULT_KINDS or not at.isdigit() or int(at) < 1:
            raise VenueError(f"fault {spec!r}: expected KIND@N, KIND one of {FAULT_KINDS}")
        return cls(kind, int(at))


def decimal(units: int, decimals: int) -> str:
    whole, frac = divmod(units, 10**decimals)
    return f"{whole}.{frac:0{decimals}d}"


def price_text(price: int) -> str:
    """A price in 1e-9 units as the venue writes it: two decimals at least, more if needed."""
    text = decimal(price, 9).rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


@dataclass
class _Book:
    """One symbol at the venue: its book (kept by the same procedure a client uses) and
    recent copies for stale snapshots."""

    sync: DepthSync = field(default_factory=DepthSync)
    ts_ms: int = 0
    history: deque = field(default_factory=lambda: deque(maxlen=2))

    def keep_history(self, n: int) -> None:
        if n % STALE_BY == 0:
            self.history.append(self.snapshot_body(1000))

    def snapshot_body(self, limit: int) -> dict:
        levels = self.sync.levels
        bids = sorted(levels[BID].items(), reverse=True)[:limit]
        asks = sorted(levels[ASK].items())[:limit]
        return {
            "lastUpdateId": self.sync.last_id or 0,
            "E": self.ts_ms,
            "T": self.ts_ms,
            "bids": [[price_text(p), decimal(q, SIZE_DECIMALS)] for p, q in bids],
            "asks": [[price_text(p), decimal(q, SIZE_DECIMALS)] for p, q in asks],
        }


class Generator:
    """A market per symbol: a mid on a random walk, updates around it, trades at the touch."""

    def __init__(self, symbols: list[str], seed: int, depth_stream: str) -> None:
        self.rng = random.Random(seed)
        self.symbols = symbols
        self.stream = depth_stream
        self.mid = {s: 1000 * 10**9 + i * 100 * 10**9 for i, s in enumerate(symbols)}
        self.u = {s: 10_000 for s in symbols}
        self.book: dict[str, dict[int, dict[int, int]]] = {}
        self.trade_id = 0
        for s in symbols:
            m = self.mid[s]
            self.book[s] = {
                BID: {m - k * TICK: self.rng.randint(1, 5000) for k in range(1, 21)},
                ASK: {m + k * TICK: self.rng.randint(1, 5000) for k in range(0, 20)},
            }

    def snapshot(self, symbol: str) -> DepthSnapshot:
        b = self.book[symbol]
        return DepthSnapshot(self.u[symbol], 0, list(b[BID].items()), list(b[ASK].items()))

    def messages(self, start_ms: int) -> Iterator[dict]:
        n = 0
        while True:
            n += 1
            s = self.rng.choice(self.symbols)
            t = start_ms + n
            if self.rng.random() < 0.25:
                yield self._trade(s, t)
            else:
                yield self._update(s, t)

    def _trade(self, s: str, t: int) -> dict:
        book = self.book[s]
        buy = self.rng.random() < 0.5
        side = book[ASK] if buy else book[BID]
        price = (min(side) if buy else max(side)) if side else self.mid[s]
        self.trade_id += 1
        data = {
            "e": "trade", "E": t, "T": t, "s": s, "t": self.trade_id, "p": price_text(price),
            "q": decimal(self.rng.randint(1, 300), SIZE_DECIMALS), "X": "MARKET", "m": not buy,
        }  # fmt: skip
        return {"stream": f"{s.lower()}@trade", "data": data}

    def _update(self, s: str, t: int) -> dict:
        rng, book = self.rng, self.book[s]
        self.mid[s] += rng.choice((-TICK, 0, 0, TICK))
        rows: dict[int, list[list[str]]] = {BID: [], ASK: []}
        for _ in range(rng.randint(1, 8)):
            side = rng.choice((BID, ASK))
            away = rng.randint(1 if side == BID else 0, 25)
            price = self.mid[s] - away * TICK if side == BID else self.mid[s] + away * TICK
            size = 0 if rng.random() < 0.3 else rng.randint(1, 5000)
            if side == BID and book[ASK] and price >= min(book[ASK]):
                continue  # never crossed
            if side == ASK and book[BID] and price <= max(book[BID]):
                continue
            rows[side].append([price_text(price), decimal(size, SIZE_DECIMALS)])
            if size:
                book[side][price] = size
            else:
                book[side].pop(price, None)
        first, previous = self.u[s] + 1, self.u[s]
        self.u[s] += rng.randint(1, 9)
        data = {
            "e": "depthUpdate", "E": t, "T": t, "s": s, "U": first, "u": self.u[s],
            "pu": previous, "b": rows[BID], "a": rows[ASK],
        }  # fmt: skip
        return {"stream": f"{s.lower()}@{self.stream}", "data": data}


def capture_messages(path: Path) -> tuple[dict[str, DepthSync], list[tuple[int, dict]]]:
    """Each symbol's book at the point the capture's snapshot joins its stream, and the stream
    messages from there on, with their local receive ns."""
    live: dict[str, DepthSync] = {}
    start: dict[str, DepthSync] = {}
    messages: list[tuple[int, dict]] = []
    symbol = None
    with open(path, "rb") as raw:
        for line in lines_of(raw):
            if not line.strip():
                continue
            ts, body = parse_line(line)
            sym, msg = parse_stream_message(body)
            sym = sym or symbol
            if sym is None:
                raise VenueError(f"{path}: a snapshot before any stream message")
            symbol = sym
            sync = live.setdefault(sym, DepthSync())
            if sym in start:
                if not body.get("stream", "").endswith("@depthSnapshot"):
                    messages.append((ts, body))
                continue
            if isinstance(msg, DepthSnapshot):
                sync.snapshot(msg)
            elif isinstance(msg, DepthUpdate):
                sync.update(msg)
            if sync.synced:
                start[sym] = copy.deepcopy(sync)
    if not start:
        raise VenueError(f"{path}: no snapshot that joins its stream")
    return start, messages


class StandInVenue:
    def __init__(
        self,
        *,
        symbols: list[str],
        capture: Path | None = None,
        rate: float = 500.0,
        speed: float = 1.0,
        updates: int = 0,
        seed: int = 1,
        faults: list[Fault] | None = None,
        max_age_s: float = 24 * 3600.0,
        depth_stream: str = "depth@100ms",
        port: int = 0,
    ) -> None:
        self.capture = capture
        self.rate, self.speed, self.limit = rate, speed, updates
        self.faults = faults or []
        self.max_age_s = max_age_s
        self.server = StandInServer(port)
        self.books: dict[str, _Book] = {}
        self.clients: set[tuple[web.WebSocketResponse, frozenset[str], float]] = set()
        self.started = asyncio.Event()
        self.finished = asyncio.Event()
        self.updates = 0  # depth updates made
        self.trades: dict[str, int] = {}  # trades made, per symbol
        self.sent = 0  # frames sent, over every connection
        self.connections = 0
        self.stale_left = sum(f.at for f in self.faults if f.kind == "stale")
        self.generator: Generator | None = None
        if capture is None:
            self.symbols = [s.upper() for s in symbols]
            self.generator = Generator(self.symbols, seed, depth_stream)
            for s in self.symbols:
                book = self.books[s] = _Book()
                book.sync.snapshot(self.generator.snapshot(s))
        else:
            start, self._capture = capture_messages(capture)
            self.symbols = sorted(start)
            self.books = {s: _Book(sync) for s, sync in start.items()}

    async def start(self) -> int:
        routes = {"/fapi/v1/depth": self._depth, "/stream": self._stream, "/status": self._status}
        return await self.server.serve(routes, self._run_feed())

    async def close(self) -> None:
        await self.server.close()

    # -- REST ------------------------------------------------------------------------------
    async def _depth(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol", "").upper()
        book = self.books.get(symbol)
        if book is None:
            return web.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        try:
            limit = int(request.query.get("limit", "500"))
        except ValueError:
            return web.json_response({"code": -1100, "msg": "Illegal limit."}, status=400)
        if self.stale_left > 0 and book.history:
            self.stale_left -= 1
            return web.json_response(book.history[0])
        return web.json_response(book.snapshot_body(max(1, min(limit, 1000))))

    async def _status(self, _: web.Request) -> web.Response:
        body = {
            "updates": self.updates,
            "sent": self.sent,
            "connections": self.connections,
            "clients": len(self.clients),
            "finished": self.finished.is_set(),
            "trades": self.trades,
            "last_update_id": {s: b.sync.last_id for s, b in self.books.items()},
        }
        return web.json_response(body)

    # -- WebSocket --------------------------------------------------------------------------
    async def _stream(self, request: web.Request) -> web.WebSocketResponse:
        streams = frozenset(s for s in request.query.get("streams", "").split("/") if s)
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        entry = (ws, streams, time.monotonic())
        self.clients.add(entry)
        self.server.sockets.add(ws)
        self.connections += 1
        self.started.set()
        try:
            async for msg in ws:  # the venue ignores what clients send, but reads it
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.clients.discard(entry)
            self.server.sockets.discard(ws)
        return ws

    async def _broadcast(self, stream: str, frame: bytes) -> None:
        now = time.monotonic()
        for entry in list(self.clients):
            ws, streams, opened = entry
            if now - opened > self.max_age_s:
                self.clients.discard(entry)
                await ws.close(message=b"connection age limit")
                continue
            if stream in streams and not ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_str(frame.decode())
                    self.sent += 1

    async def _disconnect_all(self) -> None:
        for entry in list(self.clients):
            self.clients.discard(entry)
            await entry[0].close(message=b"venue disconnect")

    # -- the feed ---------------------------------------------------------------------------
    async def _run_feed(self) -> None:
        await self.started.wait()
        t0 = time.monotonic()
        if self.generator is not None:
            source: Iterator[tuple[float, dict]] = (
                (i / self.rate, body)
                for i, body in enumerate(self.generator.messages(int(time.time() * 1000)))
            )
        else:
            source = self._paced_capture()
        by_kind: dict[str, set[int]] = {}
        for f in self.faults:
            by_kind.setdefault(f.kind, set()).add(f.at)
        for i, (due, body) in enumerate(source):
            wait = t0 + due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            elif i % 64 == 0:
                await asyncio.sleep(0)  # a feed running flat out still answers snapshots
            data = body["data"]
            symbol = data["s"]
            stream = body["stream"]
            book = self.books[symbol]
            book.ts_ms = data.get("T", book.ts_ms)
            if data.get("e") == "depthUpdate":
                self.updates += 1
                n = self.updates
                _, msg = parse_stream_message(body)
                assert isinstance(msg, DepthUpdate)
                book.sync.update(msg)
                book.keep_history(n)
                if n in by_kind.get("garbage", ()):
                    await self._broadcast(stream, b'{"stream": "' + stream.encode() + b'", "da')
                if n not in by_kind.get("drop", ()):
                    await self._broadcast(stream, orjson.dumps(body))
                if n in by_kind.get("disconnect", ()):
                    await self._disconnect_all()
                if self.limit and n >= self.limit:
                    break
            else:
                if data.get("e") == "trade":
                    self.trades[symbol] = self.trades.get(symbol, 0) + 1
                await self._broadcast(stream, orjson.dumps(body))
        self.finished.set()
        log.info("the feed ended after %d depth updates", self.updates)

    def _paced_capture(self) -> Iterator[tuple[float, dict]]:
        first = None
        for ts, body in self._capture:
            first = ts if first is None else first
            yield ((ts - first) / 1e9 / self.speed if self.speed > 0 else 0.0), body
