"""Order books, instrument counts and institutional flow from the raw MBO topic: `book.deltas`,
`bbo`, `trades`, `pressure` and `signals` out; books (tables/book_state.py), counts
(tables/instrument_stats.py) and IFD state (tables/ifd_state.py) kept as checkpointed table
state. One agent reads the raw topic once for all three: Faust's cost per message is what limits
a worker, not the counting; and IFD needs each trade with the top of book it met, in the book's
own order, which no agent reading `trades` and `bbo` separately could be sure of.

Books and counts live in memory; the `books` and `instrument-stats` tables hold their
checkpoint, written at the commit boundary (app/checkpoints.py says how, and why nothing is lost
or repeated). A message redelivered after a restart is recognised by its offset, which the
checkpoint stores, and skipped. Under at_least_once outputs can repeat after a crash: consumers
drop repeats by (publisher_id, event).

Source watermarks (app/feeds/watermarks.py) pass through to `trades`: each trades message
carries its raw message's bound and raw offset, and a marker, or a bound that moved on while no
trade was sent, is passed on as a marker of its own, so the bars agent's windows close on time.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from agents.control import control
from app import metrics
from app.checkpoints import Checkpointer
from app.dead_letters import processing_failed, send_dead_letter
from app.delta_parts import PartSender
from app.faust_app import app, settings
from app.feeds.watermarks import SOURCE_OFFSET_HEADER, WM_HEADER, Passed, encode_ns, header
from app.option_parts import OptionPartSender
from app.state_tables import books as books_table
from app.state_tables import ifd as ifd_table
from app.state_tables import instrument_stats as stats_table
from app.topics import BOOK_TOPICS, IFD_TOPICS, RAW_MBO, ensure_declared, option_parts, raw_mbo
from models import book_events
from models.book_events import TRADES
from models.definitions import is_definition, parse_definitions
from models.mbo import MalformedMessage, parse_message
from tables import book_messages
from tables.book_state import BookSet, warm_up
from tables.deltas import BOOKS, BookSeconds, item_parts
from tables.ifd import SIGNALS
from tables.ifd_state import IfdSet
from tables.instrument_stats import StatsSet
from tables.options import OptionInfo
from tables.patterns import LagWatch

AGENT = "books"
log = logging.getLogger(__name__)

book_set = BookSet()
stats_set = StatsSet()
ifd_set = IfdSet(settings.ifd_config())
# The books' part of the one-second deltas; its state sits beside the books' checkpoint.
book_seconds = BookSeconds(book_set.tops, settings.delta_depth)
delta_sender = PartSender(BOOKS)
option_sender = OptionPartSender(settings.ifd_config().interval_ns, settings.partitions)
checkpoints = Checkpointer(
    app,
    AGENT,
    [
        (books_table, book_set),
        (books_table, book_seconds),
        (stats_table, stats_set),
        (ifd_table, ifd_set),
    ],
    topic=RAW_MBO,
    forget=lambda partition: _forget_bounds(partition),
    contiguous=True,  # replay and the feeds write the raw topic outside transactions
)
ifd_set.set_signal_config(control.current.signal)
lag_watch = LagWatch(settings.lag_limit)
control.on_change(lambda config: ifd_set.set_signal_config(config.signal))
# Per partition, the source's bound (ts_recv ns) and the last one passed on to `trades`.
source_bound: dict[int, int] = {}
passed_on = Passed()
# A bound that moves while no trade is sent is passed on once it has moved this far.
PASS_ON_STEP_NS = 100_000_000


@app.task
async def _load_kernels() -> None:
    # Loading the compiled kernels from numba's cache takes a second or two; a worker pays it
    # while it starts, not on the first message of a partition.
    log.info("books: kernels ready in %.1f s", warm_up())


def ensure_loaded(instrument_id: int, partition: int) -> None:
    if not book_set.loaded(instrument_id):
        t0 = time.perf_counter()
        book_set.load(instrument_id, partition, books_table.get)
        metrics.book_load_seconds.observe(time.perf_counter() - t0)
    if not stats_set.loaded(instrument_id):
        stats_set.load(instrument_id, partition, stats_table.get)
    if not book_seconds.loaded(instrument_id):
        book_seconds.load(instrument_id, partition, books_table.get)


@app.agent(raw_mbo, name=AGENT)
async def maintain_books(stream):  # type: ignore[no-untyped-def]
    """raw MBO -> L3 books, book.deltas, bbo, trades, flow pressure and signals"""
    for topic in (*BOOK_TOPICS.values(), *IFD_TOPICS.values(), option_parts):
        await ensure_declared(topic)
    async for event in stream.noack().events():
        async with checkpoints.state_lock:
            partition = event.message.partition
            offset = event.message.offset
            if not checkpoints.admit(event):
                continue
            bound = header(event.message.headers, WM_HEADER)
            if bound is not None and bound > source_bound.get(partition, bound - 1):
                source_bound[partition] = bound
            if not ifd_set.loaded(partition):
                ifd_set.load(partition, ifd_table.get)
            if not event.value and event.key is None and bound is not None:
                _pass_on(partition, offset, 0)  # a marker
                _advance(partition, bound)
                continue
            if is_definition(event.value):
                await _define(event, partition)
                _advance(partition, bound)
                continue
            try:
                records = parse_message(event.key, event.value)
            except MalformedMessage as exc:
                await send_dead_letter(AGENT, event, exc.kind, str(exc))
                continue
            try:
                _apply(event, partition, offset, int(event.key), records, bound)
            except Exception as exc:
                await processing_failed(AGENT, event, exc)


def _apply(
    event: Any, partition: int, offset: int, iid: int, records: Any, bound: int | None
) -> None:
    """One raw message of one instrument through books, counts and flow detection."""
    ensure_loaded(iid, partition)
    applied = book_set.process(iid, records, offset, book_seconds)
    if applied is None:
        metrics.messages_duplicate.labels(AGENT).inc()
        return
    stats_set.apply(iid, records, offset)
    _watch_lag(partition, iid, event.message.timestamp)
    out = book_messages.messages(iid, applied, book_set)
    for base, message in out.items():
        # Same key, partitioner and partition count as the input, so the same partition;
        # explicit, or exactly_once would send outside the transaction (app/dead_letters.py
        # says why).
        BOOK_TOPICS[base].send_soon(
            key=event.key,
            value=book_events.encode(message),
            partition=partition,
            headers=_trade_headers(partition, offset) if base == TRADES else None,
        )
    if TRADES not in out:
        _pass_on(partition, offset, PASS_ON_STEP_NS)
    ifd_set.add_book_output(partition, iid, out)
    _advance(partition, bound)
    metrics.records_processed.labels(AGENT).inc(len(records))
    metrics.messages_processed.labels(AGENT).inc()


async def _define(event: Any, partition: int) -> None:
    """Instrument definitions: an option's windows count in its groups from here on."""
    try:
        records = parse_definitions(event.key, event.value)
        infos = [OptionInfo.from_definition(d) for d in records]
    except MalformedMessage as exc:
        await send_dead_letter(AGENT, event, exc.kind, str(exc))
        return
    except ValueError as exc:
        await send_dead_letter(AGENT, event, "bad_definition", str(exc))
        return
    for d, info in zip(records, infos, strict=True):
        ifd_set.define(partition, d.instrument_id, info)
    metrics.messages_processed.labels(AGENT).inc()


