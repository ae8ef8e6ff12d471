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
import time
from dataclasses import dataclass

import databento as db
import databento_dbn as dbn
import numpy as np
import orjson
from aiokafka.errors import KafkaError
from databento.live.client import LiveIterator

from app import metrics
from app.backoff import Backoff
from app.dead_letters import letter
from app.feeds.batching import Batch, Batcher
from app.live.cursor import LiveCursor
from app.live.resume import (
    GAP_HEADER,
    SOURCE_HEADER,
    Resumed,
    read_positions,
    subscription_id,
)
from app.raw_sender import RawSender, SourceStats, raw_producer
from app.settings import Settings
from models.definitions import is_dbn_panic
from models.mbo import F_LAST, F_MAYBE_BAD_BOOK, MBO_DTYPE, MBO_SIZE, UNDEF_PRICE

log = logging.getLogger(__name__)

DEFAULT_PORT = 13000
FLUSH_S = 0.02  # records wait at most this long before they go to the batcher
FLUSH_RECORDS = 4096
GAPS_TOPIC = "live.gaps"


class LiveError(Exception):
    pass


def records(client: db.Live) -> LiveIterator:
    """The session's records, from its first. databento's iterator starts the session and only
    then enables the queue it reads from, and its client thread drops, without a word, every
    record it decodes meanwhile (databento 0.87, `LiveIterator.__init__` and
    `Session.received_record`). On a loaded machine that was a first socket read of 64 KiB
    (1,170 MBO records) gone, and the cursor, seeing the records after it, took them as
    delivered. Enabling the queue before the session starts closes that window; the iterator
    enabling it again is harmless."""
    client._session._dbn_queue.enable()
    return client.__aiter__()


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
    # how far a record's ts_event may trail its place in the stream: the resume point's slack
    # and the depth of the topic's tail read back at a restart
    resume_window_ns: int = 10_000_000_000
    snapshot_on_gap: bool = True

    @property
    def stall_timeout(self) -> float:
        return self.stall_s if self.stall_s is not None else self.heartbeat_s + 10.0


