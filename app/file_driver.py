"""The file driver: the stage graph (pipeline/graph.py) over MBO files, with no broker. What
`backfill`, `baselines`, `ohlcv` and `mbp` run.

Records are cut into the messages replay would send (`Batcher`) and each goes through the
stages keyed by instrument (`InstrumentStages`, the agent's own code) as the one partition 0,
its offset a message count; the source watermark replay would stamp on it
(`SourceWatermarks`) closes windows after each chunk read. Options' parts go straight to
their groups, whose one source is that partition. So the output equals the live path's, record
for record (tested). Topics' rows go to `outputs` as they are made: memory holds the state
(books, open windows), not the output.

A run that wants only some outputs runs only the stages that make them (`graph.needed`), and
its files may enter the graph further down: `ohlcv`'s trades enter at the `trades` port, as the
books stage would publish them, and go through the bars stage alone; `mbp` runs the files-only
MBP stage on messages in the records' order.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.feeds.batching import Batch, Batcher
from app.feeds.mbo_files import (
    InputError,
    is_definition_file,
    open_mbo,
    open_trades,
    read_definitions,
)
from app.feeds.watermarks import SourceWatermarks
from app.file_outputs import MemoryOutputs, Outputs
from app.progress import Progress
from app.settings import Settings
from models import book_events
from models.book_events import TRADES
from models.intervals import interval_name
from models.mbo import by_instrument
from models.trades import trades_message
from pipeline.graph import COLUMNAR, INSTRUMENT, RAW, needed, public_topics, segment
from pipeline.run import InstrumentStages
from pipeline.stages import END, OptionGroups, StageConfig, Step
from tables.bar_state import BarStage
from tables.ifd import IfdStage
from tables.options import OptionInfo, OptionsAggregator

# Levels per side in books.table.jsonl (the live view's default depth).
BOOK_TABLE_DEPTH = 10
PARTITION = 0


@dataclass
class FileRun:
    records: int = 0
    messages: int = 0
    seconds: float = 0.0
    # table -> its rows at the end, sorted by key (what the worker's tables would hold)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # topic -> its messages, columnar as on the topic (models/book_events.py), with
    # MemoryOutputs
    topics: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # topic -> its rows, for topics whose messages are one row each, with MemoryOutputs
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


class FileDriver:
    """The graph's stages over one run of files, one message at a time: those that make
    `wants` (ports; None: all of them) from what the files hold, MBO records (`enter` RAW) or
    trades (TRADES)."""

    def __init__(
        self,
        settings: Settings,
        out: Outputs,
        wants: Collection[str] | None = None,
        enter: str = RAW,
        config: StageConfig | None = None,
    ) -> None:
        config = settings.stage_config() if config is None else config
        specs = segment(INSTRUMENT) if wants is None else needed(wants, given=(enter,))
        self.enter = enter
        self.stages = InstrumentStages(
            config, tables=lambda name: _nothing, only=[s.name for s in specs]
        )
        self.groups = OptionGroups(config, sources=1)
        self.groups.restore(PARTITION, lambda name: _nothing)
        self.stages.restore(PARTITION)
        self.out = out
        self.offset = -1
        intervals = [interval_name(iv) for iv in config.bar_intervals_ns]
        for topic in public_topics(intervals, graph=specs):
            out.declare(topic, columnar=topic in COLUMNAR)

    def define(self, path: str, definitions: list[Any]) -> None:
        for d in definitions:
            try:
                info = OptionInfo.from_definition(d)
            except ValueError as exc:
                raise InputError(path, f"instrument {d.instrument_id}", str(exc)) from None
            self.stages.define(PARTITION, d.instrument_id, info)

    def message(self, batch: Batch) -> None:
        self.offset += 1
        given = None
        if self.enter == TRADES:
            # No book made these trades, so they belong to no book event.
            events = np.zeros(len(batch.records), np.int64)
            given = {TRADES: trades_message(batch.instrument_id, batch.records, events)}
        step = self.stages.message(
            PARTITION, self.offset, batch.instrument_id, batch.records, given=given
        )
        assert not step.repeat  # offsets only grow here
        self._emit(step)

    def watermark(self, bound: int) -> None:
        self.offset += 1
        self._emit(self.stages.watermark(PARTITION, self.offset, bound))

    def _emit(self, step: Step) -> None:
        for topic, message in step.book.items():
            self.out.message(topic, message)
        for topic, row in step.rows:
            self.out.row(topic, row)
        # The edge that changes the key: on the Faust driver, the options.parts topic.
        self.groups.add(PARTITION, step.option_parts)
        if step.option_watermark is not None:
            for topic, row in self.groups.advance(PARTITION, PARTITION, step.option_watermark):
                self.out.row(topic, row)

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        """The tables' content at the end, as the views show it."""
        books = self.stages.books.books
        book_rows = []
        for iid in sorted(books.instruments):
            view = books.view(iid, BOOK_TABLE_DEPTH)
            del view["position"]  # an offset live, a message count here
            book_rows.append(view)
        stats = self.stages.counts.stats
        return {
            "instrument-stats": stats.public_rows(),
            "books": book_rows,
            "indicators": self.bar_stage().indicator_rows(),
            "baselines": self.ifd_stage().baseline_rows(),
        }

    def bar_stage(self) -> BarStage:
        return self.stages.bars.bars.partitions[PARTITION].stage

    def ifd_stage(self) -> IfdStage:
        return self.stages.flow.flow.partitions[PARTITION].stage

    def options(self) -> OptionsAggregator:
        return self.groups.groups.partitions[PARTITION].agg


