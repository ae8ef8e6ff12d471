"""Options aggregation per aggregating partition, as checkpointed state (tables/options.py
says what is aggregated and when). No Faust here: the options agent drives `OptionsSet` with the
parts and watermarks it reads and writes what `checkpoint()` returns to the `options` table.

Table keys: tables/state_keys.py (`options`); loading, dirty tracking and the checkpoint's
writes: tables/partitioned_state.py (values in its `WIDE` codec: sums can pass 64 bits).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from tables.ifd import IfdConfig
from tables.options import OPTIONS_PRESSURE, OptionsAggregator, Row, current_sums
from tables.partitioned_state import Dirty, PartitionedState, Recent
from tables.signals import SignalConfig
from tables.state_keys import group_baseline_key, group_key, group_signals_key


@dataclass
class GroupPartition:
    agg: OptionsAggregator
    recent: Recent[str]  # group -> the last signals
    dirty: Dirty = field(default_factory=lambda: Dirty("group", "baseline", "signals"))


class OptionsSet(PartitionedState[GroupPartition]):
    """Every aggregating partition's `OptionsAggregator`, checkpointed to the `options` table
    (keys: tables/state_keys.py)."""

    def __init__(self, config: IfdConfig, sources: int, keep: int = 200) -> None:
        super().__init__()
        self.config = config
        self.sources = sources
        self.keep = keep

    def set_signal_config(self, signal: SignalConfig) -> None:
        """New thresholds for group windows scored from now on (runtime configuration)."""
        self.config = replace(self.config, signal=signal)
        for part in self.parts():
            part.agg.signals.config = signal

    def fresh(self) -> GroupPartition:
        return GroupPartition(OptionsAggregator(self.config, self.sources), Recent(self.keep))

    def restore(self, part: GroupPartition, record: Any, get: Callable[[bytes], Any]) -> None:
        agg = part.agg
        agg.watermarks = {int(s): wm for s, wm in record["watermarks"].items()}
        agg.closed_through = record["closed_through"]
        agg.repeats = record["repeats"]
        for group in record["groups"]:
            state = get(group_key(group))
            if state is not None:
                for start, members in state["pending"]:
                    agg.pending[(group, start)] = {
                        int(i): current_sums(s) for i, s in members.items()
                    }
                if state["publisher"] is not None:
                    agg.publishers[group] = state["publisher"]
                for direction, start in state["cooldown"].items():
                    agg.signals.last_signal[(group, direction)] = start  # type: ignore[index]
                for bucket in state["buckets"]:
                    rows = get(group_baseline_key(group, bucket))
                    if rows is not None:
                        agg.signals.baselines.restore(group, bucket, rows)  # type: ignore[arg-type]
            sig = get(group_signals_key(group))
            if sig is not None:
                part.recent.restore(group, sig)

    def add(
        self, partition: int, group: str, start: int, iid: int, publisher: int | None, sums: list
    ) -> bool:
        p = self.partitions[partition]
        p.dirty.touch()  # a repeat is counted in the record
        if not p.agg.add(group, start, iid, publisher, sums):
            return False
        p.dirty.add("group", group)
        return True

    def add_baseline(
        self, partition: int, group: str, bucket: int, rows: list[list[Any]], publisher: int | None
    ) -> None:
        """A group bucket's baseline built elsewhere (`faust -A app baselines --load`)."""
        p = self.partitions[partition]
        p.agg.signals.baselines.restore(group, bucket, rows)  # type: ignore[arg-type]
        if publisher is not None:
            p.agg.publishers[group] = publisher
        p.dirty.add("group", group)
        p.dirty.add("baseline", (group, bucket))

    def advance(self, partition: int, source: int, watermark: int) -> list[Row]:
        p = self.partitions[partition]
        rows = p.agg.advance(source, watermark)
        p.dirty.touch()
        for topic, row in rows:
            group = row["group"]
            p.dirty.add("group", group)
            if topic == OPTIONS_PRESSURE:
                p.dirty.add("baseline", (group, row["bucket"]))
            else:
                p.recent.append(group, row)
                p.dirty.add("signals", group)
        return rows

    def recent_signals(self, group: str | None) -> list[dict[str, Any]]:
        return [s for p in self.parts() for s in p.recent.matching(group)]

    def changes(self, part: GroupPartition) -> tuple[list[tuple[bytes, Any]], Any]:
        agg = part.agg
        # one pass over each index, not one per group: a chain can have thousands
        buckets: dict[str, list[int]] = defaultdict(list)
        for group, bucket in agg.signals.baselines.buckets():
            buckets[group].append(bucket)  # type: ignore[index]
        pending: dict[str, list[list[Any]]] = defaultdict(list)
        for (group, start), members in sorted(agg.pending.items()):
            pending[group].append([start, members])
        cooldowns: dict[str, dict[str, int]] = defaultdict(dict)
        for (group, direction), start in agg.signals.last_signal.items():
            cooldowns[group][direction] = start  # type: ignore[index]
        values: list[tuple[bytes, Any]] = []
        for group in part.dirty.items("group"):
            state = {
                "pending": pending.get(group, []),
                "publisher": agg.publishers.get(group),
                "cooldown": cooldowns.get(group, {}),
                "buckets": sorted(buckets.get(group, [])),
            }
            values.append((group_key(group), state))
        for group, bucket in part.dirty.items("baseline"):
            data = agg.signals.baselines.export(group, bucket)  # type: ignore[arg-type]
            values.append((group_baseline_key(group, bucket), data))
        for group in part.dirty.items("signals"):
            values.append((group_signals_key(group), part.recent.export(group)))
        record = {
            "watermarks": {str(s): wm for s, wm in sorted(agg.watermarks.items())},
            "closed_through": agg.closed_through,
            "repeats": agg.repeats,
            "groups": sorted(agg.groups() | part.recent.keys()),
        }
        return values, record