@dataclass
class LiveStats(SourceStats):
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
    broker_errors: int = 0
    resumed_records: int = 0  # records of this subscription read back from the topic at start


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
        self.cursor = LiveCursor(cfg.resume_window_ns)
        self._pending: list[bytes] = []
        self._pending_since = 0.0
        self._last_record = 0.0
        self._stalled = False
        self._flush_lock = asyncio.Lock()
        self._untold = False
        self._watching = False
        self._defined: set[bytes] = set()
        self._gap_pending: dict[int, int] = {}  # instrument -> last ts_event before a hole
        self._aged_out = False
        self.status = "starting"
        logging.getLogger("databento").setLevel(max(logging.INFO, log.getEffectiveLevel()))

    async def run(self, stop: asyncio.Event, partitions: int) -> LiveStats:
        """Until `stop`. A broker error loses track of what was sent, so the source starts
        over from what the topic holds, as a restarted process would."""
        backoff = Backoff(self.cfg.backoff_s, self.cfg.backoff_max_s)
        try:
            while not stop.is_set():
                try:
                    await self._run_once(stop, partitions)
                    break
                except KafkaError as exc:
                    self.stats.broker_errors += 1
                    self.stats.last_error = repr(exc)[:300]
                    log.error("the broker failed a send (%r): resuming from the topic", exc)
                    self.status = "resuming"
                    await backoff.wait(stop)
        finally:
            self.status = "stopped"
        return self.stats

    async def _run_once(self, stop: asyncio.Event, partitions: int) -> None:
        producer = raw_producer(self.settings, paced=True)
        await producer.start()
        self._producer = producer
        self.sender = RawSender(
            producer, self.topic, self.stats.tally, partitions, [(SOURCE_HEADER, self.source)]
        )
        self.batcher = Batcher(self.settings.batch_records, self.settings.max_message_bytes)
        self._pending = []
        try:
            resumed = await read_positions(
                self.settings,
                self.topic,
                partitions,
                self.source,
                self.cfg.resume_window_ns,
                self.sender.wm.partition_of,
            )
            self._resume(resumed, partitions)
            await self._loop(stop)
            await self._flush_all()
        finally:
            with contextlib.suppress(Exception):
                await producer.stop()

    def _resume(self, resumed: Resumed, partitions: int) -> None:
        self.cursor = resumed.cursor
        self._untold = resumed.delivered and len(resumed.cursor.tails) < partitions
        self.stats.resumed_records = resumed.records
        if resumed.delivered:
            log.info(
                "resuming %s: %d instruments delivered, from ts_event %s",
                self.source.decode(),
                len(resumed.cursor.positions),
                self.cursor.resume_start(),
            )

    def _start(self) -> int | None:
        if self._aged_out:
            return None
        start = self.cursor.resume_start()
        if start is None:
            return self.cfg.start
        if self._untold and self.cursor.high is None and self.cfg.start is not None:
            # A partition with none of our messages may have lost everything sent to it: back
            # to the first run's start (the source died before its first marker landed there).
            return min(start, self.cfg.start)
        return start

    async def _loop(self, stop: asyncio.Event) -> None:
        backoff = Backoff(self.cfg.backoff_s, self.cfg.backoff_max_s)
        while not stop.is_set():
            self.stats.connections += 1
            before = self.stats.records
            try:
                await self._session(stop)
            except KafkaError:
                raise
            except db.BentoError as exc:
                self._note_error(str(exc))
            except Exception as exc:  # the client fails in many ways as a connection drops
                self._note_error(f"{type(exc).__name__}: {exc}")
            if stop.is_set():
                break
            if self.stats.records > before:
                backoff.reset()  # records flowed: the next outage starts afresh
            self.stats.reconnects += 1
            metrics.live_reconnects.inc()
            self.status = "reconnecting"
            await backoff.wait(stop)

    def _note_error(self, text: str) -> None:
        if "Authentication failed" in text:  # the gateway's words for a refused key
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
        snapshot = cfg.snapshot if start is None and self.cursor.high is None else False
        if self._aged_out:
            snapshot = cfg.snapshot_on_gap
        try:
            await asyncio.to_thread(self._subscribe, client, start, snapshot)
            self.cursor.resubscribed(snapshot)
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
        """Read the session's records until it ends. The loop only reads: flushing on time,
        counting acknowledgements and noticing a stall or a stop are the watcher's, so a
        record costs no timer of its own."""
        it = records(client)
        self._last_record = time.monotonic()
        self._stalled = False
        self._watching = True
        watcher = asyncio.create_task(self._watch(client, stop))
        mbo = dbn.MBOMsg
        try:
            while True:
                try:
                    record = await it.__anext__()
                except (StopAsyncIteration, ValueError):  # the connection ended
                    break
                except BaseException as exc:
                    if not is_dbn_panic(exc):
                        raise
                    # a record the client's decoder panicked on, as a BaseException that would
                    # end the process: the session ends as on any error instead, and the next
                    # one resumes from the cursor
                    raise db.BentoError(
                        f"an undecodable record from the gateway ({str(exc).splitlines()[0]})"
                    ) from None
                self._last_record = time.monotonic()
                if type(record) is mbo:
                    # self._pending each time: the watcher swaps it while the read waits
                    if not self._pending:
                        self._pending_since = self._last_record
                    self._pending.append(bytes(record))
                    if len(self._pending) >= FLUSH_RECORDS:
                        await self._flush_pending()
                else:
                    await self._take(record)
        finally:
            # Not cancelled: a flush cut short would lose records the cursor has let through.
            self._watching = False
            await watcher
        if self._stalled:
            self.stats.stalls += 1
            raise db.BentoError(f"no data for {self.cfg.stall_timeout:.1f} s: the gateway stalled")

    async def _watch(self, client: db.Live, stop: asyncio.Event) -> None:
        """Every tick: flush records that waited long enough, count acknowledgements, and end
        the connection on a stop or a stall."""
        try:
            while self._watching:
                await asyncio.sleep(FLUSH_S)
                now = time.monotonic()
                if stop.is_set() or now - self._last_record > self.cfg.stall_timeout:
                    self._stalled = not stop.is_set()
                    client.terminate()
                    return
                if self._pending and now - self._pending_since >= FLUSH_S:
                    await self._flush_pending()
                self.sender.settle_done()
        except BaseException:
            client.terminate()  # the reader must not wait on a connection nobody watches
            raise

    async def _take(self, record: object) -> None:
        """A record other than MBO."""
        if isinstance(record, dbn.InstrumentDefMsg):
            await self._define(record)
        elif isinstance(record, dbn.SystemMsg):
            if record.is_heartbeat():
                self.stats.heartbeats += 1
                await self._tell_every_partition()
        elif isinstance(record, dbn.ErrorMsg):
            log.warning("gateway error %s: %s", record.code, record.err)
            if record.code == dbn.ErrorCode.REPLAY_DATA_AGED_OUT:
                self._aged_out_now()
        elif isinstance(record, dbn.SymbolMappingMsg):
            pass
        else:
            await self._dead_letter(record)

    async def _tell_every_partition(self) -> None:
        """The feed is idle (a heartbeat comes only then): every partition hears how far the
        stream has been read, however little that moved since it was last told. While records
        flow a partition is told only every MARKER_STEP_NS, so without this the partitions a
        little behind when a feed went quiet kept their last second open, and its deltas and
        windows unpublished, until records came again (seen in the chaos run at the end of
        the feed)."""
        async with self._flush_lock:
            await self._flush_locked()  # what is pending first: the bound counts it as sent
            await self.sender.mark(self.sender.wm.bounds(self.batcher))

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
        self.cursor = LiveCursor(self.cfg.resume_window_ns)  # nothing is a repeat now

    async def _flush_pending(self) -> None:
        """Send what is pending. The reader and the watcher both flush; the lock keeps their
        sends in the order the records came."""
        async with self._flush_lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        if not self._pending:
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
        self._aged_out = False  # records flow again: later reconnects replay from the cursor
        self.stats.records += len(fresh)
        self.stats.bytes += len(fresh) * MBO_SIZE
        metrics.live_records.inc(len(fresh))
        metrics.live_bytes.inc(len(fresh) * MBO_SIZE)
        now = time.time_ns()
        metrics.live_lag.labels("ts_recv").set((now - int(fresh["ts_recv"][-1])) / 1e9)
        metrics.live_lag.labels("ts_event").set((now - int(fresh["ts_event"][-1])) / 1e9)
        await self.sender.step(self.batcher, fresh, self.stats.delivered, flush=True)

    async def _write_gaps(self, fresh: np.ndarray) -> None:
        """For each instrument past a hole: a gap record on the gaps topic, and ahead of its
        records a marker on the raw topic (action N, F_MAYBE_BAD_BOOK) that leaves its books
        suspect until their next clear, which the snapshot brings when there is one."""
        iids = fresh["instrument_id"]
        gapped = [int(i) for i in np.unique(iids) if int(i) in self._gap_pending]
        if not gapped:
            return
        # what the batcher holds came before the hole, so it goes before the markers
        await self.sender.send(self.batcher.flush_all(), self.stats.delivered)
        for iid in gapped:
            before = self._gap_pending.pop(iid)
            first = fresh[np.flatnonzero(iids == iid)[0]]
            after = int(first["ts_recv"])  # a snapshot's ts_event is its order's, not now
            gap = {
                "instrument_id": iid,
                "from_ts_event": before,
                "to_ts_recv": after,
                "reason": "the gateway could not replay from the resume point",
            }
            await self._producer.send_and_wait(
                self.settings.topic(GAPS_TOPIC), orjson.dumps(gap), key=str(iid).encode()
            )
            marker = np.zeros(1, dtype=MBO_DTYPE)
            for name in ("length", "rtype", "publisher_id", "instrument_id", "ts_event", "ts_recv"):
                marker[name] = first[name]
            marker["price"] = UNDEF_PRICE
            marker["action"] = marker["side"] = ord("N")
            marker["flags"] = F_MAYBE_BAD_BOOK | F_LAST
            await self.sender.send(
                [Batch(iid, marker)],
                self.stats.delivered,
                self.sender.wm.bounds(self.batcher),
                extra=[(GAP_HEADER, b"1")],
            )
            self.stats.gaps += 1
            metrics.live_gaps.inc()
            log.warning("gap in instrument %d: from ts_event %d to ts_recv %d", iid, before, after)

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
