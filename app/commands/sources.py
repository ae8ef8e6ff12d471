"""Running a long-running WebSocket source (`depth`, `ticks`) from its command: its topics,
its `/status` and `/metrics`, until SIGINT/SIGTERM; its counts as JSON on stderr at the end."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable

import orjson

from app.commands import exit_with
from app.commands.replay import ensure_source_topics
from app.faust_app import settings
from app.status_server import serve_status
from app.stream_source import GAPS_TOPIC, StreamSource
from app.symbols import take_or_refuse
from tables.symbology import SymbolCollision


def stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(s, stop.set)
    return stop


async def run_source(source: StreamSource, status: Callable[[], dict], web_port: int) -> None:
    """Exits 1 if the broker failed a send."""
    partitions = await ensure_source_topics(settings, source.topic, GAPS_TOPIC)
    try:
        await take_or_refuse(settings, source.name, *source.names())
    except SymbolCollision as exc:
        exit_with(str(exc), 2)
    runner = await serve_status(status, settings.web_host, web_port) if web_port else None
    try:
        stats = await source.run(stop_on_signals(), partitions)
    finally:
        if runner is not None:
            await runner.cleanup()
    print(orjson.dumps(stats.as_dict()).decode(), file=sys.stderr)
    if source.failure is not None:
        exit_with(f"the broker failed a send: {source.failure!r}")
