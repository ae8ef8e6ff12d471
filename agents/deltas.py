"""The one-second delta stream: `delta.parts` in (the books and bars agents' parts of each
second, with their watermarks), `deltas` out, one record per instrument per second in which
something changed (tables/deltas.py; docs/topics.md, "The delta topic"). The merge of each partition
is checkpointed in the `deltas` table (tables/deltas.py gives the keys; app/checkpoints.py
says when).

A second is published once both writers' watermarks have passed its end, seconds in order and
instruments in order within a second, so the stream is the same at any pace, batch size or
partition count, and the same as backfill's. A part of a second already published (a writer
repeating itself after a restart) is dropped and counted. Under at_least_once a restart of
this agent can publish a second again: drop repeats by (instrument_id, start).
"""

from __future__ import annotations

import logging

import orjson

from app import metrics
from app.checkpoints import Checkpointer
from app.dead_letters import processing_failed, send_dead_letter
from app.delta_parts import parts_of, source_of
from app.faust_app import app
from app.feeds.watermarks import WM_HEADER, header
from app.state_tables import deltas as deltas_table
from app.topics import delta_parts, deltas, ensure_declared
from tables.deltas import DeltaSet

AGENT = "deltas"
log = logging.getLogger(__name__)

merges = DeltaSet()
PARTS = delta_parts.get_topic_name()
checkpoints = Checkpointer(app, AGENT, [(deltas_table, merges)], topic=PARTS)


@app.agent(delta_parts, name=AGENT)
async def publish_deltas(stream):  # type: ignore[no-untyped-def]
    """book and bar parts -> the one-second delta topic (deltas)"""
    await ensure_declared(deltas)
    async for event in stream.noack().events():
        async with checkpoints.state_lock:
            if not checkpoints.admit(event):
                continue
            msg = event.message
            try:
                source = source_of(msg.headers)
                bound = header(msg.headers, WM_HEADER)
                parts = parts_of(event.value) if event.value else []
            except (ValueError, orjson.JSONDecodeError) as exc:
                await send_dead_letter(AGENT, event, "malformed", str(exc))
                continue
            try:
                if not merges.loaded(msg.partition):
                    merges.load(msg.partition, deltas_table.get)
                for part in parts:
                    if not merges.add(msg.partition, *part):
                        metrics.messages_duplicate.labels(AGENT).inc()
                if bound is not None:
                    for delta in merges.advance(msg.partition, source, bound):
                        deltas.send_soon(
                            key=str(delta["instrument_id"]).encode(),
                            value=orjson.dumps(delta),
                            partition=msg.partition,
                        )
                        metrics.records_processed.labels(AGENT).inc()
                metrics.messages_processed.labels(AGENT).inc()
            except Exception as exc:
                await processing_failed(AGENT, event, exc)
