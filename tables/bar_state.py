"""Bars, indicators and recent bars per partition, as checkpointed state. No Faust here: the bars
stage (pipeline/stages.py) drives `BarSet`, whose `checkpoint()` the runtime writes to the
`bars` table.

Table keys: tables/state_keys.py (`bars`); loading, dirty tracking and the checkpoint's writes:
tables/partitioned_state.py (values in its `WIDE` codec: window sums can pass 64 bits).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.bar_events import INDICATORS, LATE_TRADES, bars_topic
from models.intervals import interval_name, parse_interval
from models.mbo import instrument_key
from tables.bars import Added, Bar, BarEngine
from tables.ifd import SIGNALS
from tables.indicators import Indicators
from tables.partitioned_state import Dirty, PartitionedState, Recent
from tables.patterns import PatternConfig, Patterns
from tables.state_keys import bars_key, patterns_key

Row = tuple[str, dict[str, Any]]  # (topic base name, row)


class BarStage:
    """Bars with their indicators and patterns: trades in, rows for `bars.<iv>`, `indicators`,
    `signals` (patterns) and `trades.late` out."""

    def __init__(
        self, intervals_ns: list[int], lateness_ns: int, patterns: PatternConfig | None = None
    ) -> None:
        self.engine = BarEngine(intervals_ns, lateness_ns)
        self.indicators: dict[tuple[int, int], Indicators] = {}
        self.pattern_config = patterns or PatternConfig()
        self.patterns: dict[tuple[int, int], Patterns] = {}

    def add(self, trades: np.ndarray, instrument_id: int | None = None) -> list[Row]:
        """Trades in arrival order, of one instrument or (None) of any; the late ones out."""
        if instrument_id is None:
            added = self.engine.add_stream(trades)
        else:
            added = self.engine.add(instrument_id, trades)
        return [(LATE_TRADES, r) for r in late_rows(added)]

    def advance(self, received_through: int) -> list[Row]:
        """Move the watermark; every bar it closes, each followed by its indicators."""
        self.engine.advance(received_through)
        out: list[Row] = []
        for bar in self.engine.close():
            key = (bar.instrument_id, bar.interval_ns)
            ind = self.indicators.get(key)
            if ind is None:
                ind = self.indicators[key] = Indicators()
            values = ind.add(bar.close)
            out.append((bars_topic(bar.interval_ns), bar.as_dict()))
            out.append((INDICATORS, indicator_row(bar, values)))
            pat = self.patterns.get(key)
            if pat is None:
                pat = self.patterns[key] = Patterns(self.pattern_config)
            out += [(SIGNALS, s) for s in pat.add(bar, values)]
        return out

    def indicator_rows(self) -> list[dict[str, Any]]:
        return [
            {"instrument_id": iid, "interval": interval_name(iv), "bars": ind.count, **ind.values}
            for (iid, iv), ind in sorted(self.indicators.items())
        ]


@dataclass
class BarPartition:
    stage: BarStage
    recent: Recent[tuple[int, int]]  # (instrument, interval) -> the last bars
    signals: Recent[int]  # instrument -> the last pattern signals
    offset: int = -1  # the last input offset applied
    dirty: Dirty = field(default_factory=lambda: Dirty("instrument", "bars", "signals"))

    def instruments(self) -> set[int]:
        return set(self.stage.engine.instruments()) | {iid for iid, _ in self.stage.indicators}


class BarSet(PartitionedState[BarPartition]):
    """Every partition's `BarStage`, with what a checkpoint must write since the last one."""

    def __init__(
        self,
        intervals_ns: list[int],
        lateness_ns: int,
        keep: int = 500,
        patterns: PatternConfig | None = None,
    ) -> None:
        super().__init__()
        self.intervals = sorted(set(intervals_ns))
        self.lateness = lateness_ns
        self.keep = keep
        self.pattern_config = patterns or PatternConfig()

    def set_pattern_config(self, config: PatternConfig) -> None:
        """New pattern thresholds for bars closed from now on (runtime configuration)."""
        self.pattern_config = config
        for part in self.parts():
            part.stage.pattern_config = config
            for pat in part.stage.patterns.values():
                pat.config = config

    def fresh(self) -> BarPartition:
        stage = BarStage(self.intervals, self.lateness, self.pattern_config)
        return BarPartition(stage, Recent(self.keep), Recent(self.keep))

    def restore(self, part: BarPartition, record: Any, get: Callable[[bytes], Any]) -> None:
        engine = part.stage.engine
        engine.watermark = record["watermark"]
        engine.late_count = record["late"]
        part.offset = record["offset"]
        for iid in record["instruments"]:
            saved = get(instrument_key(iid))
            if saved is None:
                continue
            if saved["engine"] is not None:
                engine.restore(iid, saved["engine"])
            for iv_name, ind in saved["indicators"].items():
                iv = parse_interval(iv_name)
                if iv in self.intervals:
                    part.stage.indicators[(iid, iv)] = Indicators.from_dict(ind)
            for iv_name, pat in saved["patterns"].items():
                iv = parse_interval(iv_name)
                if iv in self.intervals:
                    part.stage.patterns[(iid, iv)] = Patterns.from_dict(pat, self.pattern_config)
            sigs = get(patterns_key(iid))
            if sigs is not None:
                part.signals.restore(iid, sigs)
            for iv in self.intervals:
                bars = get(bars_key(iid, iv))
                if bars is not None:
                    part.recent.restore((iid, iv), bars)

    def seen(self, partition: int, offset: int) -> bool:
        return offset <= self.partitions[partition].offset

    def add(self, partition: int, offset: int, instrument_id: int, trades: np.ndarray) -> list[Row]:
        part = self.partitions[partition]
        part.offset = max(part.offset, offset)
        part.dirty.add("instrument", instrument_id)
        return part.stage.add(trades, instrument_id)

    def advance(self, partition: int, offset: int, received_through: int) -> list[Row]:
        part = self.partitions[partition]
        part.offset = max(part.offset, offset)
        part.dirty.touch()
        rows = part.stage.advance(received_through)
        for topic, row in rows:
            if topic == INDICATORS:
                continue
            iid = row["instrument_id"]
            if topic == SIGNALS:
                part.signals.append(iid, row)
                part.dirty.add("signals", iid)
                continue
            key = (iid, parse_interval(row["interval"]))
            part.recent.append(key, row)
            part.dirty.add("instrument", iid)
            part.dirty.add("bars", key)
        return rows

    def recent(self, instrument_id: int, interval_ns: int, limit: int) -> list[dict] | None:
        """The latest bars held in memory, oldest first; None when the instrument's partition
        is not loaded here."""
        for part in self.parts():
            got = part.recent.get((instrument_id, interval_ns))
            if got is not None:
                return list(got)[-limit:]
        return None

    def recent_signals(self, instrument_id: int | None) -> list[dict[str, Any]]:
        return [s for part in self.parts() for s in part.signals.matching(instrument_id)]

    def indicator_values(self, instrument_id: int, interval_ns: int) -> dict[str, Any] | None:
        for part in self.parts():
            ind = part.stage.indicators.get((instrument_id, interval_ns))
            if ind is not None:
                return {"bars": ind.count, **ind.values}
        return None

    def changes(self, part: BarPartition) -> tuple[list[tuple[bytes, Any]], Any]:
        stage = part.stage
        with_windows = set(stage.engine.instruments())
        values: list[tuple[bytes, Any]] = []
        for iid in part.dirty.items("instrument"):
            state = {
                "engine": stage.engine.export(iid) if iid in with_windows else None,
                "indicators": {
                    interval_name(iv): ind.to_dict()
                    for (i, iv), ind in stage.indicators.items()
                    if i == iid
                },
                "patterns": {
                    interval_name(iv): pat.to_dict()
                    for (i, iv), pat in stage.patterns.items()
                    if i == iid
                },
            }
            values.append((instrument_key(iid), state))
        for iid, iv in part.dirty.items("bars"):
            values.append((bars_key(iid, iv), part.recent.export((iid, iv))))
        for iid in part.dirty.items("signals"):
            values.append((patterns_key(iid), part.signals.export(iid)))
        record = {
            "watermark": stage.engine.watermark,
            "late": stage.engine.late_count,
            "offset": part.offset,
            "instruments": sorted(part.instruments()),
        }
        return values, record


def indicator_row(bar: Bar, values: dict[str, float | None]) -> dict[str, Any]:
    return {
        "instrument_id": bar.instrument_id,
        "interval": interval_name(bar.interval_ns),
        "start": bar.start,
        **values,
    }


def late_rows(added: Added) -> list[dict[str, Any]]:
    t = added.late
    if not len(t):
        return []
    cols = {
        name: t[name].astype(np.int64).tolist()
        for name in (
            "instrument_id",
            "publisher_id",
            "ts_event",
            "ts_recv",
            "sequence",
            "price",
            "size",
        )
    }
    sides = t["side"].astype(np.uint8).tobytes().decode("ascii")
    return [
        {
            "interval": interval_name(int(iv)),
            **{k: v[i] for k, v in cols.items()},
            "side": sides[i],
        }
        for i, iv in enumerate(added.late_intervals.tolist())
    ]
