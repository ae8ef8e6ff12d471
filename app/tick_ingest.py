"""Webhook ingest of vendor ticks: `POST /ingest/ticks` on each worker's web server (served by
agents/ingest.py; no Faust here).

Off unless `TAPESTREAM_INGEST_TOKEN` is set; then a request must carry
`Authorization: Bearer <token>`. The token is read from the environment here and nowhere else,
compared in constant time, and never logged or echoed.

The body is a JSON array of normalised tick records (`models.ticks`, docs/ticks.md#webhook-ingest).
The whole body is checked before anything is sent: one bad record rejects the request (422,
with the record's index, the field and the reason), so nothing of it reaches the topic. A good
request becomes MBO records exactly as the ticks source makes them (`TickBooks`: quotes as
F_TOB, trades as T with the aggressor side given or found by the quote and tick rules,
condition-excluded trades none, repeated sequence numbers dropped) and goes to the raw topic
as one message per instrument, stamped with the request's receive time as its watermark.

A message is written whole or not at all, so an instrument's records of a request arrive
together. If the broker fails a send, the request answers 503 and what the request did to the
books (latest quote, last trade, sequence numbers) is undone for the instruments whose message
was not acknowledged; the others keep it. A client that retries the same request (as it should
on a 503) then gets each tick into the topic once: the records that were written come back as
repeats of their sequence numbers and are dropped. That holds for records that carry sequence
numbers, on the same worker; without them a retry after a partial failure can repeat trades.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from app.feeds.tick_capture import TickBooks, instrument_for
from app.feeds.watermarks import WM_HEADER, encode_ns, partitioner
from app.raw_sender import raw_producer
from app.settings import Settings
from models.mbo import by_instrument, instrument_key
from models.ticks import Tick, ingest_records
from tables.tick_rules import Conditions

log = logging.getLogger(__name__)

TOKEN_VARIABLE = "TAPESTREAM_INGEST_TOKEN"
MAX_ERRORS = 20  # a 422 lists at most this many bad fields


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def _refused(status: int, error: str, **more: Any) -> Answer:
    return Answer(status, {"error": error, **more})


def token_from_env() -> str | None:
    token = os.environ.get(TOKEN_VARIABLE, "")
    return token if token.strip() else None


def validated(body: bytes) -> list[Tick] | Answer:
    """The request's ticks, each with its instrument id from the symbology; or the 400/422
    answer that names what is wrong."""
    try:
        parsed = ingest_records.validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if errors and errors[0]["type"] == "json_invalid":
            return _refused(400, f"the body is not JSON: {errors[0]['msg']}")
        if errors and not errors[0]["loc"]:
            why = errors[0]["msg"]
            return _refused(422, f"the body must be a JSON array of tick records: {why}")
        return _refused(
            422,
            f"{exc.error_count()} bad field(s); nothing of the request was sent",
            errors=[_described(e) for e in errors[:MAX_ERRORS]],
        )
    ticks: list[Tick] = []
    wrong = []
    for i, rec in enumerate(parsed):
        iid = instrument_for(rec.symbol)
        if rec.instrument_id is not None and rec.instrument_id != iid:
            wrong.append(
                {
                    "index": i,
                    "field": "instrument_id",
                    "reason": f"{rec.symbol} is instrument {iid}, not {rec.instrument_id}",
                }
            )
            continue
        ticks.append(rec.normalised(iid))
    if wrong:
        return _refused(
            422,
            f"{len(wrong)} bad field(s); nothing of the request was sent",
            errors=wrong[:MAX_ERRORS],
        )
    return ticks


def _described(error: Any) -> dict[str, Any]:
    """A pydantic error as `{index, field, reason}`: the loc is (index, kind, field...) for a
    record's field, (index,) for the record itself."""
    loc = list(error["loc"])
    index = loc.pop(0) if loc and isinstance(loc[0], int) else None
    if loc and loc[0] in ("trade", "quote"):
        loc.pop(0)
    return {
        "index": index,
        "field": ".".join(str(p) for p in loc) or None,
        "reason": error["msg"],
    }


@dataclass
class IngestStats:
    requests: int = 0
    refused: dict[int, int] = field(default_factory=dict)  # status -> requests
    ticks: int = 0
    records: int = 0
    excluded_trades: int = 0
    duplicates: int = 0


