"""The live session loop: Databento's live gateway to the raw MBO topic, gap-free.

One `databento.Live` client per connection (its own reconnect policy resubscribes without
`start=` and loses what was published meanwhile, so it is left off). Around it:

- at start, the cursor is read back from the raw topic (`app/live/resume.py`); a first run
  starts at `--start` (intraday replay), with `--snapshot`, or from now;
- every connection subscribes MBO (and definitions) from the cursor's resume point, and the
  cursor drops what was already delivered;
- a reset, a clean close, a gateway error or silence past the stall timeout ends the connection;
  the next one comes after an exponential backoff with jitter (reset once records flow);
- a refused login is retried the same way: keys get re-enabled, gateways restart;
- when the gateway cannot replay from the resume point (REPLAY_DATA_AGED_OUT), the source
  subscribes from now (with a snapshot when `snapshot_on_gap`) and writes one gap record per
  instrument it had delivered to the gaps topic: the instrument, the last `ts_event` delivered,
  and the first one after the hole;
- records of a schema that was not subscribed go to the dead-letter topic with the reason.

Records go to the raw topic through the same batching, keys, watermarks and idempotent
producer as `replay` (`app/raw_sender.py`). The API key is passed to the client and nowhere
else: it is never logged, and databento's own logger is kept above DEBUG, where it would print
the login line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field

import databento as db
import databento_dbn as dbn
import numpy as np
import orjson

from app import metrics
from app.dead_letters import letter
from app.feeds.batching import Batcher
from app.live.cursor import LiveCursor
from app.live.resume import SOURCE_HEADER, Resumed, read_positions, subscription_id
from app.raw_sender import Delivered, RawSender, Tally, raw_producer
from app.settings import Settings
from models.mbo import MBO_DTYPE, MBO_SIZE

log = logging.getLogger(__name__)

DEFAULT_PORT = 13000
FLUSH_S = 0.02  # records wait at most this long before they go to the batcher
FLUSH_RECORDS = 4096
GAPS_TOPIC = "live.gaps"


class LiveError(Exception):
    pass


@dataclass
class LiveConfig:
    dataset: str
    symbols: list[str]
    stype_in: str = "raw_symbol"
    schema: str = "mbo"
    start: int | None = None  # a first run's intraday replay start (ns)
    snapshot: bool = False  # a first run without start: the books first, as a snapshot
    definitions: bool = True
    gateway: str | None = None  # None: Databento's gateway for the dataset
    port: int = DEFAULT_PORT
    heartbeat_s: int = 30
    stall_s: float | None = None  # silence that ends a connection; default heartbeat + 10 s
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    resume_window_ns: int = 10_000_000_000
    snapshot_on_gap: bool = True

    @property
    def stall_timeout(self) -> float:
        return self.stall_s if self.stall_s is not None else self.heartbeat_s + 10.0


@dataclass
class LiveStats:
    records: int = 0  # MBO records handed to the sender (new ones only)
    bytes: int = 0
    connections: int = 0
    reconnects: int = 0
    logins_refused: int = 0
    stalls: int = 0
    duplicates: int = 0
    gaps: int = 0
    dead_letters: int = 0
    definitions: int = 0
    heartbeats: int = 0
    resumed_records: int = 0  # records of this subscription read back from the topic at start
    last_error: str = ""
    tally: Tally = field(default_factory=Tally)
    delivered: Delivered = field(default_factory=Delivered)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("tally", "delivered")}
        d["acknowledged_records"] = self.delivered.records
        d["messages"] = self.delivered.messages
        d["instruments"] = len(self.tally.instruments)
        return d


class LiveSource:
    def __init__(self, cfg: LiveConfig, settings: Settings, key: str, topic: str) -> None:
        if not key or key.isspace():
            raise LiveError("DATABENTO_API_KEY is not set")
        self.cfg = cfg
        self.settings = settings
        self._key = key
        self.topic = topic
        self.stats = LiveStats()
        self.source = subscription_id(cfg.dataset, cfg.schema, cfg.stype_in, cfg.symbols)
        self.cursor = LiveCursor()
        self.floors: dict[int, int] = {}
        self._defined: set[bytes] = set()
        self._gap_pending: dict[int, int] = {}  # instrument -> last ts_event before a hole
        self._aged_out = False
        self.status = "starting"
        logging.getLogger("databento").setLevel(max(logging.INFO, log.getEffectiveLevel()))

    async def run(self, stop: asyncio.Event, partitions: int) -> LiveStats:
        producer = raw_producer(self.settings, paced=True)
        await producer.start()
        self._producer = producer
        self.sender = RawSender(
            producer, self.topic, self.stats.tally, partitions, [(SOURCE_HEADER, self.source)]
        )
        self.batcher = Batcher(self.settings.batch_records, self.settings.max_message_bytes)
        try:
            resumed = await read_positions(
                self.settings.bootstrap_servers,
                self.topic,
                partitions,
                self.source,
                self.cfg.resume_window_ns,
                self.sender.wm.partition_of,
            )
            self._resume(resumed)
            await self._loop(stop)
            await self._flush_all()
        finally:
            self.status = "stopped"
            await producer.stop()
        return self.stats

    def _resume(self, resumed: Resumed) -> None:
        self.cursor = resumed.cursor
        self.floors = resumed.floors
        self.stats.resumed_records = resumed.records
        if resumed.delivered:
            log.info(
                "resuming %s: %d instruments delivered, from ts_event %s",
                self.source.decode(),
                len(resumed.cursor.positions),
                self.cursor.resume_start(list(self.floors.values())),
            )

    def _start(self) -> int | None:
        if self._aged_out:
            return None
        if self.cursor.positions or self.floors:
            return self.cursor.resume_start(list(self.floors.values()))
        return self.cfg.start

    async def _loop(self, stop: asyncio.Event) -> None:
        delay = self.cfg.backoff_s
        while not stop.is_set():
            self.stats.connections += 1
            before = self.stats.records
            try:
                await self._session(stop)
            except db.BentoError as exc:
                self._note_error(str(exc))
            except (TimeoutError, OSError) as exc:
                self._note_error(repr(exc))
            if stop.is_set():
                break
            if self.stats.records > before:
                delay = self.cfg.backoff_s  # records flowed: the next outage starts afresh
            self.stats.reconnects += 1
            metrics.live_reconnects.inc()
            self.status = "reconnecting"
            wait = min(delay, self.cfg.backoff_max_s) * random.uniform(0.5, 1.0)
            with _suppress_timeout():
                await asyncio.wait_for(stop.wait(), wait)
            delay = min(delay * 2, self.cfg.backoff_max_s)

    def _note_error(self, text: str) -> None:
        if "Authentication failed" in text or ("auth" in text.lower() and "fail" in text.lower()):
            self.stats.logins_refused += 1
        self.stats.last_error = text[:300]
        log.warning("live session ended: %s", text[:300])

    async def _session(self, stop: asyncio.Event) -> None:
        cfg = self.cfg
        client = db.Live(
            key=self._key,
            gateway=cfg.gateway,
            port=cfg.port,
            heartbeat_interval_s=cfg.heartbeat_s,
        )
        start = self._start()
        snapshot = cfg.snapshot if start is None and not self.cursor.positions else False
        if self._aged_out:
            snapshot = cfg.snapshot_on_gap
        try:
            await asyncio.to_thread(self._subscribe, client, start, snapshot)
            self.cursor.resubscribed()
            self.status = "streaming"
            await self._consume(client, stop)
        finally:
            client.terminate()
            await self._flush_pending()

    def _subscribe(self, client: db.Live, start: int | None, snapshot: bool) -> None:
        cfg = self.cfg
        client.subscribe(
            dataset=cfg.dataset,
            schema=cfg.schema,
            symbols=cfg.symbols,
            stype_in=cfg.stype_in,
            start=start,
            snapshot=snapshot,
        )
        if cfg.definitions:
            client.subscribe(
                dataset=cfg.dataset,
                schema="definition",
                symbols=cfg.symbols,
                stype_in=cfg.stype_in,
                start=start,
            )
        log.info(
            "subscribed %s from %s%s",
            cfg.symbols,
            start or "now",
            " with a snapshot" if snapshot else "",
        )

    async def _consume(self, client: db.Live, stop: asyncio.Event) -> None:
        it = client.__aiter__()
        self._pending: list[bytes] = []
        self._pending_since = 0.0
        stop_wait = asyncio.ensure_future(stop.wait())
        nxt: asyncio.Future | None = None
        quiet_since = time.monotonic()
        try:
            while not stop.is_set():
                if nxt is None:
                    # One read stays outstanding across flushes: cancelling it could leave
                    # the client's iterator closed under a record.
                    nxt = asyncio.ensure_future(it.__anext__())
                timeout = self.cfg.stall_timeout - (time.monotonic() - quiet_since)
                if self._pending:
                    timeout = min(timeout, self._pending_since + FLUSH_S - time.monotonic())
                done, _ = await asyncio.wait(
                    {nxt, stop_wait}, timeout=max(timeout, 0.0), return_when=asyncio.FIRST_COMPLETED
                )
                if stop.is_set():
                    return
                if nxt not in done:
                    if self._pending:
                        await self._flush_pending()
                        continue
                    if time.monotonic() - quiet_since < self.cfg.stall_timeout:
                        continue
                    self.stats.stalls += 1
                    raise db.BentoError(
                        f"no data for {self.cfg.stall_timeout:.1f} s: the gateway stalled"
                    )
                fut, nxt = nxt, None
                try:
                    record = fut.result()
                except (StopAsyncIteration, ValueError):  # the connection ended
                    return
                quiet_since = time.monotonic()
                await self._take(record)
                if len(self._pending) >= FLUSH_RECORDS:
                    await self._flush_pending()
        finally:
            stop_wait.cancel()
            if nxt is not None:
                nxt.cancel()
                with contextlib.suppress(BaseException):
                    await nxt

    async def _take(self, record: object) -> None:
        if isinstance(record, dbn.MBOMsg):
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(bytes(record))
        elif isinstance(record, dbn.InstrumentDefMsg):
            await self._define(record)
        elif isinstance(record, dbn.SystemMsg):
            if record.is_heartbeat():
                self.stats.heartbeats += 1
        elif isinstance(record, dbn.ErrorMsg):
            log.warning("gateway error %s: %s", record.code, record.err)
            if record.code == dbn.ErrorCode.REPLAY_DATA_AGED_OUT:
                self._aged_out_now()
        elif isinstance(record, dbn.SymbolMappingMsg):
            pass
        else:
            await self._dead_letter(record)

    async def _define(self, record: dbn.InstrumentDefMsg) -> None:
        raw = bytes(record)
        if raw in self._defined:
            return  # sent again by the gateway on each connection
        self._defined.add(raw)
        await self._flush_pending()  # what came before it goes first
        await self.sender.define([record])
        self.stats.definitions += 1

    def _aged_out_now(self) -> None:
        """The gateway cannot replay from the resume point: from now on, live (and a
        snapshot), with the hole written down per instrument."""
        if self._aged_out:
            return
        self._aged_out = True
        self._gap_pending = {iid: ts for iid, (ts, _) in self.cursor.positions.items()}
        self.cursor = LiveCursor()  # nothing from now on can be a repeat
        self.floors = {}

    async def _flush_pending(self) -> None:
        if not getattr(self, "_pending", None):
            return
        raw = b"".join(self._pending)
        self._pending = []
        recs = np.frombuffer(raw, dtype=MBO_DTYPE)
        dups_before = self.cursor.duplicates
        fresh = self.cursor.admit(recs)
        dups = self.cursor.duplicates - dups_before
        if dups:
            self.stats.duplicates += dups
            metrics.live_duplicates.inc(dups)
        if not len(fresh):
            return
        if self._gap_pending:
            await self._write_gaps(fresh)
        self.stats.records += len(fresh)
        self.stats.bytes += len(fresh) * MBO_SIZE
        metrics.live_records.inc(len(fresh))
        lag = time.time_ns() - int(fresh["ts_recv"][-1])
        metrics.live_lag.set(lag / 1e9)
        await self.sender.step(self.batcher, fresh, self.stats.delivered, flush=True)

    async def _write_gaps(self, fresh: np.ndarray) -> None:
        iids = fresh["instrument_id"]
        for iid in np.unique(iids):
            before = self._gap_pending.pop(int(iid), None)
            if before is None:
                continue
            after = int(fresh["ts_event"][np.flatnonzero(iids == iid)[0]])
            gap = {
                "instrument_id": int(iid),
                "from_ts_event": before,
                "to_ts_event": after,
                "reason": "the gateway could not replay from the resume point",
            }
            await self._producer.send_and_wait(
                self.settings.topic(GAPS_TOPIC), orjson.dumps(gap), key=str(int(iid)).encode()
            )
            self.stats.gaps += 1
            metrics.live_gaps.inc()
            log.warning("gap in instrument %d: ts_event %d to %d", iid, before, after)

    async def _dead_letter(self, record: object) -> None:
        payload = bytes(record)  # type: ignore[call-overload]
        body = letter(
            "live",
            "unexpected-record",
            f"a {type(record).__name__} record on a {self.cfg.schema} subscription",
            f"gateway:{self.cfg.gateway or 'databento'}",
            None,
            None,
            payload,
        )
        await self._producer.send_and_wait(self.settings.topic("dead.letters"), body)
        self.stats.dead_letters += 1

    async def _flush_all(self) -> None:
        await self.sender.send(
            self.batcher.flush_all(), self.stats.delivered, self.sender.wm.bounds(self.batcher)
        )
        await self.sender.drain()


class _suppress_timeout:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:  # type: ignore[no-untyped-def]
        return exc_type is asyncio.TimeoutError
