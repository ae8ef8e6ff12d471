"""Options aggregated by group: `options.parts` in (each option's closed pressure windows as
parts of its groups, and every source partition's pressure watermark), `options.pressure` and
`options.signals` out, keyed by group (tables/options.py; docs/flow-detection.md, "Options
aggregation"). Each partition's groups are checkpointed in the `options` table
(tables/options_state.py gives the keys; app/checkpoints.py says when).

A group's window is published once every source partition's watermark has passed its end, so
it holds every contract's window whatever the pace, batching or partition count, and is the
same as backfill's. A part of a window already published (a source repeating itself after a
restart) is dropped and counted. Under at_least_once a restart of this agent can publish a
window again: drop repeats by (group, start), signals by id.
"""

from __future__ import annotations

import logging

import orjson

from agents.control import control
from app import metrics
from app.checkpoints import Checkpointer
from app.dead_letters import processing_failed, send_dead_letter
from app.faust_app import app, settings
from app.feeds.watermarks import WM_HEADER, header
from app.state_tables import options as options_table
from app.topics import OPTION_TOPICS, ensure_declared, option_parts
from app.transport import source_partition
from tables.options import Part, check_part
from tables.options_state import OptionsSet

AGENT = "options"
log = logging.getLogger(__name__)

groups = OptionsSet(settings.ifd_config(), settings.partitions)
# Group windows are scored with the same runtime thresholds as instruments' windows.
groups.set_signal_config(control.current.signal)
control.on_change(lambda config: groups.set_signal_config(config.signal))
PARTS = option_parts.get_topic_name()
checkpoints = Checkpointer(app, AGENT, [(options_table, groups)], topic=PARTS)


@app.agent(option_parts, name=AGENT)
async def aggregate_options(stream):  # type: ignore[no-untyped-def]
    """per-option parts -> option group aggregates (options.*)"""
    for topic in OPTION_TOPICS.values():
        await ensure_declared(topic)
    async for event in stream.noack().events():
        async with checkpoints.state_lock:
            if not checkpoints.admit(event):
                continue
            msg = event.message
            try:
                source = source_partition(msg.headers)
                if source is None or not 0 <= source < settings.partitions:
                    raise ValueError(f"no valid src-part header (got {source})")
                watermark = header(msg.headers, WM_HEADER)
                parts = _parts_of(event.value) if event.value else []
            except (ValueError, orjson.JSONDecodeError) as exc:
                await send_dead_letter(AGENT, event, "malformed", str(exc))
                continue
            try:
                if not groups.loaded(msg.partition):
                    groups.load(msg.partition, options_table.get)
                for part in parts:
                    if not groups.add(msg.partition, *part):
                        metrics.messages_duplicate.labels(AGENT).inc()
                rows = []
                if watermark is not None:
                    rows = groups.advance(msg.partition, source, watermark)
                for topic, row in rows:
                    OPTION_TOPICS[topic].send_soon(
                        key=row["group"].encode(), value=orjson.dumps(row), partition=msg.partition
                    )
                    metrics.records_processed.labels(AGENT).inc()
                metrics.messages_processed.labels(AGENT).inc()
            except Exception as exc:
                await processing_failed(AGENT, event, exc)


def _parts_of(value: bytes) -> list[Part]:
    """Every part of a message, checked before any is applied."""
    body = orjson.loads(value)
    if not isinstance(body, dict) or not isinstance(body.get("parts"), list):
        raise ValueError('an options.parts message is a JSON object with a "parts" list')
    return [check_part(item) for item in body["parts"]]