class TickIngest:
    """Checks requests and sends their ticks; one per worker. Requests are taken one at a
    time, so each instrument's records reach its partition in the order they were posted."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        token: str | None,
        conditions: Conditions | None = None,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self._token = token.encode() if token else None
        self.max_bytes = settings.ingest_max_bytes
        self.books = TickBooks(conditions or Conditions())
        self.stats = IngestStats()
        self._lock = asyncio.Lock()
        self._producer: AIOKafkaProducer | None = None
        self._partition_of = partitioner(settings.partitions)
        self._last_ts = 0

    @property
    def on(self) -> bool:
        return self._token is not None

    def authorised(self, header: str | None) -> Answer | None:
        """None if the Authorization header carries the token, else the answer to give."""
        if self._token is None:
            return _refused(404, f"tick ingest is off on this worker: set {TOKEN_VARIABLE}")
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            answer = _refused(401, "a bearer token is required (Authorization: Bearer ...)")
        elif not hmac.compare_digest(given.strip().encode(), self._token):
            answer = _refused(401, "the token is not one this worker accepts")
        else:
            return None
        answer.headers["WWW-Authenticate"] = 'Bearer realm="tapestream-ingest"'
        return answer

    def too_large(self, length: int | None) -> Answer | None:
        if length is not None and length > self.max_bytes:
            return _refused(
                413,
                f"the body is {length} bytes, over the limit of {self.max_bytes} "
                "(TAPESTREAM_INGEST_MAX_BYTES): split it into several requests",
            )
        return None

    def refused(self, answer: Answer) -> Answer:
        """Count a refused request; returns it."""
        self.stats.requests += 1
        self.stats.refused[answer.status] = self.stats.refused.get(answer.status, 0) + 1
        return answer

    async def take(self, ticks: Sequence[Tick]) -> Answer:
        """Turn checked ticks into MBO records and send them: 200 once every message is
        acknowledged, 503 (with the books undone where needed) if the broker failed one."""
        async with self._lock:
            self.stats.requests += 1
            ts = self._stamp()
            saved = self.books.save({t.instrument_id for t in ticks})
            before = (self.books.excluded, self.books.duplicates)
            for tick in ticks:
                self.books.add(tick, ts)
            records = self.books.take()
            excluded = self.books.excluded - before[0]
            duplicates = self.books.duplicates - before[1]
            size_problem = self._oversized(records)
            if size_problem is not None:
                self.books.restore(saved)
                return self.refused(size_problem)
            failed = await self._send(records, ts)
            if failed:
                self.books.restore({iid: saved[iid] for iid in failed})
                self.stats.refused[503] = self.stats.refused.get(503, 0) + 1
                return Answer(
                    503,
                    {
                        "error": "the broker did not take every instrument's records; retry "
                        "the same request (what was written comes back as repeats, dropped)",
                        "unsent_instruments": sorted(failed),
                    },
                    {"Retry-After": "2"},
                )
            self.stats.ticks += len(ticks)
            self.stats.records += len(records)
            self.stats.excluded_trades += excluded
            self.stats.duplicates += duplicates
            return Answer(
                200,
                {
                    "ticks": len(ticks),
                    "records": len(records),
                    "instruments": len({t.instrument_id for t in ticks}),
                    "excluded_trades": excluded,
                    "duplicates": duplicates,
                },
            )

    def _oversized(self, records: np.ndarray) -> Answer | None:
        for iid, recs in by_instrument(records):
            if recs.nbytes > self.settings.max_message_bytes:
                return _refused(
                    413,
                    f"instrument {iid} has {len(recs)} records in this request, more than one "
                    f"message holds ({self.settings.max_message_bytes} bytes): send fewer at once",
                )
        return None

    def _stamp(self) -> int:
        # the receive time of the request; never backwards, so neither is the watermark
        self._last_ts = max(time.time_ns(), self._last_ts + 1)
        return self._last_ts

    async def _send(self, records: np.ndarray, ts: int) -> set[int]:
        """One message per instrument; returns the instruments whose message the broker did
        not acknowledge."""
        if not len(records):
            return set()
        try:
            producer = await self._started()
        except Exception as exc:
            log.error("tick ingest: no producer (%r)", exc)
            return {iid for iid, _ in by_instrument(records)}
        wm = [(WM_HEADER, encode_ns(ts))]
        sends = []
        for iid, recs in by_instrument(records):
            try:
                fut = await producer.send(
                    self.topic,
                    recs.tobytes(),
                    key=instrument_key(iid),
                    partition=self._partition_of(iid),
                    headers=wm,
                )
            except Exception as exc:
                fut = asyncio.get_running_loop().create_future()
                fut.set_exception(exc)
            sends.append((iid, fut))
        results = await asyncio.gather(*(f for _, f in sends), return_exceptions=True)
        failed = set()
        for (iid, _), res in zip(sends, results, strict=True):
            if isinstance(res, BaseException):
                failed.add(iid)
                log.error("tick ingest: a send for instrument %d failed: %r", iid, res)
        return failed

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = raw_producer(self.settings, paced=True)
            await producer.start()
            self._producer = producer
        return self._producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
