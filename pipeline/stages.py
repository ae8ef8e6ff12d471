"""The stages, as plain classes over the state under tables/. pipeline/graph.py says what each
reads and writes and in what order they run.

A stage keyed by instrument takes one input message, or one source watermark, as a `Step`: it
reads what the stages before it put there and adds what it makes. `apply` handles the message,
`advance` the watermark and what the message closed; the runner calls every stage's `apply`,
then every stage's `advance`, so everything a message made is seen by the stages after the one
that made it. Each stage names the state it keeps and the table that holds its checkpoint
(`states`), and restores that state for a key in `restore`.

Each stage also counts the items it took in and the rows it made (`taken`, `made`): plain
integers, read when the runtime is asked for its metrics, so counting costs an addition per
message and nothing per record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from models.book_events import BBO, TRADES
from models.trades import trades_from_columns
from tables import book_messages
from tables.bar_state import BarSet
from tables.book_state import BookSet
from tables.deltas import BARS, BOOKS, BookSeconds, DeltaSet, Part, item_parts
from tables.ifd import SIGNALS, IfdConfig
from tables.ifd_state import IfdSet
from tables.instrument_stats import StatsSet
from tables.mbp import MbpBuilder, MbpRow
from tables.mbp import columns as mbp_columns
from tables.options import OptionInfo
from tables.options_state import OptionsSet
from tables.patterns import PatternConfig

Get = Callable[[bytes], bytes | None]
# table name -> a reader of that table's checkpoint (Faust's table on a worker, nothing in the
# file driver)
Tables = Callable[[str], Get]
Row = tuple[str, dict[str, Any]]  # (topic base name, row)
DELTAS = "deltas"
MBP = "mbp"
# The watermark that ends a finite input: every window closes, every row waiting is released.
END = (1 << 63) - 1


def book_rows(messages: dict[str, dict]) -> int:
    """How many rows the books' columnar messages hold (each has one event number a row)."""
    return sum(len(m["event"]) for m in messages.values())


class Counted:
    """Items a stage took in and rows it made, for the metrics (`app/metrics.py`)."""

    taken: int = 0
    made: int = 0


class CheckpointedState(Protocol):
    """What the runtime asks of a state: the table writes since the last checkpoint, by
    partition, and forgetting partitions that went to another worker."""

    def checkpoint(self) -> dict[int, list[tuple[bytes, bytes | None]]]: ...

    def evict(self, partitions: set[int]) -> Any: ...


@dataclass(frozen=True)
class StageConfig:
    """What the stages are built with (app/settings.py makes it from the environment)."""

    bar_intervals_ns: list[int]
    lateness_ns: int
    patterns: PatternConfig
    ifd: IfdConfig
    delta_depth: int
    partitions: int = 1
    # the `mbp` command's (the file driver alone runs the MBP stage)
    mbp_depth: int = 10
    mbp_every_event: bool = False


@dataclass
class Step:
    """One input message (or one source watermark) of one partition on its way through the
    stages, and everything they made of it, in the order they made it."""

    partition: int
    offset: int
    instrument_id: int | None = None
    records: np.ndarray | None = None  # the raw MBO records; None for a watermark alone
    bound: int | None = None  # the source watermark that came with it (ts_recv ns)
    # which rows go out: runtime control can hold back an instrument's signals
    publishes: Callable[[int], bool] = lambda instrument_id: True
    repeat: bool = False  # the books had applied it already: nothing more to do
    book: dict[str, dict] = field(default_factory=dict)  # book.deltas, bbo, trades messages
    rows: list[Row] = field(default_factory=list)  # bars, indicators, pressure, signals...
    delta_parts: list[tuple[int, int, Part]] = field(default_factory=list)
    option_parts: list[list[Any]] = field(default_factory=list)
    option_watermark: int | None = None
    duplicate_parts: int = 0  # delta parts of seconds already published

    def emit(self, rows: list[Row]) -> list[Row]:
        """Rows for their topics; the ones published are also returned."""
        kept = [r for r in rows if r[0] != SIGNALS or self.publishes(r[1]["instrument_id"])]
        self.rows += kept
        return kept


