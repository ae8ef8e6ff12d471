"""Institutional flow detection per partition, as checkpointed state. No Faust here: the flow
stage (pipeline/stages.py) drives `IfdSet` with what the books stage published for each raw
message (the IFD needs the trades and the top of book in the book's own order), and the runtime
writes what `checkpoint()` returns to the `ifd` table.

Table keys: tables/state_keys.py (`ifd`). Values are JSON via the standard json module,
since window sums can pass 64 bits.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from models.mbo import instrument_key
from tables.ifd import PRESSURE, SIGNALS, IfdConfig, IfdStage
from tables.options import OptionInfo
from tables.partitioned_state import PartitionedState
from tables.pressure import FlowState
from tables.signals import SignalConfig
from tables.state_keys import baseline_key, partition_key, signals_key

Row = tuple[str, dict[str, Any]]


@dataclass
class IfdPartition:
    stage: IfdStage
    keep: int
    recent: dict[int, deque[dict[str, Any]]] = field(default_factory=dict)
    dirty: set[int] = field(default_factory=set)
    dirty_baselines: set[tuple[int, int]] = field(default_factory=set)
    dirty_signals: set[int] = field(default_factory=set)
    changed: bool = False


class IfdSet(PartitionedState["IfdPartition"]):
    def __init__(self, config: IfdConfig, keep: int = 200) -> None:
        self.config = config
        self.keep = keep
        self.partitions: dict[int, IfdPartition] = {}

    def set_signal_config(self, signal: SignalConfig) -> None:
        """New thresholds for windows scored from now on (runtime configuration)."""
        self.config = replace(self.config, signal=signal)
        for part in self.partitions.values():
            part.stage.signals.config = signal

    def load(self, partition: int, get: Callable[[bytes], bytes | None]) -> IfdPartition:
        part = IfdPartition(IfdStage(self.config), self.keep)
        raw = get(partition_key(partition))
        if raw is not None:
            meta = json.loads(raw)
            stage = part.stage
            stage.pressure.watermark = meta["watermark"]
            stage.pressure.late_count = meta["late"]
            for iid in meta["instruments"]:
                saved = get(instrument_key(iid))
                if saved is not None:
                    state = json.loads(saved)
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
                            stage.signals.baselines.restore(iid, bucket, json.loads(rows))
                sig = get(signals_key(iid))
                if sig is not None:
                    part.recent[iid] = deque(json.loads(sig), maxlen=self.keep)
        self.partitions[partition] = part
        return part

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
        part.dirty.add(instrument_id)
        part.changed = True

    def define(self, partition: int, instrument_id: int, info: OptionInfo | None) -> None:
        """An instrument definition came through this partition (IfdStage.define)."""
        part = self.partitions[partition]
        part.stage.define(instrument_id, info)
        part.dirty.add(instrument_id)
        part.changed = True

    def add_baseline(
        self, partition: int, instrument_id: int, bucket: int, rows: list[list[Any]]
    ) -> None:
        """A bucket's baseline built elsewhere (`faust -A app baselines --load`), written with
        the next checkpoint as the workers would have written it."""
        part = self.partitions[partition]
        part.stage.signals.baselines.restore(instrument_id, bucket, rows)
        part.dirty.add(instrument_id)
        part.dirty_baselines.add((instrument_id, bucket))
        part.changed = True

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
            part.dirty.add(instrument_id)
            part.changed = True

    def advance(self, partition: int, received_through: int) -> list[Row]:
        part = self.partitions[partition]
        rows = part.stage.advance(received_through)
        if rows:
            part.changed = True
        for topic, row in rows:
            iid = row["instrument_id"]
            part.dirty.add(iid)
            if topic == PRESSURE:
                part.dirty_baselines.add((iid, row["bucket"]))
            elif topic == SIGNALS:
                recent = part.recent.get(iid)
                if recent is None:
                    recent = part.recent[iid] = deque(maxlen=self.keep)
                recent.append(row)
                part.dirty_signals.add(iid)
        return rows

    def recent_signals(self, instrument_id: int | None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for part in self.partitions.values():
            for iid, sigs in part.recent.items():
                if instrument_id is None or iid == instrument_id:
                    out.extend(sigs)
        return out

    def checkpoint(self) -> dict[int, list[tuple[bytes, bytes | None]]]:
        out: dict[int, list[tuple[bytes, bytes | None]]] = {}
        for p, part in self.partitions.items():
            if not part.changed:
                continue
            stage = part.stage
            buckets: dict[int, list[int]] = {}
            for iid, bucket in stage.signals.baselines.buckets():
                buckets.setdefault(iid, []).append(bucket)
            rows: list[tuple[bytes, bytes | None]] = []
            for iid in sorted(part.dirty):
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
                rows.append((instrument_key(iid), json.dumps(state).encode()))
            for iid, bucket in sorted(part.dirty_baselines):
                data = stage.signals.baselines.export(iid, bucket)
                rows.append((baseline_key(iid, bucket), json.dumps(data).encode()))
            for iid in sorted(part.dirty_signals):
                rows.append((signals_key(iid), json.dumps(list(part.recent[iid])).encode()))
            instruments = set(stage.flows) | set(buckets) | set(stage.options)
            meta = {
                "watermark": stage.pressure.watermark,
                "late": stage.pressure.late_count,
                "instruments": sorted(instruments),
            }
            rows.append((partition_key(p), json.dumps(meta).encode()))
            out[p] = rows
            part.dirty.clear()
            part.dirty_baselines.clear()
            part.dirty_signals.clear()
            part.changed = False
        return out
