"""POST /ingest/ticks: vendor ticks pushed to a worker, checked and sent to the raw topic
(app/tick_ingest.py holds the rules; docs/ticks.md#webhook-ingest the contract)."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from faust.web import Request, Response, View

from app import metrics
from app.faust_app import app, settings
from app.tick_ingest import Answer, TickIngest, token_from_env, validated
from app.topics import RAW_MBO, ensure_declared, raw_mbo

log = logging.getLogger(__name__)

ingest = TickIngest(settings, RAW_MBO, token_from_env())
if ingest.on:
    log.info("tick ingest is on at /ingest/ticks (bodies up to %d bytes)", ingest.max_bytes)


@app.page("/ingest/ticks")
class TickIngestView(View):
    async def post(self, request: Request) -> Response:
        answer = await _answer(request)
        metrics.ingest_requests.labels(str(answer.status)).inc()
        if answer.status == 200:
            metrics.ingest_ticks.inc(answer.body["ticks"])
        return self.json(answer.body, status=answer.status, headers=answer.headers or None)


async def _answer(request: Request) -> Answer:
    raw: web.Request = request  # type: ignore[assignment]  # aiohttp's own request
    refused = ingest.authorised(raw.headers.get("Authorization"))
    if refused is None:
        refused = ingest.too_large(raw.content_length)
    if refused is not None:
        return ingest.refused(refused)
    body = await raw.content.read(ingest.max_bytes + 1)
    refused = ingest.too_large(len(body))
    if refused is not None:
        return ingest.refused(refused)
    ticks = validated(body)
    if isinstance(ticks, Answer):
        return ingest.refused(ticks)
    await ensure_declared(raw_mbo)
    return await ingest.take(ticks)


@app.on_before_shutdown.connect
async def _stop_ingest(app: Any, **kwargs: Any) -> None:
    await ingest.stop()
