"""What the WebSocket sources (`depth`, `ticks`) share: a run that sends what their books make to
the raw MBO topic, the flush tick, receive stamps that never run backwards, watermarks that move
on while the feed is quiet, gap records, dead letters and the recording of what was taken.

A subclass provides `_pump(stop)`: its connection loop, which hands each message to its own
`_take` in order; `books` (anything with `take()` returning the MBO records made since the last
call); and puts `(_STOP, None)` handling in its queue loop, which `_watch` uses to end the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import IO, Any, Protocol

import aiohttp
import numpy as np
import orjson
from aiokafka import AIOKafkaProducer
from prometheus_client import Counter

from app.dead_letters import letter
from app.feeds.batching import Batcher
from app.raw_sender import RawSender, SourceStats, raw_producer
from app.settings import Settings

log = logging.getLogger(__name__)

FLUSH_S = 0.02  # records wait at most this long before they go to the batcher
# While the feed is quiet, each partition hears that time moved on once it has moved this far:
# windows close on time without a marker per tick (each costs a worker a message).
QUIET_MARKER_STEP_NS = 1_000_000_000
GAPS_TOPIC = "live.gaps"
STOP = object()  # a queue item that ends the pump


class Books(Protocol):
    def take(self) -> np.ndarray: ...


class StreamSource:
    def __init__(
        self,
        *,
        name: str,
        settings: Settings,
        topic: str,
        stats: SourceStats,
        books: Books,
        url: str,
        record: Path | None,
        records_metric: Counter,
    ) -> None:
        self.name = name
        self.settings = settings
        self.topic = topic
        self.stats = stats
        self.books = books
        self.url = url
        self.record_path = record
        self.records_metric = records_metric
        self.status = "starting"
        self.failure: BaseException | None = None
        self._queue: asyncio.Queue = asyncio.Queue()
        self._last_ts = 0
        self._record: IO[bytes] | None = None
        self._tasks: set[asyncio.Task] = set()
        self._sends: set[asyncio.Task] = set()
        self.down_since: int | None = None  # receive time the stream was last known whole

    async def run(self, stop: asyncio.Event, partitions: int) -> Any:
        producer = raw_producer(self.settings, paced=True)
        await producer.start()
        self._producer: AIOKafkaProducer = producer
        self.sender = RawSender(producer, self.topic, self.stats.tally, partitions)
        self.batcher = Batcher(self.settings.batch_records, self.settings.max_message_bytes)
        if self.record_path is not None:
            self._record = open(self.record_path, "ab")  # noqa: SIM115
        watcher = asyncio.create_task(self._watch(stop))
        try:
            async with aiohttp.ClientSession() as http:
                self._http = http
                await self._pump(stop)
        finally:
            for task in (watcher, *self._tasks):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self.failure is None:
                await self._flush()
                await self.sender.send(
                    self.batcher.flush_all(),
                    self.stats.delivered,
                    self.sender.wm.bounds(self.batcher),
                )
                # Everything is sent: every partition hears the last arrival taken, as at the
                # end of a replay, so the windows a file driver closes over the recording are
                # closed here too (a data message carries the bound from before its records).
                await self.sender.mark(self.sender.wm.bounds(self.batcher))
                await self.sender.drain()
                await asyncio.gather(*self._sends, return_exceptions=True)
            with contextlib.suppress(Exception):
                await producer.stop()
            if self._record is not None:
                self._record.close()
            self.status = "stopped"
        return self.stats

    async def _pump(self, stop: asyncio.Event) -> None:
        raise NotImplementedError

    def names(self) -> tuple[str, list[str]]:
        """The symbology namespace of the feed's symbols, and the symbols (app/symbols.py)."""
        raise NotImplementedError

    def spawn(self, coro: Any) -> None:
        """A task the run cancels when it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def read_frames(self, ws: aiohttp.ClientWebSocketResponse, tag: object) -> None:
        """Put each text frame of `ws` on the queue as `(tag, text)`, and `(tag, None)` when
        the connection ends, however it ends."""
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._queue.put_nowait((tag, msg.data))
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    self._queue.put_nowait((tag, msg.data.decode("utf-8", "replace")))
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    break
        except (aiohttp.ClientError, OSError) as exc:
            self.stats.last_error = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            self._queue.put_nowait((tag, None))

    # -- messages ---------------------------------------------------------------------------
    def stamp(self) -> int:
        """The local receive time of the message being taken: the raw topic's ts_recv never
        runs backwards, even if the clock does."""
        self._last_ts = max(time.time_ns(), self._last_ts)
        return self._last_ts

    def recorded(self, ts: int, body: Any) -> None:
        if self._record is not None:
            self._record.write(b"%d %s\n" % (ts, orjson.dumps(body)))

    def dead_letter(self, text: str, reason: str) -> None:
        body = letter(
            self.name, "malformed", reason, f"ws:{self.url}", None, None, text.encode()[:4096]
        )
        self.send_now(self.settings.topic("dead.letters"), body, None)
        self.stats.dead_letters += 1  # type: ignore[attr-defined]
        log.warning("dead letter: %s", reason)

    def mark_down(self) -> None:
        """What the feed sends from now until the next message taken may be lost."""
        self.down_since = self._last_ts or time.time_ns()

    def gap_records(self, ts: int, symbols: dict[int, str], reason: str) -> int:
        """After `mark_down`, one record per instrument on the gaps topic for what came
        between it and `ts`; returns how many were written."""
        since, self.down_since = self.down_since, None
        if since is None:
            return 0
        for iid, symbol in symbols.items():
            gap = {
                "instrument_id": iid,
                "symbol": symbol,
                "source": self.name,
                "from_ts_recv": since,
                "to_ts_recv": ts,
                "reason": reason,
            }
            self.send_now(self.settings.topic(GAPS_TOPIC), orjson.dumps(gap), str(iid))
        return len(symbols)

    def send_now(self, topic: str, value: bytes, key: str | None) -> None:
        """Send beside the records (gap records, dead letters); the run waits for these."""
        task = asyncio.get_running_loop().create_task(self._send(topic, value, key))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, topic: str, value: bytes, key: str | None) -> None:
        try:
            await self._producer.send_and_wait(topic, value, key=key.encode() if key else None)
        except Exception as exc:
            self.stats.unsent += 1
            log.error("a send to %s failed: %r", topic, exc)

    # -- sending ------------------------------------------------------------------------------
    async def _watch(self, stop: asyncio.Event) -> None:
        """Every tick: send what the books made, count acknowledgements. A send the broker
        failed (after the producer's own retries) ends the run: the source cannot tell what
        reached the topic."""
        try:
            while not stop.is_set():
                await asyncio.sleep(FLUSH_S)
                await self._flush()
                self.sender.settle_done()
        except Exception as exc:
            self.failure = exc
            log.error("the broker failed a send (%r): stopping", exc)
        self._queue.put_nowait((STOP, None))

    async def _flush(self) -> None:
        records = self.books.take()
        if not len(records):
            # Nothing waits: whatever the feed sends next is stamped from now on (stamps never
            # run backwards), so the partitions may hear that time has moved on and close
            # their windows while the feed is quiet. No await between the take and the stamp.
            self.sender.wm.read(self.stamp())
            await self.sender.mark(self.sender.wm.bounds(self.batcher), QUIET_MARKER_STEP_NS)
            return
        self.stats.records += len(records)  # type: ignore[attr-defined]
        self.records_metric.inc(len(records))
        await self.sender.step(self.batcher, records, self.stats.delivered, flush=True)
