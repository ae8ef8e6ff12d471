"""The access rules of app/access.py on every request of this worker's web server."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable

from aiohttp import web

from app import metrics
from app.access import Access, AccessError
from app.faust_app import app, settings

log = logging.getLogger(__name__)

# What stops the worker at its start: a bad token here, or in agents/ingest.py.
problems: list[AccessError] = []
try:
    access = Access.from_env(os.environ, settings.web_host)
except AccessError as exc:
    access = Access()
    problems.append(exc)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _check(request: web.Request, handler: Handler) -> web.StreamResponse:
    if problems:
        return web.json_response({"error": "the worker is misconfigured"}, status=503)
    refusal = access.check(
        request.method,
        request.path,
        request.headers.get("Authorization"),
        request.headers.get("Sec-WebSocket-Protocol"),
    )
    if refusal is None:
        return await handler(request)
    metrics.web_refused.labels(str(refusal.status)).inc()
    headers = {"WWW-Authenticate": 'Bearer realm="tapestream"'} if refusal.status == 401 else None
    return web.json_response({"error": refusal.error}, status=refusal.status, headers=headers)


app.web.web_app.middlewares.append(_check)


@app.task
async def _refuse_when_exposed() -> None:
    # At the worker's start, not on import: commands that serve nothing (replay, backfill)
    # share the settings and must not fail on them.
    if problems:
        for problem in problems:
            log.critical("%s", problem)
        await app.crash(problems[0])
    elif access.on:
        log.info("web access: bearer tokens required (readers and operators)")
