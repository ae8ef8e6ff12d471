"""POST /ingest/ticks: vendor ticks pushed to a worker, checked and sent to the raw topic
(app/tick_ingest.py holds the rules; docs/ticks.md#webhook-ingest the contract)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from faust.web import Request, Response, View

from agents.access import problems
from app import metrics
from app.access import AccessError
from app.faust_app import app, settings
from app.tick_ingest import Answer, TickIngest, token_from_env, validated
from app.topics import RAW_MBO, ensure_declared, raw_mbo

log = logging.getLogger(__name__)

try:
    token = token_from_env()
except AccessError as exc:  # the worker refuses to start (agents/access.py)
    token = None
    problems.append(exc)
ingest = TickIngest(settings, RAW_MBO, token)
if ingest.on:
    log.info("tick ingest is on at /ingest/ticks (bodies up to %d bytes)", ingest.max_bytes)


@app.page("/ingest/ticks")
class TickIngestView(View):
    async def post(self, request: Request) -> Response:
        answer = await _answer(request)
        metrics.ingest_requests.labels(str(answer.status)).inc()
        if answer.status == 200:  # repeats of ticks already taken are not counted again
            metrics.ingest_ticks.inc(answer.body["ticks"] - answer.body["duplicates"])
        return self.json(answer.body, status=answer.status, headers=answer.headers or None)


async def _answer(request: Request) -> Answer:
    raw: web.Request = request  # type: ignore[assignment]  # aiohttp's own request
    ts = ingest.stamp()
    refused = ingest.authorised(raw.headers.get("Authorization"))
    if refused is None:
        refused = ingest.too_large(raw.content_length)
    if refused is not None:
        return refused
    body = await _body(raw)
    if body is None:  # chunked, or a Content-Length that understated it
        return ingest.over_limit()
    # pydantic holds the GIL, but a large body checked on the loop would stall every agent
    ticks = validated(body) if len(body) < 65_536 else await asyncio.to_thread(validated, body)
    if isinstance(ticks, Answer):
        return ticks
    try:
        await ensure_declared(raw_mbo)
    except Exception as exc:
        log.error("tick ingest: the raw topic is not there (%r)", exc)
        return Answer(503, {"error": "the raw topic is not available"}, {"Retry-After": "2"})
    refused = await ingest.refuse_unnamed(ticks)
    if refused is not None:
        return refused
    return await ingest.take(ticks, ts)


async def _body(raw: web.Request) -> bytes | None:
    """The whole body, or None once it runs past the limit (a read returns what has come so
    far, not the whole body)."""
    parts, size = [], 0
    while chunk := await raw.content.readany():
        size += len(chunk)
        if size > ingest.max_bytes:
            return None
        parts.append(chunk)
    return b"".join(parts)


@app.on_before_shutdown.connect
async def _stop_ingest(app: Any, **kwargs: Any) -> None:
    await ingest.stop()
