"""The state contract (tables/partitioned_state.py) on a small state of its own: what every
per-partition state (bars, flow, deltas, option groups) relies on it for."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tables.partitioned_state import FAST, WIDE, Dirty, PartitionedState, Recent
from tables.state_keys import partition_key


@dataclass
class _Counts:
    counts: dict[str, int] = field(default_factory=dict)
    recent: Recent[str] = field(default_factory=lambda: Recent(2))
    dirty: Dirty = field(default_factory=lambda: Dirty("name"))


class _CountSet(PartitionedState[_Counts]):
    """Counts per name; a count set to 0 is deleted from the table."""

    def fresh(self) -> _Counts:
        return _Counts()

    def restore(self, part: _Counts, record: Any, get: Any) -> None:
        for name in record["names"]:
            part.counts[name] = get(name.encode())

    def changes(self, part: _Counts) -> tuple[list[tuple[bytes, Any]], Any]:
        values = [(n.encode(), part.counts.get(n) or None) for n in part.dirty.items("name")]
        part.counts = {n: c for n, c in part.counts.items() if c}
        return values, {"names": sorted(part.counts)}

    def set(self, partition: int, name: str, count: int) -> None:
        part = self.partitions[partition]
        part.counts[name] = count
        part.dirty.add("name", name)


def _apply(store: dict[bytes, bytes], writes: list[tuple[bytes, bytes | None]]) -> None:
    for key, value in writes:
        if value is None:
            store.pop(key, None)
        else:
            store[key] = value


def test_a_checkpoint_writes_values_then_the_record_then_deletions() -> None:
    """A checkpoint cut short after any write leaves a record whose every key is present."""
    store: dict[bytes, bytes] = {}
    state = _CountSet()
    state.load(3, store.get)
    state.set(3, "a", 1)
    state.set(3, "b", 2)
    _apply(store, state.checkpoint()[3])
    state.set(3, "a", 0)
    state.set(3, "c", 5)
    writes = state.checkpoint()[3]
    assert [k for k, _ in writes] == [b"c", partition_key(3), b"a"]
    assert writes[-1][1] is None
    for cut in range(len(writes) + 1):
        partial = dict(store)
        _apply(partial, writes[:cut])
        again = _CountSet()
        part = again.load(3, partial.get)
        assert None not in part.counts.values()


def test_nothing_changed_writes_nothing_and_a_reload_is_the_same_state() -> None:
    store: dict[bytes, bytes] = {}
    state = _CountSet()
    state.load(0, store.get)
    assert state.checkpoint() == {}  # a fresh part with nothing marked
    state.set(0, "x", 7)
    _apply(store, state.checkpoint()[0])
    assert state.checkpoint() == {}  # marks are cleared by the checkpoint
    again = _CountSet()
    assert again.load(0, store.get).counts == {"x": 7}


def test_touch_writes_only_the_record() -> None:
    state = _CountSet()
    part = state.load(1, {}.get)
    part.dirty.touch()
    assert state.checkpoint() == {1: [(partition_key(1), WIDE.encode({"names": []}))]}


def test_evict_drops_only_the_partitions_held() -> None:
    state = _CountSet()
    state.load(0, {}.get)
    state.load(2, {}.get)
    assert state.evict({1, 2}) == [2]
    assert state.loaded(0) and not state.loaded(2)


def test_the_wide_codec_keeps_integers_past_64_bits() -> None:
    """Window sums of squared sizes pass 2**64; the fast codec would read them back as
    floats."""
    big = {"sum": 2**70 + 1, "nan": float("inf")}
    assert WIDE.decode(WIDE.encode(big)) == big
    assert FAST.decode(FAST.encode({"n": 2**63 - 1})) == {"n": 2**63 - 1}


def test_recent_keeps_the_last_rows_per_key() -> None:
    recent: Recent[str] = Recent(2)
    for i in range(3):
        recent.append("a", {"i": i})
    recent.restore("b", [{"i": 9}])
    assert recent.export("a") == [{"i": 1}, {"i": 2}]
    assert recent.matching("a") == [{"i": 1}, {"i": 2}]
    assert recent.matching("z") == []
    assert recent.matching(None) == [{"i": 1}, {"i": 2}, {"i": 9}]
    assert recent.keys() == {"a", "b"}


def test_dirty_items_come_sorted_and_discard_forgets() -> None:
    dirty = Dirty("k")
    assert not dirty.changed
    for item in (3, 1, 2):
        dirty.add("k", item)
    dirty.discard("k", 2)
    assert dirty.changed and dirty.items("k") == [1, 3]
    dirty.clear()
    assert not dirty.changed and dirty.items("k") == []
