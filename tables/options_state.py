"""Options aggregation per aggregating partition, as checkpointed state (tables/options.py
says what is aggregated and when). No Faust here: the options agent drives `OptionsSet` with the
parts and watermarks it reads and writes what `checkpoint()` returns to the `options` table.

Table keys (bytes; values JSON via the standard json module, since sums can pass 64 bits):
  b"<group>"                   pending windows' parts, cooldowns, buckets, venue publisher
  b"<group>/baseline/<bucket>" the bucket's last sessions
  b"<group>/signals"           the group's last `keep` signals (what /options/ serves)
  b"~partition/<p>"            the sources' watermarks, what is published, the groups
"""

from __future__ import annotations

import json
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from tables.ifd import IfdConfig
from tables.options import OPTIONS_PRESSURE, OptionsAggregator, Row, current_sums
from tables.partitioned_state import PartitionedState
from tables.signals import SignalConfig
from tables.state_keys import group_baseline_key, group_key, group_signals_key, partition_key

Get = Callable[[bytes], bytes | None]


@dataclass
class _Partition:
    agg: OptionsAggregator
    recent: dict[str, deque[dict[str, Any]]] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    dirty_baselines: set[tuple[str, int]] = field(default_factory=set)
    dirty_signals: set[str] = field(default_factory=set)
    changed: bool = False


class OptionsSet(PartitionedState[_Partition]):
    """Every aggregating partition's `OptionsAggregator`, checkpointed to the `options` table
    (keys: tables/state_keys.py)."""

    def __init__(self, config: IfdConfig, sources: int, keep: int = 200) -> None:
        self.config = config
        self.sources = sources
        self.keep = keep
        self.partitions: dict[int, _Partition] = {}

    def set_signal_config(self, signal: SignalConfig) -> None:
        """New thresholds for group windows scored from now on (runtime configuration)."""
        self.config = replace(self.config, signal=signal)
        for part in self.partitions.values():
            part.agg.signals.config = signal

    def load(self, partition: int, get: Get) -> OptionsAggregator:
        agg = OptionsAggregator(self.config, self.sources)
        part = self.partitions[partition] = _Partition(agg)
        raw = get(partition_key(partition))
        if raw is None:
            return agg
        meta = json.loads(raw)
        agg.watermarks = {int(s): wm for s, wm in meta["watermarks"].items()}
        agg.closed_through = meta["closed_through"]
        agg.repeats = meta["repeats"]
        for group in meta["groups"]:
            saved = get(group_key(group))
            if saved is not None:
                state = json.loads(saved)
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
                        agg.signals.baselines.restore(group, bucket, json.loads(rows))  # type: ignore[arg-type]
            sig = get(group_signals_key(group))
            if sig is not None:
                part.recent[group] = deque(json.loads(sig), maxlen=self.keep)
        return agg

    def add(
        self, partition: int, group: str, start: int, iid: int, publisher: int | None, sums: list
    ) -> bool:
        p = self.partitions[partition]
        p.changed = True
        if not p.agg.add(group, start, iid, publisher, sums):
            return False
        p.dirty.add(group)
        return True

    def add_baseline(
        self, partition: int, group: str, bucket: int, rows: list[list[Any]], publisher: int | None
    ) -> None:
        """A group bucket's baseline built elsewhere (`faust -A app baselines --load`)."""
        p = self.partitions[partition]
        p.agg.signals.baselines.restore(group, bucket, rows)  # type: ignore[arg-type]
        if publisher is not None:
            p.agg.publishers[group] = publisher
        p.dirty.add(group)
        p.dirty_baselines.add((group, bucket))
        p.changed = True

    def advance(self, partition: int, source: int, watermark: int) -> list[Row]:
        p = self.partitions[partition]
        rows = p.agg.advance(source, watermark)
        p.changed = True
        for topic, row in rows:
            group = row["group"]
            p.dirty.add(group)
            if topic == OPTIONS_PRESSURE:
                p.dirty_baselines.add((group, row["bucket"]))
            else:
                recent = p.recent.get(group)
                if recent is None:
                    recent = p.recent[group] = deque(maxlen=self.keep)
                recent.append(row)
                p.dirty_signals.add(group)
        return rows

    def recent_signals(self, group: str | None) -> list[dict[str, Any]]:
        return [
            s
            for p in self.partitions.values()
            for g, sigs in p.recent.items()
            if group is None or g == group
            for s in sigs
        ]

    def checkpoint(self) -> dict[int, list[tuple[bytes, bytes | None]]]:
        out: dict[int, list[tuple[bytes, bytes | None]]] = {}
        for n, p in self.partitions.items():
            if not p.changed:
                continue
            agg, rows = p.agg, []
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
            for group in sorted(p.dirty):
                state = {
                    "pending": pending.get(group, []),
                    "publisher": agg.publishers.get(group),
                    "cooldown": cooldowns.get(group, {}),
                    "buckets": sorted(buckets.get(group, [])),
                }
                rows.append((group_key(group), json.dumps(state).encode()))
            for group, bucket in sorted(p.dirty_baselines):
                data = agg.signals.baselines.export(group, bucket)  # type: ignore[arg-type]
                rows.append((group_baseline_key(group, bucket), json.dumps(data).encode()))
            for group in sorted(p.dirty_signals):
                rows.append((group_signals_key(group), json.dumps(list(p.recent[group])).encode()))
            meta = {
                "watermarks": {str(s): wm for s, wm in sorted(agg.watermarks.items())},
                "closed_through": agg.closed_through,
                "repeats": agg.repeats,
                "groups": sorted(agg.groups() | set(p.recent)),
            }
            rows.append((partition_key(n), json.dumps(meta).encode()))
            out[n] = rows
            p.dirty.clear()
            p.dirty_baselines.clear()
            p.dirty_signals.clear()
            p.changed = False
        return out
