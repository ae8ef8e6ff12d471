"""`faust -A app backfill INPUT... --out DIR`: the agents' logic over files, with no broker.

Records are cut into the same messages replay would send (`Batcher`) and handed to the same
classes under tables/ the agents use, so the output equals the live path's. Each output topic
is written as `DIR/<topic>.jsonl` as it is made, one row per line (a topic message's columns,
unrolled: one line per level change, BBO change or trade), so memory holds the state (books,
open windows), not the output; each table's final state goes to `DIR/<table>.table.jsonl`,
one JSON object per line, sorted by key. Files appear only when the whole run succeeded
(app/commands/backfill_outputs.py).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import orjson
from faust.cli import argument, option

from app.commands import exit_with
from app.commands.backfill_outputs import FileOutputs, MemoryOutputs, Outputs
from app.faust_app import app
from app.feeds.batching import Batch, Batcher
from app.feeds.mbo_files import InputError, is_definition_file, open_mbo, read_definitions
from app.feeds.watermarks import SourceWatermarks
from app.progress import Progress
from app.settings import Settings
from models import book_events
from models.bar_events import INDICATORS, LATE_TRADES, bars_topic
from models.trades import trades_from_mbo
from tables import book_messages
from tables.bar_state import BarStage
from tables.book_state import BookSet
from tables.deltas import BARS, BOOKS, BookSeconds, DeltaMerge, item_parts
from tables.ifd import PRESSURE, SIGNALS, IfdStage
from tables.instrument_stats import InstrumentStats
from tables.options import OPTIONS_PRESSURE, OPTIONS_SIGNALS, OptionInfo, OptionsAggregator

# Levels per side in books.table.jsonl (the live view's default depth).
BOOK_TABLE_DEPTH = 10
DELTAS = "deltas"


@dataclass
class BackfillResult:
    records: int = 0
    messages: int = 0
    seconds: float = 0.0
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # topic -> its messages, columnar as on the topic (models/book_events.py); written one row
    # per line
    topics: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # topic -> its rows, for topics whose messages are one row each (bars, indicators)
    row_topics: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # the flow detection state at the end (what `faust -A app baselines` loads)
    ifd: IfdStage | None = None
    options: OptionsAggregator | None = None
    # rows per output topic
    counts: dict[str, int] = field(default_factory=dict)

    def topic_rows(self, topic: str) -> Iterator[dict[str, Any]]:
        for message in self.topics[topic]:
            yield from book_events.rows(message)

    def summary(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "messages": self.messages,
            "seconds": round(self.seconds, 3),
            "records_per_s": round(self.records / self.seconds) if self.seconds > 0 else None,
            "tables": {k: len(v) for k, v in self.tables.items()},
            "topics": self.counts,
        }


class _InstrumentsStage:
    """The `instruments` agent's logic: positions count messages per instrument."""

    table = "instrument-stats"

    def __init__(self) -> None:
        self.stats: dict[int, InstrumentStats] = {}

    def on_batch(self, batch: Batch) -> None:
        st = self.stats.get(batch.instrument_id)
        if st is None:
            st = self.stats[batch.instrument_id] = InstrumentStats(batch.instrument_id)
        st.apply(batch.records, st.position + 1)

    def table_rows(self) -> list[dict[str, Any]]:
        return [self.stats[k].public() for k in sorted(self.stats)]


class _BooksStage:
    """The books agent's logic: positions count messages per instrument; the checkpoint store
    is a dict (nothing restarts here)."""

    table = "books"

    def __init__(self, out: Outputs, delta_depth: int = BOOK_TABLE_DEPTH) -> None:
        self.books = BookSet()
        self.seconds = BookSeconds(self.books.tops, delta_depth)
        self.depth = BOOK_TABLE_DEPTH
        self.positions: dict[int, int] = {}
        self.out = out
        for topic in (book_events.DELTAS, book_events.BBO, book_events.TRADES):
            out.declare(topic, columnar=True)

    def on_batch(self, batch: Batch) -> dict[str, dict]:
        iid = batch.instrument_id
        if not self.books.loaded(iid):
            self.books.load(iid, 0, {}.get)
            self.seconds.load(iid, 0, {}.get)
        pos = self.positions[iid] = self.positions.get(iid, -1) + 1
        applied = self.books.process(iid, batch.records, pos, self.seconds)
        assert applied is not None
        out = book_messages.messages(iid, applied, self.books)
        for base, message in out.items():
            self.out.message(base, message)
        return out

    def table_rows(self) -> list[dict[str, Any]]:
        rows = []
        for iid in sorted(self.books.instruments):
            view = self.books.view(iid, self.depth)
            del view["position"]  # an offset live, a message count here
            rows.append(view)
        return rows


