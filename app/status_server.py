"""`/status` (JSON) and `/metrics` (Prometheus) for a long-running source process."""

from __future__ import annotations

from collections.abc import Callable

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


async def serve_status(body: Callable[[], dict], host: str, port: int) -> web.AppRunner:
    """Serve until the returned runner's `cleanup()`."""

    async def status(_: web.Request) -> web.Response:
        return web.json_response(body(), dumps=lambda o: orjson.dumps(o).decode())

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    webapp = web.Application()
    webapp.router.add_get("/status", status)
    webapp.router.add_get("/metrics", metrics)
    runner = web.AppRunner(webapp)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
