"""Count records and actions per instrument from the raw MBO topic."""

from __future__ import annotations

from app import metrics
from app.dead_letters import send_dead_letter
from app.faust_app import app
from app.topics import raw_mbo
from models.mbo import MalformedMessage, parse_message
from tables.declarations import instrument_stats
from tables.instrument_stats import InstrumentStats

AGENT = "instruments"


@app.agent(raw_mbo, name=AGENT)
async def count_instruments(stream):  # type: ignore[no-untyped-def]
    async for event in stream.events():
        try:
            records = parse_message(event.key, event.value)
        except MalformedMessage as exc:
            await send_dead_letter(AGENT, event, exc.kind, str(exc))
            continue
        key = event.key
        current = instrument_stats.get(key)
        stats = InstrumentStats.from_bytes(current) if current else InstrumentStats(int(key))
        if stats.apply(records, event.message.offset):
            instrument_stats[key] = stats.to_bytes()
            metrics.records_processed.labels(AGENT).inc(len(records))
            metrics.messages_processed.labels(AGENT).inc()
        else:
            metrics.messages_duplicate.labels(AGENT).inc()