class _BarsStage:
    """Bars and indicators from the T records, in file order: one watermark over the whole
    input, moved to the last ts_recv read, which is where a live partition's watermark ends up
    after a replay of the same files. Like a live watermark, it emits only the windows it has
    closed: the last windows stay open."""

    table = "indicators"

    def __init__(self, settings: Settings, out: Outputs) -> None:
        self.stage = BarStage(
            settings.bar_intervals_ns, settings.lateness_ns, settings.pattern_config()
        )
        self.out = out
        for iv in self.stage.engine.intervals:
            out.declare(bars_topic(iv))
        for topic in (INDICATORS, LATE_TRADES, SIGNALS):
            out.declare(topic)
        self.received_through: int | None = None

    def on_records(self, records: np.ndarray) -> list[tuple[str, dict[str, Any]]]:
        if not len(records):
            return []
        rows = self.stage.add(trades_from_mbo(records))
        self.received_through = int(records["ts_recv"].max())
        rows += self.stage.advance(self.received_through)
        for topic, row in rows:
            self.out.row(topic, row)
        return rows

    def table_rows(self) -> list[dict[str, Any]]:
        return self.stage.indicator_rows()


class _IfdStage:
    """Pressure and signals from what the books publish for each message, windows closed by
    the same source bound replay stamps on messages (app/feeds/watermarks.py), so that a
    batch the batcher still holds is never late."""

    table = "baselines"

    def __init__(self, settings: Settings, out: Outputs) -> None:
        self.stage = IfdStage(settings.ifd_config())
        self.options = OptionsAggregator(settings.ifd_config(), sources=1)
        self.out = out
        for topic in (PRESSURE, SIGNALS, OPTIONS_PRESSURE, OPTIONS_SIGNALS):
            out.declare(topic)

    def on_messages(self, iid: int, messages: dict[str, dict]) -> None:
        self.stage.add_book_output(iid, messages)

    def advance(self, bound: int | None) -> list[tuple[str, dict[str, Any]]]:
        rows = self.stage.advance(bound) if bound is not None else []
        for topic, row in rows:
            self.out.row(topic, row)
        self._aggregate()
        return rows

    def define(self, path: str, definitions: list[Any]) -> None:
        for d in definitions:
            try:
                self.stage.define(d.instrument_id, OptionInfo.from_definition(d))
            except ValueError as exc:
                raise InputError(path, f"instrument {d.instrument_id}", str(exc)) from None

    def _aggregate(self) -> None:
        """The options agent's part: every source (here one) has passed the watermark."""
        for part in self.stage.take_option_parts():
            self.options.add(*part)
        wm = self.stage.pressure.watermark
        if wm is not None:
            for topic, row in self.options.advance(0, wm):
                self.out.row(topic, row)

    def table_rows(self) -> list[dict[str, Any]]:
        return self.stage.baseline_rows()


