"""Bars, indicators and patterns from the `trades` topic: `bars.<interval>`, `indicators`,
`signals` (patterns: tables/patterns.py) and `trades.late` out; windows, indicator and pattern
state and recent bars kept as checkpointed table state
(tables/bar_state.py, app/checkpoints.py).

Windows close on the source watermark each trades message carries (app/feeds/watermarks.py),
never on the wall clock or on the data's own times, which batching reorders across instruments.
Lateness is each trade's own (tables/bars.py), so the bars are the same, record for record, at
any replay pace, batch size or partition count, and the same as backfill's.

Under at-least-once the books agent can send a trades message again after a restart; each
carries its raw offset, and what this partition has already applied is dropped. A restart of
this agent can repeat bars: drop repeats by (instrument_id, interval, start).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from agents.control import control
from app import metrics
from app.checkpoints import Checkpointer
from app.dead_letters import processing_failed, send_dead_letter
from app.delta_parts import PartSender
from app.faust_app import app, settings
from app.feeds.watermarks import SOURCE_OFFSET_HEADER, WM_HEADER, header
from app.state_tables import bars as bars_table
from app.topics import BAR_TOPICS, IFD_TOPICS, ensure_declared, trades
from models.trades import trades_from_message
from tables.bar_state import BarSet
from tables.deltas import BARS, item_parts
from tables.ifd import SIGNALS

AGENT = "bars"
log = logging.getLogger(__name__)

bar_set = BarSet(
    settings.bar_intervals_ns, settings.lateness_ns, patterns=settings.pattern_config()
)
bar_set.set_pattern_config(control.current.patterns)
control.on_change(lambda config: bar_set.set_pattern_config(config.patterns))
TRADES = trades.get_topic_name()
OUT_TOPICS = {**BAR_TOPICS, SIGNALS: IFD_TOPICS[SIGNALS]}  # patterns are signals too
delta_sender = PartSender(BARS)  # bars, indicators and patterns for the one-second deltas
checkpoints = Checkpointer(
    app, AGENT, [(bars_table, bar_set)], topic=TRADES, forget=delta_sender.forget
)


@app.agent(trades, name=AGENT)
async def make_bars(stream):  # type: ignore[no-untyped-def]
    """trades -> bars, indicators and patterns per instrument (bars.*, indicators, signals)"""
    for topic in OUT_TOPICS.values():
        await ensure_declared(topic)
    async for event in stream.noack().events():
        async with checkpoints.state_lock:
            if not checkpoints.admit(event):
                continue
            msg = event.message
            try:
                source = header(msg.headers, SOURCE_OFFSET_HEADER)
                bound = header(msg.headers, WM_HEADER)
                batch = trades_from_message(event.key, event.value) if event.value else None
            except ValueError as exc:
                await send_dead_letter(AGENT, event, "malformed", str(exc))
                continue
            if not bar_set.loaded(msg.partition):
                bar_set.load(msg.partition, bars_table.get)
            # Without a source offset (a producer other than the books agent) the topic's own
            # offset orders messages.
            offset = source if source is not None else msg.offset
            if bar_set.seen(msg.partition, offset):
                metrics.messages_duplicate.labels(AGENT).inc()
                continue
            try:
                _apply(msg.partition, offset, batch, bound)
            except Exception as exc:
                await processing_failed(AGENT, event, exc)


def _apply(partition: int, offset: int, batch: Any, bound: int | None) -> None:
    """One trades message (and the source bound it carries) through bars and patterns."""
    rows = []
    if batch is not None:
        iid, records, _ = batch
        rows += bar_set.add(partition, offset, iid, records)
        metrics.records_processed.labels(AGENT).inc(len(records))
    if bound is not None:
        rows += bar_set.advance(partition, offset, bound)
    sent = []
    for topic, row in rows:
        if topic == SIGNALS and not control.current.publishes(row["instrument_id"]):
            continue
        OUT_TOPICS[topic].send_soon(
            key=str(row["instrument_id"]).encode(), value=orjson.dumps(row), partition=partition
        )
        sent.append((topic, row))
    delta_sender.send(partition, item_parts(sent, settings.lateness_ns), bound)
    metrics.messages_processed.labels(AGENT).inc()