class Books(Counted):
    """L3 books from the raw records: `book.deltas`, `bbo` and `trades` messages, and the top
    levels at the end of each second for the deltas."""

    def __init__(self, config: StageConfig) -> None:
        self.books = BookSet()
        self.seconds = BookSeconds(self.books.tops, config.delta_depth)
        self.states = [("books", self.books), ("books", self.seconds)]

    def restore(self, partition: int, instrument_id: int | None, tables: Tables) -> None:
        """Books load one instrument at a time, with its first message; but every instrument
        with a second still open loads with the partition, before a watermark can pass it."""
        get = tables("books")
        if partition not in self.seconds.restored:
            complete = True
            for other in self.seconds.open_in(partition, get):
                if other == instrument_id:
                    continue  # loaded below: its failure is its own message's
                try:
                    self._load(partition, other, get)
                except Exception:
                    # One instrument's unreadable checkpoint fails its own messages, never
                    # its partition's; the partition tries it again with its next message.
                    complete = False
            if complete:
                self.seconds.restored.add(partition)
        if instrument_id is not None:
            self._load(partition, instrument_id, get)

    def _load(self, partition: int, instrument_id: int, get: Get) -> None:
        if not self.books.loaded(instrument_id):
            self.books.load(instrument_id, partition, get)
        if not self.seconds.loaded(instrument_id):
            self.seconds.load(instrument_id, partition, get)

    def apply(self, step: Step) -> None:
        iid = step.instrument_id
        assert iid is not None and step.records is not None
        applied = self.books.process(iid, step.records, step.offset, self.seconds)
        if applied is None:
            step.repeat = True
            return
        step.book = book_messages.messages(iid, applied, self.books)
        self.taken += len(step.records)
        self.made += book_rows(step.book)

    def advance(self, step: Step) -> None:
        if step.bound is not None:
            self.seconds.release(step.partition, step.bound)
        step.delta_parts += self.seconds.take()


class Mbp(Counted):
    """MBP-N rows from the raw records, one for each record that makes one in Databento's rules
    (tables/mbp.py), on books of its own kept record by record. For `mbp`'s files: it keeps no
    checkpoint, and a trade's row waits for the fills after it, so only the end of the input
    (the watermark END) releases the last one."""

    def __init__(self, config: StageConfig) -> None:
        self.builder = MbpBuilder(config.mbp_depth, every_event=config.mbp_every_event)
        self.columns = mbp_columns(config.mbp_depth)
        self.states: list[tuple[str, CheckpointedState]] = []

    def restore(self, partition: int, instrument_id: int | None, tables: Tables) -> None:
        pass

    def apply(self, step: Step) -> None:
        assert step.records is not None
        self.taken += len(step.records)
        self._emit(step, self.builder.add(step.records))

    def advance(self, step: Step) -> None:
        if step.bound == END:
            self._emit(step, self.builder.finish())

    def _emit(self, step: Step, rows: Iterable[MbpRow]) -> None:
        depth, cols = self.builder.depth, self.columns
        made = [(MBP, dict(zip(cols, r.values(depth), strict=True))) for r in rows]
        step.rows += made
        self.made += len(made)


class InstrumentCounts(Counted):
    """Record and action counts per instrument (the /instruments/ view)."""

    def __init__(self, config: StageConfig) -> None:
        self.stats = StatsSet()
        self.states = [("instrument-stats", self.stats)]

    def restore(self, partition: int, instrument_id: int | None, tables: Tables) -> None:
        if instrument_id is not None and not self.stats.loaded(instrument_id):
            self.stats.load(instrument_id, partition, tables("instrument-stats"))

    def apply(self, step: Step) -> None:
        assert step.instrument_id is not None and step.records is not None
        self.stats.apply(step.instrument_id, step.records, step.offset)
        self.taken += len(step.records)

    def advance(self, step: Step) -> None:
        pass