class _DeltasStage:
    """The deltas agent's merge over the books' seconds (closed by the source bound, as live)
    and the bars and flow detection items, published as both have passed each second."""

    def __init__(self, settings: Settings, seconds: BookSeconds, out: Outputs) -> None:
        self.seconds = seconds
        self.lateness = settings.lateness_ns
        self.merge = DeltaMerge()
        self.out = out
        out.declare(DELTAS)

    def items(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        for part in item_parts(rows, self.lateness):
            self.merge.add(*part)

    def advance(self, books_bound: int | None, bars_bound: int | None) -> None:
        if books_bound is None or bars_bound is None:
            return
        self.seconds.release(0, books_bound)
        for part in self.seconds.take():
            self.merge.add(*part)
        for row in (*self.merge.advance(BARS, bars_bound), *self.merge.advance(BOOKS, books_bound)):
            self.out.row(DELTAS, row)


def backfill_files(
    paths: Sequence[str],
    settings: Settings,
    *,
    limit: int | None = None,
    progress: bool = True,
    outputs: Outputs | None = None,
) -> BackfillResult:
    """Run the files through every stage. Topics' rows go to `outputs` as they are made; by
    default they are kept in the result (`topics`, `row_topics`)."""
    defined = [(str(p), read_definitions(p)) for p in paths if is_definition_file(p)]
    files = [open_mbo(p) for p in paths if not is_definition_file(p)]
    out = MemoryOutputs() if outputs is None else outputs
    books = _BooksStage(out, delta_depth=settings.delta_depth)
    bars = _BarsStage(settings, out)
    ifd = _IfdStage(settings, out)
    for path, definitions in defined:  # before any MBO, as replay sends them
        ifd.define(path, definitions)
    deltas = _DeltasStage(settings, books.seconds, out)
    instruments = _InstrumentsStage()
    stages: list[Any] = [instruments, books]
    result = BackfillResult()
    source = SourceWatermarks(1)
    remaining = limit
    t0 = time.monotonic()

    def feed(batches: Iterable[Batch]) -> None:
        for b in batches:
            result.messages += 1
            result.records += len(b.records)
            instruments.on_batch(b)
            ifd.on_messages(b.instrument_id, books.on_batch(b))

    for f in files:
        bar = Progress(f.path.name, f.size, enabled=progress)
        batcher = Batcher(settings.batch_records, settings.max_message_bytes)
        for chunk in f.chunks():
            if remaining is not None:
                chunk = chunk[:remaining]
                remaining -= len(chunk)
            deltas.items(bars.on_records(chunk))
            feed(batcher.add(chunk))
            if len(chunk):
                source.read(int(chunk["ts_recv"].max()))
            bound = source.bounds(batcher).get(0)
            deltas.items(ifd.advance(bound))
            deltas.advance(bound, bars.received_through)
            bar.update(f.bytes_read, result.records)
            if remaining == 0:
                break
        feed(batcher.flush_all())
        deltas.items(ifd.advance(source.read_through))
        deltas.advance(source.read_through, bars.received_through)
        bar.update(f.bytes_read, result.records, force=True)
        bar.close()
        if remaining == 0:
            break
    for stage in (*stages, bars, ifd):
        result.tables[stage.table] = stage.table_rows()
    result.ifd = ifd.stage
    result.options = ifd.options
    if isinstance(out, MemoryOutputs):
        result.topics, result.row_topics = out.topics, out.row_topics
    result.counts = out.counts()
    result.seconds = time.monotonic() - t0
    return result


@app.command(
    argument("inputs", nargs=-1, required=True),
    option(
        "--out",
        "out_dir",
        required=True,
        type=click.Path(file_okay=False),
        help="Directory for <topic>.jsonl and <table>.table.jsonl files.",
    ),
    option("--limit", type=int, default=None, help="Stop after this many records."),
    option("--no-progress", is_flag=True, default=False, help="No progress bar."),
)
async def backfill(
    self: object, inputs: tuple[str, ...], out_dir: str, limit: int | None, no_progress: bool
) -> None:
    """Run the agents' logic over MBO files with no broker, writing JSON lines."""
    from app.faust_app import settings

    if limit is not None and limit < 1:
        exit_with("--limit must be at least 1", 2)
    outputs = FileOutputs(Path(out_dir))
    try:
        result = backfill_files(
            inputs, settings, limit=limit, progress=not no_progress, outputs=outputs
        )
        for table, rows in result.tables.items():
            outputs.write(f"{table}.table.jsonl", rows)
        paths = outputs.commit()
    except InputError as exc:
        outputs.abort()
        exit_with(f"{exc}\nbackfill stopped; no output was written")
    except BaseException:
        outputs.abort()
        raise
    print(
        f"backfilled {result.records:,} records in {result.seconds:.2f} s; wrote "
        + ", ".join(str(p) for p in paths),
        file=sys.stderr,
    )
    print(orjson.dumps(result.summary()).decode())
