"""What the stand-in servers (`depth-venue`, `ticks-vendor`) share: an aiohttp server on
127.0.0.1 and a feed task that starts with it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class StandInServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self._runner: web.AppRunner | None = None
        self._feed: asyncio.Task | None = None
        self.sockets: set[web.WebSocketResponse] = set()  # open connections, closed at the end

    async def serve(self, routes: dict[str, Handler], feed: Awaitable[None]) -> int:
        """Serve GET `routes` and run `feed`; returns the port bound."""
        webapp = web.Application()
        for path, handler in routes.items():
            webapp.router.add_get(path, handler)
        self._runner = web.AppRunner(webapp)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._feed = asyncio.create_task(feed)  # type: ignore[arg-type]
        return self.port

    async def close(self) -> None:
        if self._feed is not None:
            self._feed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feed
        for ws in list(self.sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
