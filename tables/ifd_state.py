"""Institutional flow detection per partition, as checkpointed state. No Faust here: the flow
stage (pipeline/stages.py) drives `IfdSet` with what the books stage published for each raw
message (the IFD needs the trades and the top of book in the book's own order), and the runtime
writes what `checkpoint()` returns to the `ifd` table.

Table keys: tables/state_keys.py (`ifd`); loading, dirty tracking and the checkpoint's writes:
tables/partitioned_state.py (values in its `WIDE` codec: window sums can pass 64 bits).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from models.mbo import instrument_key
from tables.ifd import PRESSURE, SIGNALS, IfdConfig, IfdStage
from tables.options import OptionInfo
from tables.partitioned_state import Dirty, PartitionedState, Recent
from tables.pressure import FlowState
from tables.signals import SignalConfig
from tables.state_keys import baseline_key, signals_key

Row = tuple[str, dict[str, Any]]


@dataclass
class IfdPartition:
    stage: IfdStage
    recent: Recent[int]  # instrument -> the last signals
    dirty: Dirty = field(default_factory=lambda: Dirty("instrument", "baseline", "signals"))


class IfdSet(PartitionedState[IfdPartition]):
    def __init__(self, config: IfdConfig, keep: int = 200) -> None:
        super().__init__()
        self.config = config
        self.keep = keep

    def set_signal_config(self, signal: SignalConfig) -> None:
        """New thresholds for windows scored from now on (runtime configuration)."""
        self.config = replace(self.config, signal=signal)
        for part in self.parts():
            part.stage.signals.config = signal

    def fresh(self) -> IfdPartition:
        return IfdPartition(IfdStage(self.config), Recent(self.keep))

    def restore(self, part: IfdPartition, record: Any, get: Callable[[bytes], Any]) -> None:
        stage = part.stage
        stage.pressure.watermark = record["watermark"]
        stage.pressure.late_count = record["late"]
        for iid in record["instruments"]:
            state = get(instrument_key(iid))
            if state is not None:
                stage.flows[iid] = FlowState.restore(state["flow"])
                if state.get("publisher") is not None:
                    stage.publishers[iid] = state["publisher"]
                if state.get("option") is not None:
                    stage.options[iid] = OptionInfo(*state["option"])
                stage.pressure.restore(iid, state["windows"])
                for direction, start in state["cooldown"].items():
                    stage.signals.last_signal[(iid, direction)] = start
                for bucket in state["buckets"]:
                    rows = get(baseline_key(iid, bucket))
                    if rows is not None:
                        stage.signals.baselines.restore(iid, bucket, rows)
            sig = get(signals_key(iid))
            if sig is not None:
                part.recent.restore(iid, sig)

    def add(
        self,
        partition: int,
        instrument_id: int,
        trades: np.ndarray,
        events: np.ndarray,
        bbo: dict[str, Any] | None,
    ) -> None:
        part = self.partitions[partition]
        part.stage.add(instrument_id, trades, events, bbo)
        part.dirty.add("instrument", instrument_id)

    def define(self, partition: int, instrument_id: int, info: OptionInfo | None) -> None:
        """An instrument definition came through this partition (IfdStage.define)."""
        part = self.partitions[partition]
        part.stage.define(instrument_id, info)
        part.dirty.add("instrument", instrument_id)

    def add_baseline(
        self, partition: int, instrument_id: int, bucket: int, rows: list[list[Any]]
    ) -> None:
        """A bucket's baseline built elsewhere (`faust -A app baselines --load`), written with
        the next checkpoint as the workers would have written it."""
        part = self.partitions[partition]
        part.stage.signals.baselines.restore(instrument_id, bucket, rows)
        part.dirty.add("instrument", instrument_id)
        part.dirty.add("baseline", (instrument_id, bucket))

    def take_option_parts(self, partition: int) -> list[list[Any]]:
        return self.partitions[partition].stage.take_option_parts()

    def watermark(self, partition: int) -> int | None:
        """The partition's pressure watermark: its windows ending at or before it are closed."""
        return self.partitions[partition].stage.pressure.watermark

    def add_book_output(
        self, partition: int, instrument_id: int, messages: dict[str, dict]
    ) -> None:
        """What the books published for one message of this partition (IfdStage says more)."""
        part = self.partitions[partition]
        if part.stage.add_book_output(instrument_id, messages):
            part.dirty.add("instrument", instrument_id)

    def advance(self, partition: int, received_through: int) -> list[Row]:
        part = self.partitions[partition]
        rows = part.stage.advance(received_through)
        for topic, row in rows:
            iid = row["instrument_id"]
            part.dirty.add("instrument", iid)
            if topic == PRESSURE:
                part.dirty.add("baseline", (iid, row["bucket"]))
            elif topic == SIGNALS:
                part.recent.append(iid, row)
                part.dirty.add("signals", iid)
        return rows

    def recent_signals(self, instrument_id: int | None) -> list[dict[str, Any]]:
        return [s for part in self.parts() for s in part.recent.matching(instrument_id)]

    def changes(self, part: IfdPartition) -> tuple[list[tuple[bytes, Any]], Any]:
        stage = part.stage
        buckets: dict[int, list[int]] = {}
        for iid, bucket in stage.signals.baselines.buckets():
            buckets.setdefault(iid, []).append(bucket)
        values: list[tuple[bytes, Any]] = []
        for iid in part.dirty.items("instrument"):
            flow = stage.flows.get(iid)
            state = {
                "flow": flow.export() if flow is not None else [None, None, 0],
                "windows": stage.pressure.export(iid),
                "cooldown": {
                    d: start for (i, d), start in stage.signals.last_signal.items() if i == iid
                },
                "buckets": sorted(buckets.get(iid, [])),
                "publisher": stage.publishers.get(iid),
                "option": opt.export() if (opt := stage.options.get(iid)) else None,
            }
            values.append((instrument_key(iid), state))
        for iid, bucket in part.dirty.items("baseline"):
            values.append((baseline_key(iid, bucket), stage.signals.baselines.export(iid, bucket)))
        for iid in part.dirty.items("signals"):
            values.append((signals_key(iid), part.recent.export(iid)))
        record = {
            "watermark": stage.pressure.watermark,
            "late": stage.pressure.late_count,
            "instruments": sorted(set(stage.flows) | set(buckets) | set(stage.options)),
        }
        return values, record