def _watch_lag(partition: int, iid: int, produced_s: float | None) -> None:
    if not produced_s:
        return
    now = time.time()
    metrics.processing_lag.labels(AGENT).set(now - produced_s)
    signal = lag_watch.observe(partition, iid, produced_s, now)
    if signal is not None:
        log.warning("books: partition %d is %.1f s behind its input", partition, signal["lag_s"])
        IFD_TOPICS[SIGNALS].send_soon(
            key=str(iid).encode(), value=orjson.dumps(signal), partition=partition
        )


def _advance(partition: int, bound: int | None) -> None:
    """Close what the source bound has passed: pressure windows and signals, and the seconds
    of the books' deltas; send them, then the bound, to the deltas agent."""
    rows = []
    if bound is not None:
        for topic, row in ifd_set.advance(partition, bound):
            if topic == SIGNALS and not control.current.publishes(row["instrument_id"]):
                continue
            IFD_TOPICS[topic].send_soon(
                key=str(row["instrument_id"]).encode(), value=orjson.dumps(row), partition=partition
            )
            rows.append((topic, row))
        book_seconds.release(partition, bound)
    parts = book_seconds.take()
    parts += item_parts(rows, settings.lateness_ns)
    delta_sender.send(partition, parts, bound)
    if ifd_set.config.option_groups:  # else the options agent has nothing to hear
        option_sender.send(
            partition, ifd_set.take_option_parts(partition), ifd_set.watermark(partition)
        )


def _trade_headers(partition: int, offset: int) -> list[tuple[str, bytes]]:
    headers = [(SOURCE_OFFSET_HEADER, encode_ns(offset))]
    bound = source_bound.get(partition)
    if bound is not None:
        headers.append((WM_HEADER, encode_ns(bound)))
        passed_on.mark(partition, bound)
    return headers


def _pass_on(partition: int, offset: int, step: int) -> None:
    """A marker on `trades` if the partition's bound moved more than `step` past the last one
    passed on."""
    bound = source_bound.get(partition)
    if bound is None or not passed_on.due(partition, bound, more_than=step):
        return
    BOOK_TOPICS[TRADES].send_soon(
        key=None, value=b"", partition=partition, headers=_trade_headers(partition, offset)
    )


def _forget_bounds(partition: int) -> None:
    source_bound.pop(partition, None)
    passed_on.forget(partition)
    delta_sender.forget(partition)
    option_sender.forget(partition)
