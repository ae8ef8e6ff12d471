"""The stages keyed by instrument, run in the graph's order for one message at a time: what the
Faust agent (agents/instruments.py) and the file driver (app/commands/backfill.py) both call.

Restoring happens here and only here: before a message's stages run, each restores the state
of the message's instrument and partition from its table (`restore`) if it does not hold it
already. Checkpointing is the runtime's: `states()` names every state with its table.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import numpy as np

from pipeline.graph import INSTRUMENT, segment
from pipeline.stages import (
    Bars,
    Books,
    CheckpointedState,
    Deltas,
    Flow,
    InstrumentCounts,
    StageConfig,
    Step,
    Tables,
)
from tables.options import OptionInfo


class InstrumentStages:
    def __init__(
        self,
        config: StageConfig,
        tables: Tables,
        publishes: Callable[[int], bool] = lambda instrument_id: True,
        only: Collection[str] | None = None,
    ) -> None:
        """`tables(name)` reads a table's checkpoint; `publishes(instrument_id)` says whether
        its signals go out (runtime control); `only` names the stages that run (graph.needed),
        when not all a worker runs: the others are built, but hold nothing."""
        chosen = {s.name for s in segment(INSTRUMENT)} if only is None else set(only)
        every = segment(INSTRUMENT, files_only=True)
        if unknown := chosen - {s.name for s in every}:
            raise ValueError(f"no stage keyed by instrument is named {sorted(unknown)}")
        # every stage a worker runs, and those only the file driver runs when they are chosen
        specs = [s for s in every if not s.files_only or s.name in chosen]
        self.names = [spec.name for spec in specs]
        self.stages = [spec.make(config) for spec in specs]
        self.running = [s for n, s in zip(self.names, self.stages, strict=True) if n in chosen]
        self.tables = tables
        self.publishes = publishes
        self.books: Books = self._one(Books)
        self.counts: InstrumentCounts = self._one(InstrumentCounts)
        self.bars: Bars = self._one(Bars)
        self.flow: Flow = self._one(Flow)
        self.deltas: Deltas = self._one(Deltas)

    def _one(self, kind: type) -> Any:
        (stage,) = (s for s in self.stages if isinstance(s, kind))
        return stage

    def states(self) -> list[tuple[str, CheckpointedState]]:
        """(table, state) for every state the stages keep, in stage order."""
        return [pair for stage in self.stages for pair in stage.states]

    def stage_counts(self) -> list[tuple[str, int, int]]:
        """(stage, items taken in, rows made) of every stage since this runner was built."""
        return [(n, s.taken, s.made) for n, s in zip(self.names, self.stages, strict=True)]

    def restore(self, partition: int, instrument_id: int | None = None) -> None:
        """The state of the partition (and instrument) from the last checkpoint, for every
        stage that does not hold it yet."""
        for stage in self.stages:
            stage.restore(partition, instrument_id, self.tables)

    def message(
        self,
        partition: int,
        offset: int,
        instrument_id: int,
        records: np.ndarray,
        bound: int | None = None,
        given: dict[str, dict] | None = None,
    ) -> Step:
        """One raw message of one instrument through every stage that runs; `step.repeat` when
        its offset was applied already (nothing else happens then). `given`: messages of ports
        the input holds already (a trades file's `trades`), as the stage that writes them would
        have made them."""
        self.restore(partition, instrument_id)
        step = Step(partition, offset, instrument_id, records, bound, self.publishes)
        if given:
            step.book.update(given)
        for stage in self.running:
            stage.apply(step)
            if step.repeat:
                return step
        for stage in self.running:
            stage.advance(step)
        return step

    def watermark(self, partition: int, offset: int, bound: int) -> Step:
        """A source watermark with no records: what it closes."""
        self.restore(partition)
        step = Step(partition, offset, bound=bound, publishes=self.publishes)
        for stage in self.running:
            stage.advance(step)
        return step

    def define(self, partition: int, instrument_id: int, info: OptionInfo | None) -> None:
        """An instrument's definition (options count in their groups from here on)."""
        self.restore(partition)
        self.flow.define(partition, instrument_id, info)
