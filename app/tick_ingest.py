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
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from app.access import AccessError, bearer, read_tokens, same_token
from app.feeds.tick_capture import NAMESPACE, TickBooks, instrument_for
from app.feeds.watermarks import WM_HEADER, encode_ns, partitioner
from app.raw_sender import raw_producer
from app.settings import Settings
from app.symbols import SymbolTable
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


def token_from_env(env: Mapping[str, str] = os.environ) -> bytes | None:
    """The token that turns ingest on, or None; AccessError for a bad one (app/access.py)."""
    tokens = read_tokens(env, TOKEN_VARIABLE)
    if len(tokens) > 1:
        raise AccessError(f"{TOKEN_VARIABLE} holds one token, not a list")
    return tokens[0] if tokens else None


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


class TickIngest:
    """Checks requests and sends their ticks; one per worker. Requests are taken one at a
    time, so each instrument's records reach its partition in the order they were posted."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        token: bytes | None,
        conditions: Conditions | None = None,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self._token = token
        self.max_bytes = settings.ingest_max_bytes
        self.books = TickBooks(conditions or Conditions())
        self._lock = asyncio.Lock()
        self._producer: AIOKafkaProducer | None = None
        self._partition_of = partitioner(settings.partitions)
        self.symbols = SymbolTable(settings, "ingest")
        self._last_ts = 0
        self._last_wm = 0

    @property
    def on(self) -> bool:
        return self._token is not None

    def authorised(self, header: str | None) -> Answer | None:
        """None if the Authorization header carries the token, else the answer to give."""
        if self._token is None:
            return _refused(404, f"tick ingest is off on this worker: set {TOKEN_VARIABLE}")
        given = bearer(header)
        if given is None:
            answer = _refused(401, "a bearer token is required (Authorization: Bearer ...)")
        elif not same_token(given, self._token):
            answer = _refused(401, "the token is not one this worker accepts")
        else:
            return None
        answer.headers["WWW-Authenticate"] = 'Bearer realm="tapestream-ingest"'
        return answer

    def too_large(self, length: int | None) -> Answer | None:
        """The 413 for a body of `length` bytes over the limit; None if it is within it or
        not known yet."""
        if length is not None and length > self.max_bytes:
            return self.over_limit(f"the body is {length} bytes")
        return None

    def over_limit(self, what: str = "the body runs past it") -> Answer:
        return _refused(
            413,
            f"{what}, over the limit of {self.max_bytes} bytes "
            "(TAPESTREAM_INGEST_MAX_BYTES): split it into several requests",
        )

    async def refuse_unnamed(self, ticks: Sequence[Tick]) -> Answer | None:
        """The 422 for records whose symbol the symbology table refuses (its id is another
        name's), or a 503 if the table cannot be read or written; None if all are named."""
        try:
            taken = await self.symbols.take(NAMESPACE, [t.symbol for t in ticks])
        except Exception as exc:
            log.error("tick ingest: the symbology table is not available (%r)", exc)
            return Answer(
                503, {"error": "the symbology table is not available"}, {"Retry-After": "2"}
            )
        errors = [
            {"index": i, "field": "symbol", "reason": str(taken[t.symbol])}
            for i, t in enumerate(ticks)
            if isinstance(taken[t.symbol], Exception)
        ]
        if not errors:
            return None
        return _refused(
            422,
            f"{len(errors)} bad field(s); nothing of the request was sent",
            errors=errors[:MAX_ERRORS],
        )

    def stamp(self) -> int:
        """A request's receive time, taken as it arrives: never backwards."""
        self._last_ts = max(time.time_ns(), self._last_ts + 1)
        return self._last_ts

    async def take(self, ticks: Sequence[Tick], ts: int) -> Answer:
        """Turn checked ticks, received at `ts`, into MBO records and send them: 200 once
        every message is acknowledged, 503 (with the books undone where needed) if the broker
        failed one."""
        async with self._lock:
            # Requests are checked before they queue here, so a later one may come first: the
            # watermark each message carries must still never go backwards.
            self._last_wm = wm = max(ts, self._last_wm)
            saved = self.books.save({t.instrument_id for t in ticks})
            try:
                before = (self.books.excluded, self.books.duplicates)
                for tick in ticks:
                    self.books.add(tick, ts)
                records = self.books.take()
                excluded = self.books.excluded - before[0]
                duplicates = self.books.duplicates - before[1]
                size_problem = self._oversized(records)
                if size_problem is not None:
                    self.books.restore(saved)
                    return size_problem
                failed = await self._send(records, wm)
            except BaseException:
                # cancelled, or anything unforeseen: nothing of it may count as taken
                self.books.rows.clear()
                self.books.restore(saved)
                raise
            if failed:
                self.books.restore({iid: saved[iid] for iid in failed})
                return Answer(
                    503,
                    {
                        "error": "the broker did not take every instrument's records; retry "
                        "this request before any newer one for these symbols (what was written "
                        "comes back as repeats of its sequence numbers, dropped)",
                        "unsent_instruments": sorted(failed),
                    },
                    {"Retry-After": "2"},
                )
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
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
