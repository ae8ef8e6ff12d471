"""The file driver: the stage graph (pipeline/graph.py) over MBO files, with no broker. What
`backfill` and `baselines` run.

Records are cut into the messages replay would send (`Batcher`) and each goes through the
stages keyed by instrument (`InstrumentStages`, the agent's own code) as the one partition 0,
its offset a message count; the source watermark replay would stamp on it
(`SourceWatermarks`) closes windows after each chunk read. Options' parts go straight to
their groups, whose one source is that partition. So the output equals the live path's, record
for record (tested). Topics' rows go to `outputs` as they are made: memory holds the state
(books, open windows), not the output.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.feeds.batching import Batch, Batcher
from app.feeds.mbo_files import InputError, is_definition_file, open_mbo, read_definitions
from app.feeds.watermarks import SourceWatermarks
from app.file_outputs import MemoryOutputs, Outputs
from app.progress import Progress
from app.settings import Settings
from models import book_events
from models.intervals import interval_name
from pipeline.graph import COLUMNAR, public_topics
from pipeline.run import InstrumentStages
from pipeline.stages import OptionGroups, Step
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
    """The graph's stages over one run of files, one message at a time."""

    def __init__(self, settings: Settings, out: Outputs) -> None:
        config = settings.stage_config()
        self.stages = InstrumentStages(config, tables=lambda name: _nothing)
        self.groups = OptionGroups(config, sources=1)
        self.groups.restore(PARTITION, lambda name: _nothing)
        self.stages.restore(PARTITION)
        self.out = out
        self.offset = -1
        intervals = [interval_name(iv) for iv in settings.bar_intervals_ns]
        for topic in public_topics(intervals):
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
        step = self.stages.message(PARTITION, self.offset, batch.instrument_id, batch.records)
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


def run_files(
    paths: Sequence[str],
    settings: Settings,
    *,
    limit: int | None = None,
    progress: bool = True,
    outputs: Outputs | None = None,
) -> FileRun:
    """Run the files through every stage. Topics' rows go to `outputs` as they are made; by
    default they are kept in the result (`topics`, `row_topics`)."""
    defined = [(str(p), read_definitions(p)) for p in paths if is_definition_file(p)]
    files = [open_mbo(p) for p in paths if not is_definition_file(p)]
    defined += [(str(f.path), d) for f in files if (d := f.definitions())]  # a lake's
    out = MemoryOutputs() if outputs is None else outputs
    driver = FileDriver(settings, out)
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
        batcher = Batcher(settings.batch_records, settings.max_message_bytes)
        for chunk in f.chunks():
            if remaining is not None:
                chunk = chunk[:remaining]
                remaining -= len(chunk)
            feed(batcher.add(chunk))
            if len(chunk):
                source.read(int(chunk["ts_recv"].max()))
            bound = source.bounds(batcher).get(PARTITION)
            if bound is not None:
                driver.watermark(bound)
            bar.update(f.bytes_read, result.records)
            if remaining == 0:
                break
        feed(batcher.flush_all())
        if source.read_through is not None:
            driver.watermark(source.read_through)
        bar.update(f.bytes_read, result.records, force=True)
        bar.close()
        if remaining == 0:
            break
    result.tables = driver.tables()
    result.ifd = driver.ifd_stage()
    result.options = driver.options()
    if isinstance(out, MemoryOutputs):
        result.topics, result.row_topics = out.topics, out.row_topics
    result.counts = out.counts()
    result.seconds = time.monotonic() - t0
    return result