def _nothing(key: bytes) -> bytes | None:
    return None  # no checkpoint to restore: every run starts afresh


class _ChunkMessages:
    """Each chunk's records as messages at once, none held back for a fuller one: each
    instrument's (trades need no event boundaries), or (`in_order`) each run of consecutive
    records of one instrument, so what the stages make record by record comes out in the
    records' order (`mbp`'s rows)."""

    def __init__(self, in_order: bool) -> None:
        self.in_order = in_order

    def add(self, records: np.ndarray) -> list[Batch]:
        if not self.in_order:
            return [Batch(iid, group) for iid, group in by_instrument(records)]
        cuts = np.flatnonzero(np.diff(records["instrument_id"])) + 1
        return [Batch(int(run["instrument_id"][0]), run) for run in np.split(records, cuts)]

    def pending_first_recv(self) -> Iterator[tuple[int, int]]:
        return iter(())

    def flush_all(self) -> list[Batch]:
        return []


def run_files(
    paths: Sequence[str],
    settings: Settings,
    *,
    limit: int | None = None,
    progress: bool = True,
    outputs: Outputs | None = None,
    wants: Collection[str] | None = None,
    enter: str = RAW,
    symbols: dict[int, str] | None = None,
    close_at_end: bool = False,
    in_order: bool = False,
    config: StageConfig | None = None,
) -> FileRun:
    """Run the files through the stages that make `wants` (all, by default), the files' MBO
    records entering at the raw port, or (`enter=TRADES`) their trades at the trades port.
    Topics' rows go to `outputs` as they are made; by default they are kept in the result
    (`topics`, `row_topics`). `symbols` is filled with the inputs' symbols as they are read.
    `close_at_end`: after the last file, a watermark past every window closes what is still
    open (`ohlcv`'s last bar); without it the run ends as a live worker would stand, with the
    windows the input has not yet passed still open. `in_order`: messages are runs of
    consecutive records of one instrument, so rows made per record keep the files' order.
    `config`: the stages' settings, if not `settings`'."""
    if enter not in (RAW, TRADES):
        raise ValueError(f"files enter the graph at {RAW} or {TRADES}, not {enter}")
    defined = [(str(p), read_definitions(p)) for p in paths if is_definition_file(p)]
    opener = open_mbo if enter == RAW else open_trades
    files = [opener(p) for p in paths if not is_definition_file(p)]
    defined += [(str(f.path), d) for f in files if (d := f.definitions())]  # a lake's
    out = MemoryOutputs() if outputs is None else outputs
    driver = FileDriver(settings, out, wants, enter, config)
    for path, definitions in defined:  # before any MBO, as replay sends them
        driver.define(path, definitions)
    result = FileRun()
    source = SourceWatermarks(1)
    remaining = limit
    t0 = time.monotonic()

    def feed(batches: list[Batch]) -> None:
        for b in batches:
            result.messages += 1
            result.records += len(b.records)
            driver.message(b)

    for f in files:
        bar = Progress(f.path.name, f.size, enabled=progress)
        batcher = (
            Batcher(settings.batch_records, settings.max_message_bytes)
            if enter == RAW and not in_order
            else _ChunkMessages(in_order)
        )
        for chunk in f.chunks():
            if symbols is not None:
                symbols.update(f.symbols)
            if remaining is not None:
                chunk = chunk[:remaining]
                remaining -= len(chunk)
            feed(batcher.add(chunk))
            if len(chunk):
                source.read(int(chunk["ts_recv"].max()))
            bound = source.bounds(batcher).get(PARTITION)  # type: ignore[arg-type]
            if bound is not None:
                driver.watermark(bound)
            bar.update(f.bytes_read, result.records)
            if remaining == 0:
                break
        feed(batcher.flush_all())
        if symbols is not None:
            symbols.update(f.symbols)
        if source.read_through is not None:
            driver.watermark(source.read_through)
        bar.update(f.bytes_read, result.records, force=True)
        bar.close()
        if remaining == 0:
            break
    if close_at_end:
        driver.watermark(END)
    result.tables = driver.tables()
    result.ifd = driver.ifd_stage()
    result.options = driver.options()
    if isinstance(out, MemoryOutputs):
        result.topics, result.row_topics = out.topics, out.row_topics
    result.counts = out.counts()
    result.seconds = time.monotonic() - t0
    return result
