"""The access rules of app/access.py on every request of this worker's web server."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from app import metrics
from app.access import Access, AccessError, Request
from app.faust_app import app
from app.transport import start_checks

log = logging.getLogger(__name__)

# What stops the worker at its start: a bad token here, or in agents/ingest.py.
problems: list[AccessError] = []
try:
    access = Access.from_env(os.environ)
except AccessError as exc:
    access = Access()
    problems.append(exc)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _check(request: web.Request, handler: Handler) -> web.StreamResponse:
    if problems:
        return web.json_response({"error": "the worker is misconfigured"}, status=503)
    h = request.headers
    refusal = access.check(
        Request(
            request.method,
            request.path,
            h.get("Authorization"),
            h.get("Sec-WebSocket-Protocol"),
            h.get("Host"),
            h.get("Origin"),
        )
    )
    if refusal is None:
        return await handler(request)
    metrics.web_refused.labels(str(refusal.status)).inc()
    headers = {"WWW-Authenticate": 'Bearer realm="tapestream"'} if refusal.status == 401 else None
    return web.json_response({"error": refusal.error}, status=refusal.status, headers=headers)


app.web.web_app.middlewares.append(_check)


def _at_start(app: Any) -> str | None:
    """Checked as the worker starts, before it serves anything (app/transport.py), against the
    address it binds: a command-line `--web-bind` counts as much as the environment."""
    if problems:
        return "; ".join(str(p) for p in problems)
    return access.exposure_problem(str(app.conf.web_bind))


start_checks.append(_at_start)
