"""The depth source: Binance USD-M futures' diff-depth and trade streams to the raw MBO topic.

One combined-stream WebSocket for every symbol (`<symbol>@depth@100ms`, `<symbol>@trade`);
each message is stamped with its local receive time and handed, in order, to
`app.feeds.depth_capture.DepthBooks`, which keeps each symbol's book by the venue's procedure and
says what changed as MBO records (F_MBP level sizes). Around it:

- a symbol's book waits for a REST snapshot while its updates buffer; the snapshot is fetched
  as soon as an update shows the need, again when the venue serves one too old to join, and
  after every `pu` break, whose marker leaves the book suspect until the snapshot's R;
- a dropped connection is reconnected with backoff and jitter; the venue replays nothing, so
  the books resync from snapshots and each symbol gets a gap record for the trades it missed
  (`live.gaps`), never a silent hole;
- a connection is replaced before the venue's 24-hour limit by a second one opened beside it,
  which takes over once it has caught up with the first: no update is lost, and what both
  delivered is dropped the second time (depth by update id, trades by trade id);
- a message that is not JSON, or not a well-formed stream message, goes to the dead letters
  with the reason; the stream goes on.

Records go to the raw topic through `app/raw_sender.py`, as `replay` and `live` send theirs.
With `record`, every message that reached the books is also written to a capture file, which
the file drivers read back (`app/feeds/depth_capture.py`) into exactly the same records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from app import metrics
from app.backoff import Backoff
from app.feeds.captures import BadMessage
from app.feeds.depth_capture import VENUE, DepthBooks, Trade, instrument_for
from app.feeds.depth_capture import parse_stream_message as parse
from app.raw_sender import SourceStats
from app.settings import Settings
from app.stream_source import STOP, StreamSource
from tables.depth_sync import DepthUpdate

log = logging.getLogger(__name__)

WS_URL = "wss://fstream.binance.com"
REST_URL = "https://fapi.binance.com"


class DepthError(Exception):
    pass


@dataclass
class DepthConfig:
    symbols: list[str]
    ws_url: str = WS_URL
    rest_url: str = REST_URL
    depth_stream: str = "depth@100ms"
    snapshot_limit: int = 1000
    snapshot_interval_s: float = 0.5  # at least this between a symbol's snapshot requests
    max_connection_age_s: float = 23 * 3600.0  # the venue closes connections at 24 hours
    overlap_timeout_s: float = 30.0  # a replacement takes over by then even if not caught up
    stall_s: float = 30.0  # silence that ends a connection
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    record: Path | None = None

    def streams(self) -> list[str]:
        out = []
        for s in self.symbols:
            out += [f"{s.lower()}@{self.depth_stream}", f"{s.lower()}@trade"]
        return out


@dataclass
class DepthStats(SourceStats):
    stream_messages: int = 0  # venue messages that reached the books
    records: int = 0  # MBO records handed to the sender
    connections: int = 0
    reconnects: int = 0  # connections that dropped (not replaced on purpose)
    replacements: int = 0  # connections replaced before the venue's age limit
    stalls: int = 0
    snapshots: int = 0  # applied
    snapshots_refused: int = 0  # too old to join the stream
    snapshot_errors: int = 0
    depth_gaps: int = 0  # pu breaks: the book resynced
    trade_gaps: int = 0  # gap records: trades missed while disconnected
    duplicates: int = 0  # messages delivered twice across a replacement, dropped
    dead_letters: int = 0


@dataclass(eq=False)
class _Connection:
    ws: aiohttp.ClientWebSocketResponse
    opened: float
    reader: asyncio.Task | None = None
    held: list[str] = field(default_factory=list)  # a replacement's, until it leads
    # per symbol, the `pu` of its first depth update: its stream follows on from there
    starts_after: dict[str, int] = field(default_factory=dict)


_SNAPSHOT = object()  # queue items from a snapshot request rather than a connection


def spare_pending(spare: _Connection, source: DepthSource) -> set[str]:
    """Symbols, synced in the books, that the replacement has not yet caught up on: the books
    have not yet reached the update its stream follows on from. (Which connection delivers a
    broadcast message first is a race, so a replacement need not ever deliver one the books
    hold already.)"""
    return {
        s
        for s, sync in source.books.books.items()
        if sync.synced and (sync.last_id or 0) < spare.starts_after.get(s, 1 << 62)
    }


class DepthSource(StreamSource):
    def __init__(self, cfg: DepthConfig, settings: Settings, topic: str) -> None:
        if not cfg.symbols:
            raise DepthError("no symbols")
        bad = [s for s in cfg.symbols if not s.isalnum()]
        if bad:
            raise DepthError(f"not a symbol: {bad}")
        cfg.symbols = [s.upper() for s in cfg.symbols]
        super().__init__(
            name="depth",
            settings=settings,
            topic=topic,
            stats=DepthStats(),
            books=DepthBooks(),
            url=cfg.ws_url,
            record=cfg.record,
            records_metric=metrics.depth_records,
        )
        self.cfg = cfg
        self.stats: DepthStats
        self.books: DepthBooks
        self._last_trade: dict[str, int] = {}
        self._fetching: set[str] = set()
        self._never = asyncio.Event()  # snapshot requests retry until answered or cancelled

    def names(self) -> tuple[str, list[str]]:
        return VENUE, self.cfg.symbols

    async def _pump(self, stop: asyncio.Event) -> None:
        """Take what the connections and snapshot requests put on the queue, in order."""
        primary: _Connection | None = None
        spare: _Connection | None = None
        backoff = Backoff(self.cfg.backoff_s, self.cfg.backoff_max_s)
        spare_after = 0.0  # no replacement attempt before this (monotonic): a failed one waits
        while not stop.is_set() and self.failure is None:
            if primary is None:
                primary = await self._connect()
                if primary is None:
                    self.status = "reconnecting"
                    await backoff.wait(stop)
                    continue
                self.status = "streaming"
            try:
                item = await asyncio.wait_for(self._queue.get(), self.cfg.stall_s)
            except TimeoutError:
                self.stats.stalls += 1
                self.stats.last_error = f"no message for {self.cfg.stall_s:.1f} s"
                for c in (primary, spare):
                    if c is not None:
                        await self._end(c)
                primary = spare = None
                self._dropped()
                continue
            source, text = item
            if source is STOP:
                break
            if source is _SNAPSHOT:
                self._take(text)
            elif source is primary:
                if text is None:  # it dropped
                    await self._end(primary)
                    primary, spare = spare, None
                    if primary is None:
                        self._dropped()
                    else:
                        await self._promote(primary, proven=not spare_pending(primary, self))
                    continue
                backoff.reset()
                self._take(text)
            elif source is spare:
                if text is None:
                    spare = None
                    continue
                self._hold(spare, text)
                timed_out = time.monotonic() - spare.opened > self.cfg.overlap_timeout_s
                if not spare_pending(spare, self) or timed_out:
                    self.stats.replacements += 1
                    await self._end(primary)
                    primary, spare = spare, None
                    await self._promote(primary, proven=not timed_out)
            replace = primary is not None and spare is None and self._old(primary)
            if replace and time.monotonic() >= spare_after:
                spare = await self._connect()
                if spare is None:
                    spare_after = time.monotonic() + self.cfg.backoff_max_s
        for c in (primary, spare):
            if c is not None:
                await self._end(c)

    async def _connect(self) -> _Connection | None:
        url = f"{self.cfg.ws_url.rstrip('/')}/stream?streams={'/'.join(self.cfg.streams())}"
        try:
            ws = await self._http.ws_connect(url, heartbeat=30, max_msg_size=64 << 20)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.stats.last_error = f"connect: {type(exc).__name__}: {exc}"[:300]
            log.warning("could not connect to %s: %s", self.cfg.ws_url, exc)
            return None
        self.stats.connections += 1
        conn = _Connection(ws, time.monotonic())
        conn.reader = asyncio.create_task(self.read_frames(ws, conn))
        return conn

    async def _end(self, conn: _Connection) -> None:
        with contextlib.suppress(Exception):
            await conn.ws.close()
        if conn.reader is not None:
            conn.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await conn.reader

    def _old(self, conn: _Connection) -> bool:
        return time.monotonic() - conn.opened > self.cfg.max_connection_age_s

    def _hold(self, spare: _Connection, text: str) -> None:
        """Keep a replacement's message until it takes over, noting where its stream of each
        symbol begins (parsed once: a quiet symbol can keep a replacement waiting for
        thousands of messages)."""
        spare.held.append(text)
        try:
            symbol, msg = parse(orjson.loads(text))
        except (orjson.JSONDecodeError, BadMessage, ValueError, TypeError):
            return
        if isinstance(msg, DepthUpdate) and symbol and symbol not in spare.starts_after:
            spare.starts_after[symbol] = msg.previous_id

    async def _promote(self, conn: _Connection, proven: bool) -> None:
        """`conn` takes over. Unless it was shown to overlap the old connection, trades may
        have fallen between them: that is a gap, written down like a drop's."""
        if not proven:
            self.mark_down()
        held, conn.held = conn.held, []
        for text in held:
            self._take(text)

    def _dropped(self) -> None:
        """The only connection dropped: what the venue sends until the next one is lost."""
        self.stats.reconnects += 1
        metrics.depth_reconnects.inc()
        self.mark_down()
        log.warning("the connection dropped: %s", self.stats.last_error or "closed by the venue")

    # -- messages ---------------------------------------------------------------------------
    def _take(self, text: str | None) -> None:
        """One message, stamped with its local receive time as the source takes it, so the
        raw topic's ts_recv never runs backwards."""
        assert text is not None
        ts = self.stamp()
        try:
            body = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            self.dead_letter(text, f"not JSON: {exc}")
            return
        try:
            symbol, msg = parse(body)
        except BadMessage as exc:
            self.dead_letter(text, f"not a stream message: {exc}")
            return
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            self.dead_letter(text, f"not a stream message ({exc!r})")
            return
        symbol = symbol or ""
        if symbol not in self.cfg.symbols:
            self.dead_letter(text, f"a message for {symbol or 'no symbol'}, not subscribed")
            return
        if isinstance(msg, Trade):
            if msg.trade_id <= self._last_trade.get(symbol, -1):
                self.stats.duplicates += 1
                return
            self._last_trade[symbol] = msg.trade_id
        sync = self.books.book(symbol)
        if (
            isinstance(msg, DepthUpdate)
            and sync.synced
            and not sync.joining
            and msg.last_id <= (sync.last_id or 0)
        ):
            self.stats.duplicates += 1  # both connections of a replacement sent it
            return
        if self.down_since is not None:
            self._gap_records(ts)
        before = (sync.counters.gaps, sync.counters.snapshots, sync.counters.snapshots_refused)
        self.books.add(symbol, msg, ts)
        self.stats.stream_messages += 1
        metrics.depth_messages.inc()
        self.recorded(ts, body)
        gaps = sync.counters.gaps - before[0]
        if gaps:
            self.stats.depth_gaps += gaps
            metrics.depth_gaps.labels("depth").inc(gaps)
            log.warning("%s: an update does not follow the last one: resyncing", symbol)
        self.stats.snapshots += sync.counters.snapshots - before[1]
        self.stats.snapshots_refused += sync.counters.snapshots_refused - before[2]
        if sync.needs_snapshot and symbol not in self._fetching:
            self._fetching.add(symbol)
            self.spawn(self._fetch_snapshot(symbol))

    async def _fetch_snapshot(self, symbol: str) -> None:
        """Ask until the venue answers; the answer joins the queue like a message."""
        url = f"{self.cfg.rest_url.rstrip('/')}/fapi/v1/depth"
        params = {"symbol": symbol, "limit": str(self.cfg.snapshot_limit)}
        backoff = Backoff(self.cfg.snapshot_interval_s, self.cfg.backoff_max_s)
        try:
            while True:
                try:
                    async with self._http.get(
                        url, params=params, timeout=aiohttp.ClientTimeout(total=10)
                    ) as r:
                        body = await r.read()
                        if r.status == 200:
                            data = orjson.loads(body)
                            if isinstance(data, dict):
                                data["s"] = symbol
                            wrapped = {"stream": f"{symbol.lower()}@depthSnapshot", "data": data}
                            text = orjson.dumps(wrapped).decode()
                            self._queue.put_nowait((_SNAPSHOT, text))
                            return
                        raise DepthError(f"HTTP {r.status}: {body[:200]!r}")
                except (
                    aiohttp.ClientError,
                    OSError,
                    TimeoutError,
                    DepthError,
                    orjson.JSONDecodeError,
                ) as exc:
                    self.stats.snapshot_errors += 1
                    self.stats.last_error = f"snapshot {symbol}: {exc}"[:300]
                    log.warning("snapshot of %s failed: %s", symbol, exc)
                await backoff.wait(self._never)
        finally:
            # the next update that still finds the book waiting asks again, at its pace
            loop = asyncio.get_running_loop()
            loop.call_later(self.cfg.snapshot_interval_s, self._fetching.discard, symbol)

    def _gap_records(self, ts: int) -> None:
        n = self.gap_records(
            ts,
            {instrument_for(s): s for s in self.cfg.symbols},
            "the connection dropped: trades in between are not replayed; the book resyncs "
            "from a snapshot",
        )
        self.stats.trade_gaps += n
        metrics.depth_gaps.labels("trades").inc(n)