class Bars(Counted):
    """Event-time bars, their indicators and patterns from the trades the books published,
    closed by the source watermark."""

    def __init__(self, config: StageConfig) -> None:
        self.bars = BarSet(config.bar_intervals_ns, config.lateness_ns, patterns=config.patterns)
        self.lateness = config.lateness_ns
        self.states = [("bars", self.bars)]

    def restore(self, partition: int, instrument_id: int | None, tables: Tables) -> None:
        if not self.bars.loaded(partition):
            self.bars.load(partition, tables("bars"))

    def apply(self, step: Step) -> None:
        message = step.book.get(TRADES)
        if message is None or self.bars.seen(step.partition, step.offset):
            return
        trades, _ = trades_from_columns(message)
        assert step.instrument_id is not None
        self.taken += len(trades)
        self.made += len(
            step.emit(self.bars.add(step.partition, step.offset, step.instrument_id, trades))
        )

    def advance(self, step: Step) -> None:
        if step.bound is None:
            return
        rows = step.emit(self.bars.advance(step.partition, step.offset, step.bound))
        self.made += len(rows)
        step.delta_parts += item_parts(rows, self.lateness)


class Flow(Counted):
    """Institutional flow: pressure windows of trades against the book's top, baselines and
    signals; an option's closed windows as parts of its groups."""

    def __init__(self, config: StageConfig) -> None:
        self.flow = IfdSet(config.ifd)
        self.lateness = config.lateness_ns
        self.states = [("ifd", self.flow)]

    def restore(self, partition: int, instrument_id: int | None, tables: Tables) -> None:
        if not self.flow.loaded(partition):
            self.flow.load(partition, tables("ifd"))

    def define(self, partition: int, instrument_id: int, info: OptionInfo | None) -> None:
        self.flow.define(partition, instrument_id, info)

    def apply(self, step: Step) -> None:
        assert step.instrument_id is not None
        self.flow.add_book_output(step.partition, step.instrument_id, step.book)
        for name in (TRADES, BBO):
            message = step.book.get(name)
            if message is not None:
                self.taken += len(message["event"])

    def advance(self, step: Step) -> None:
        if step.bound is not None:
            rows = step.emit(self.flow.advance(step.partition, step.bound))
            self.made += len(rows)
            step.delta_parts += item_parts(rows, self.lateness)
        if self.flow.config.option_groups:
            step.option_parts = self.flow.take_option_parts(step.partition)
            step.option_watermark = self.flow.watermark(step.partition)
            self.made += len(step.option_parts)


class Deltas(Counted):
    """The one-second delta topic: the books' seconds and the closed items merged, published
    once the watermark has passed each second."""

    def __init__(self, config: StageConfig) -> None:
        self.merges = DeltaSet()
        self.states = [("deltas", self.merges)]

    def restore(self, partition: int, instrument_id: int | None, tables: Tables) -> None:
        if not self.merges.loaded(partition):
            self.merges.load(partition, tables("deltas"))

    def apply(self, step: Step) -> None:
        pass

    def advance(self, step: Step) -> None:
        self.taken += len(step.delta_parts)
        for part in step.delta_parts:
            if not self.merges.add(step.partition, *part):
                step.duplicate_parts += 1
        if step.bound is None:
            return
        # Books and items are both closed by this one watermark: the merge's two sources
        # move together.
        for source in (BOOKS, BARS):
            rows = self.merges.advance(step.partition, source, step.bound)
            self.made += len(rows)
            step.rows += [(DELTAS, d) for d in rows]


class OptionGroups(Counted):
    """Option windows added up by group, from every source partition's parts; a group's window
    closes once every source's watermark has passed its end. Keyed by group: its input crosses
    a topic (options.parts) on the Faust driver."""

    def __init__(self, config: StageConfig, sources: int | None = None) -> None:
        self.groups = OptionsSet(config.ifd, config.partitions if sources is None else sources)
        self.states = [("options", self.groups)]

    def restore(self, partition: int, tables: Tables) -> None:
        if not self.groups.loaded(partition):
            self.groups.load(partition, tables("options"))

    def add(self, partition: int, parts: list[list[Any]]) -> int:
        """The parts; how many were of windows already published."""
        self.taken += len(parts)
        return sum(not self.groups.add(partition, *part) for part in parts)

    def advance(self, partition: int, source: int, watermark: int) -> list[Row]:
        rows = self.groups.advance(partition, source, watermark)
        self.made += len(rows)
        return rows
