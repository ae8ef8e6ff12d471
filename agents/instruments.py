"""The Faust driver of the stages keyed by instrument (pipeline/graph.py): one agent reads the
raw MBO topic and runs books, instrument counts, bars, flow detection and the one-second
deltas on each message in-process, in the graph's order, then sends what they made to the
public topics (`book.deltas`, `bbo`, `trades`, `bars.*`, `indicators`, `trades.late`,
`pressure`, `signals`, `deltas`) and options' parts to `options.parts`, the one edge that
changes the key (agents/options.py).

Each stage's state lives in memory; its table holds the checkpoint, written at the commit
boundary for every stage at once (app/checkpoints.py says how, and why nothing is lost or
repeated). A message redelivered after a restart is recognised by its offset, which the
checkpoint stores, and skipped. Under at_least_once outputs can repeat after a crash:
consumers drop repeats by the ids docs/topics.md gives.

Windows close on the source watermark each raw message carries (app/feeds/watermarks.py),
never on the wall clock, so every output is the same at any replay pace, batch size or
partition count, and the same as backfill's, which runs the same stages.
"""

from __future__ import annotations

import logging
import time
from contextlib import aclosing
from typing import Any

import orjson

from agents.control import control
from app import metrics
from app.checkpoints import Checkpointer
from app.dead_letters import processing_failed, send_dead_letter
from app.faust_app import app, settings
from app.feeds.watermarks import WM_HEADER, header
from app.option_parts import OptionPartSender
from app.state_tables import TABLES, journal
from app.topics import BOOK_TOPICS, RAW_MBO, ROW_TOPICS, ensure_declared, option_parts, raw_mbo
from app.transport import before_joining, send_output
from models import book_events
from models.bar_events import LATE_TRADES
from models.definitions import is_definition, parse_definitions
from models.mbo import MalformedMessage, parse_message
from pipeline.run import InstrumentStages
from pipeline.stages import Step
from tables.book_state import warm_up
from tables.ifd import SIGNALS
from tables.options import OptionInfo
from tables.patterns import LagWatch

AGENT = "instruments"
log = logging.getLogger(__name__)

stages = InstrumentStages(
    settings.stage_config(),
    tables=lambda name: TABLES[name].get,
    publishes=lambda instrument_id: control.current.publishes(instrument_id),
)
option_sender = OptionPartSender(settings.ifd_config().interval_ns, settings.partitions)
checkpoints = Checkpointer(
    app,
    AGENT,
    [(TABLES[name], state) for name, state in stages.states()],
    topic=RAW_MBO,
    forget=option_sender.forget,
    contiguous=True,  # replay and the feeds write the raw topic outside transactions
    journal=journal,
)
lag_watch = LagWatch(settings.lag_limit)
BOOK_NAMES = {base: topic.get_topic_name() for base, topic in BOOK_TOPICS.items()}
ROW_NAMES = {base: topic.get_topic_name() for base, topic in ROW_TOPICS.items()}
# Read when scraped: the stages and books keep plain counts, so the hot path pays an addition
# per message for them and no metric call.
metrics.stage_records_in.add_source(lambda: [((n,), i) for n, i, _ in stages.stage_counts()])
metrics.stage_records_out.add_source(lambda: [((n,), o) for n, _, o in stages.stage_counts()])
metrics.sequence_gaps.add_source(lambda: [((), stages.books.books.sequence_gaps())])
metrics.suspect_books.add_source(lambda: [((), stages.books.books.suspect_books())])


def _configure(config: Any) -> None:
    stages.flow.flow.set_signal_config(config.signal)
    stages.bars.bars.set_pattern_config(config.patterns)


_configure(control.current)
control.on_change(_configure)


def _load_kernels() -> None:
    # Loading the compiled kernels from numba's cache takes a second or two, compiling them
    # (the first start after an install without `make install`) two minutes: a worker pays it
    # before it joins its group, not on the first message of a partition.
    log.info("%s: kernels ready in %.1f s", AGENT, warm_up())


before_joining.append(_load_kernels)


def restore_books(instrument_id: int, partition: int) -> None:
    """The instrument's books and counts from their checkpoint, if this worker does not hold
    them yet (the book views call this too, under `checkpoints.state_lock`); the other stages
    restore their partition's state with its first message."""
    if not stages.books.books.loaded(instrument_id):
        t0 = time.perf_counter()
        stages.books.restore(partition, instrument_id, stages.tables)
        metrics.book_load_seconds.observe(time.perf_counter() - t0)
    stages.counts.restore(partition, instrument_id, stages.tables)


