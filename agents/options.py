"""The Faust driver of the stage keyed by group (pipeline/graph.py, `option-groups`):
`options.parts` in (each option's closed pressure windows as parts of its groups, and every
source partition's pressure watermark, from the flow stage), `options.pressure` and
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
from contextlib import aclosing

import orjson

from agents.control import control
from app import metrics
from app.checkpoints import Checkpointer
from app.dead_letters import processing_failed, send_dead_letter
from app.faust_app import app, settings
from app.feeds.watermarks import WM_HEADER, header
from app.option_parts import parts_of
from app.state_tables import TABLES, journal
from app.topics import OPTION_TOPICS, ensure_declared, option_parts
from app.transport import source_partition
from pipeline.graph import name_of
from pipeline.stages import OptionGroups
from tables.options import OPTIONS_SIGNALS

AGENT = "options"
log = logging.getLogger(__name__)

groups = OptionGroups(settings.stage_config())
# Group windows are scored with the same runtime thresholds as instruments' windows.
groups.groups.set_signal_config(control.current.signal)
control.on_change(lambda config: groups.groups.set_signal_config(config.signal))
PARTS = option_parts.get_topic_name()
STAGE = name_of(OptionGroups)
metrics.stage_records_in.add_source(lambda: [((STAGE,), groups.taken)])
metrics.stage_records_out.add_source(lambda: [((STAGE,), groups.made)])
checkpoints = Checkpointer(
    app,
    AGENT,
    [(TABLES[name], state) for name, state in groups.states],
    topic=PARTS,
    journal=journal,
)


@app.agent(option_parts, name=AGENT)
async def aggregate_options(stream):  # type: ignore[no-untyped-def]
    """per-option parts -> option group aggregates (options.*)"""
    for topic in OPTION_TOPICS.values():
        await ensure_declared(topic)
    async with aclosing(checkpoints.events(stream)) as events:
        async for event in events:
            msg = event.message
            try:
                source = source_partition(msg.headers)
                if source is None or not 0 <= source < settings.partitions:
                    raise ValueError(f"no valid src-part header (got {source})")
                watermark = header(msg.headers, WM_HEADER)
                parts = parts_of(event.value) if event.value else []
            except (ValueError, orjson.JSONDecodeError) as exc:
                await send_dead_letter(AGENT, event, "malformed", str(exc))
                continue
            try:
                groups.restore(msg.partition, lambda name: TABLES[name].get)
                repeats = groups.add(msg.partition, parts)
                if repeats:
                    metrics.messages_duplicate.labels(AGENT).inc(repeats)
                rows = []
                if watermark is not None:
                    rows = groups.advance(msg.partition, source, watermark)
                for topic, row in rows:
                    OPTION_TOPICS[topic].send_soon(
                        key=row["group"].encode(), value=orjson.dumps(row), partition=msg.partition
                    )
                    metrics.records_processed.labels(AGENT).inc()
                    if topic == OPTIONS_SIGNALS:
                        metrics.signals.labels(row.get("kind", "unknown")).inc()
                metrics.messages_processed.labels(AGENT).inc()
            except Exception as exc:
                await processing_failed(AGENT, event, exc)
