"""The ticks source: a tick vendor's trades and quotes (the Massive, formerly Polygon.io, stocks
WebSocket) to the raw MBO topic.

The protocol: the server greets with a `connected` status; the client sends
`{"action": "auth", "params": KEY}` and waits for `auth_success` (or `auth_failed`); it then
subscribes `T.<symbol>` and `Q.<symbol>` for each symbol, and frames of events follow, each a
JSON array. The vendor's own Python client turns events into objects with float prices and
reconnects on its own, silently; this one keeps the frames' text (for the recording), stamps
each with its receive time and writes a gap record for every reconnect, so it is written here.

- The key comes from the environment only (`MASSIVE_API_KEY`, or `POLYGON_API_KEY`); it is sent
  in the auth message and nowhere else, never logged.
- A refused login, a dropped connection and a stall past the timeout each lead to a new
  connection after backoff with jitter. The feed has no replay: the first message after a new
  connection writes one gap record per symbol (`live.gaps`) for what came between.
- Each event is checked (`app.feeds.tick_capture.parse_event`); a frame that is not JSON, an
  event that is malformed or for a symbol not subscribed goes to the dead letters with the
  reason, and the rest of the frame is taken.
- Events are turned into MBO records by `TickBooks` (quotes: F_TOB; trades: T with the
  aggressor side; condition-excluded trades: none) and sent through `app/raw_sender.py`.
- With `record`, every frame taken (its good events) is written to a capture, which the file
  drivers read back into exactly the same records.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

from app import metrics
from app.backoff import Backoff
from app.feeds.captures import BadMessage
from app.feeds.tick_capture import (
    NAMESPACE,
    TickBooks,
    conditions_beside,
    instrument_for,
    parse_event,
    parse_frame,
)
from app.raw_sender import SourceStats
from app.settings import Settings
from app.stream_source import STOP, StreamSource
from tables.tick_rules import Conditions

log = logging.getLogger(__name__)

URL = "wss://socket.massive.com/stocks"
KEY_VARIABLES = ("MASSIVE_API_KEY", "POLYGON_API_KEY")


class TicksError(Exception):
    pass


class LoginRefused(Exception):
    pass


@dataclass
class TicksConfig:
    symbols: list[str]
    url: str = URL
    stall_s: float = 30.0
    login_timeout_s: float = 10.0
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    record: Path | None = None
    conditions: Conditions | None = None


@dataclass
class TicksStats(SourceStats):
    events: int = 0  # trades and quotes taken
    records: int = 0
    connections: int = 0
    logins_refused: int = 0
    reconnects: int = 0
    stalls: int = 0
    gaps: int = 0  # gap records
    excluded_trades: int = 0  # kept out of the bars by their conditions
    duplicates: int = 0  # a sequence number seen already
    dead_letters: int = 0


class TicksSource(StreamSource):
    def __init__(self, cfg: TicksConfig, settings: Settings, topic: str, key: str) -> None:
        if not key or key.isspace():
            raise TicksError(f"no API key: set {' or '.join(KEY_VARIABLES)}")
        cfg.symbols = [s.strip().upper() for s in cfg.symbols if s.strip()]
        if not cfg.symbols:
            raise TicksError("no symbols")
        super().__init__(
            name="ticks",
            settings=settings,
            topic=topic,
            stats=TicksStats(),
            books=TickBooks(cfg.conditions or Conditions()),
            url=cfg.url,
            record=cfg.record,
            records_metric=metrics.ticks_records,
        )
        self.cfg = cfg
        self.stats: TicksStats
        self.books: TickBooks
        self._key = key
        if cfg.record is not None:
            # the file drivers apply the same table when they read the recording back
            table = self.books.conditions.as_json()
            conditions_beside(cfg.record).write_bytes(orjson.dumps(table))

    def names(self) -> tuple[str, list[str]]:
        return NAMESPACE, self.cfg.symbols

    async def _pump(self, stop: asyncio.Event) -> None:
        backoff = Backoff(self.cfg.backoff_s, self.cfg.backoff_max_s)
        while not stop.is_set() and self.failure is None:
            ws = await self._login()
            if ws is None:
                self.status = "reconnecting"
                await backoff.wait(stop)
                continue
            self.status = "streaming"
            reader = asyncio.create_task(self.read_frames(ws, ws))
            try:
                while True:
                    try:
                        item = await asyncio.wait_for(self._queue.get(), self.cfg.stall_s)
                    except TimeoutError:
                        self.stats.stalls += 1
                        self.stats.last_error = f"no message for {self.cfg.stall_s:.1f} s"
                        break
                    source, text = item
                    if source is STOP:
                        return
                    if source is not ws:
                        continue  # the end of a connection given up on before
                    if text is None:  # the connection ended
                        break
                    backoff.reset()
                    self._take(text)
            finally:
                await ws.close()
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            self._dropped()
            await backoff.wait(stop)  # short if messages flowed: the backoff was reset

    async def _login(self) -> aiohttp.ClientWebSocketResponse | None:
        """Connect, authenticate and subscribe; None (and the reason in `last_error`) if any
        of it fails."""
        try:
            ws = await self._http.ws_connect(self.cfg.url, heartbeat=30, max_msg_size=64 << 20)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.stats.last_error = f"connect: {type(exc).__name__}: {exc}"[:300]
            log.warning("could not connect to %s: %s", self.cfg.url, exc)
            return None
        self.stats.connections += 1
        try:
            await self._expect(ws, "connected")
            await ws.send_str(orjson.dumps({"action": "auth", "params": self._key}).decode())
            await self._expect(ws, "auth_success")
            channels = ",".join(f"{c}.{s}" for s in self.cfg.symbols for c in ("T", "Q"))
            await ws.send_str(orjson.dumps({"action": "subscribe", "params": channels}).decode())
            return ws
        except LoginRefused as exc:
            self.stats.logins_refused += 1
            self.stats.last_error = f"login refused: {exc}"[:300]
            log.warning("the vendor refused the login: %s", exc)
        except (aiohttp.ClientError, OSError, TimeoutError, BadMessage) as exc:
            self.stats.last_error = f"login: {type(exc).__name__}: {exc}"[:300]
            log.warning("login failed: %s", exc)
        await ws.close()
        return None

    async def _expect(self, ws: aiohttp.ClientWebSocketResponse, status: str) -> None:
        """Read until a status event says `status`; an auth_failed or the end is refused."""
        while True:
            msg = await ws.receive(timeout=self.cfg.login_timeout_s)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise BadMessage(f"the connection ended before {status!r} ({msg.type.name})")
            for event in parse_frame(msg.data):
                if not isinstance(event, dict) or event.get("ev") != "status":
                    continue
                if event.get("status") == status:
                    return
                if event.get("status") == "auth_failed":
                    raise LoginRefused(str(event.get("message", ""))[:200])

    def _dropped(self) -> None:
        self.stats.reconnects += 1
        metrics.ticks_reconnects.inc()
        self.mark_down()
        self.status = "reconnecting"
        log.warning("the connection ended: %s", self.stats.last_error or "closed by the vendor")

    def _take(self, text: str) -> None:
        ts = self.stamp()
        try:
            frame = parse_frame(text)
        except BadMessage as exc:
            self.dead_letter(text, str(exc))
            return
        taken = []
        for event in frame:
            try:
                tick = parse_event(event)
            except BadMessage as exc:
                self.dead_letter(orjson.dumps(event).decode(), f"a malformed event: {exc}")
                continue
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                self.dead_letter(orjson.dumps(event).decode(), f"a malformed event ({exc!r})")
                continue
            if tick is None:
                self._status_event(event)
                continue
            if tick.symbol not in self.cfg.symbols:
                self.dead_letter(orjson.dumps(event).decode(), f"{tick.symbol} is not subscribed")
                continue
            taken.append((event, tick))
        if not taken:
            return
        if self.down_since is not None:
            self._write_gaps(ts)
        before = (self.books.excluded, self.books.duplicates)
        for _, tick in taken:
            self.books.add(tick, ts)
        self.stats.events += len(taken)
        self.stats.excluded_trades += self.books.excluded - before[0]
        self.stats.duplicates += self.books.duplicates - before[1]
        metrics.ticks_events.inc(len(taken))
        self.recorded(ts, [event for event, _ in taken])

    def _status_event(self, event: dict) -> None:
        status, message = event.get("status"), str(event.get("message", ""))[:200]
        if status in ("error", "auth_failed"):
            self.stats.last_error = f"{status}: {message}"
            log.warning("vendor status %s: %s", status, message)
        else:
            log.info("vendor status %s: %s", status, message)

    def _write_gaps(self, ts: int) -> None:
        n = self.gap_records(
            ts,
            {instrument_for(s): s for s in self.cfg.symbols},
            "the connection dropped: the feed replays nothing in between",
        )
        self.stats.gaps += n
        metrics.ticks_gaps.inc(n)