@app.agent(raw_mbo, name=AGENT)
async def run_stages(stream):  # type: ignore[no-untyped-def]
    """raw MBO -> books, counts, bars, indicators, flow, signals and deltas per instrument"""
    for topic in (*BOOK_TOPICS.values(), *ROW_TOPICS.values(), option_parts):
        await ensure_declared(topic)
    async with aclosing(checkpoints.events(stream)) as events:
        async for event in events:
            try:
                step = await _step(event)
            except MalformedMessage as exc:
                await send_dead_letter(AGENT, event, exc.kind, str(exc))
                continue
            except Exception as exc:
                await processing_failed(AGENT, event, exc)
                continue
            # Outside the handlers above: an output the Kafka client refuses stops the worker
            # (app/transport.py, send_output); it never dead-letters the input that made it.
            if step is not None:
                await _publish(event, step)


async def _step(event: Any) -> Step | None:
    """What the stages made of one message; None when there is nothing to send."""
    partition, offset = event.message.partition, event.message.offset
    bound = header(event.message.headers, WM_HEADER)
    if not event.value and event.key is None and bound is not None:
        return stages.watermark(partition, offset, bound)  # a marker
    if is_definition(event.value):
        return await _define(event, partition, offset, bound)
    records = parse_message(event.key, event.value)
    iid = int(event.key)
    restore_books(iid, partition)
    step = stages.message(partition, offset, iid, records, bound)
    if step.repeat:
        metrics.messages_duplicate.labels(AGENT).inc()
        return None
    lagging = _watch_lag(partition, iid, event.message.timestamp)
    if lagging is not None:
        step.rows.append((SIGNALS, lagging))
    metrics.records_processed.labels(AGENT).inc(len(records))
    metrics.messages_processed.labels(AGENT).inc()
    return step


async def _publish(event: Any, step: Step) -> None:
    """What the stages made of one message, to its topics, on the input's partition: the same
    key, partitioner and partition count, so the same partition; explicit, or exactly_once
    would send outside the transaction (app/dead_letters.py says why)."""
    partition = step.partition
    for base, message in step.book.items():
        await send_output(app, BOOK_NAMES[base], event.key, book_events.encode(message), partition)
    for topic, row in step.rows:
        key = str(row["instrument_id"]).encode()
        await send_output(app, ROW_NAMES[topic], key, orjson.dumps(row), partition)
        # Rows are few next to records (a bar, a window, a second's delta): counted one by one.
        if topic == SIGNALS:
            metrics.signals.labels(row.get("kind", "unknown")).inc()
        elif topic == LATE_TRADES:
            metrics.late_trades.labels(row.get("interval", "unknown")).inc()
    if step.duplicate_parts:
        metrics.messages_duplicate.labels(AGENT).inc(step.duplicate_parts)
    if step.option_parts or step.option_watermark is not None:
        option_sender.send(partition, step.option_parts, step.option_watermark)


async def _define(event: Any, partition: int, offset: int, bound: int | None) -> Step | None:
    """Instrument definitions: an option's windows count in its groups from here on."""
    try:
        records = parse_definitions(event.key, event.value)
        infos = [OptionInfo.from_definition(d) for d in records]
    except MalformedMessage as exc:
        await send_dead_letter(AGENT, event, exc.kind, str(exc))
        return None
    except ValueError as exc:
        await send_dead_letter(AGENT, event, "bad_definition", str(exc))
        return None
    for d, info in zip(records, infos, strict=True):
        stages.define(partition, d.instrument_id, info)
    metrics.messages_processed.labels(AGENT).inc()
    return None if bound is None else stages.watermark(partition, offset, bound)


def _watch_lag(partition: int, iid: int, produced_s: float | None) -> dict[str, Any] | None:
    """The processing-lag gauge, and a lag signal to send when the partition fell behind."""
    if not produced_s:
        return None
    now = time.time()
    metrics.processing_lag.labels(AGENT).set(now - produced_s)
    signal = lag_watch.observe(partition, iid, produced_s, now)
    if signal is not None:
        log.warning(
            "%s: partition %d is %.1f s behind its input", AGENT, partition, signal["lag_s"]
        )
    return signal
