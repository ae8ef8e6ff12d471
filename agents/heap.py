"""The worker's C heap trimmed on a timer (`TAPESTREAM_HEAP_TRIM_S`; app/heap_trim.py says why)."""

from __future__ import annotations

import asyncio
import logging

from app import heap_trim, metrics
from app.faust_app import app, settings

log = logging.getLogger(__name__)


async def trim_heap() -> None:
    released, seconds = await asyncio.to_thread(heap_trim.trim)
    metrics.heap_trimmed.inc(released)
    metrics.heap_trim_seconds.observe(seconds)
    log.debug("heap trim: %.1f MB given back in %.1f ms", released / 1e6, seconds * 1e3)


if settings.heap_trim_s > 0 and heap_trim.available():
    app.timer(settings.heap_trim_s)(trim_heap)
