"""What every state kept per input partition shares (bars, flow detection, option groups, the
delta merge): its partitions loaded when their first message comes and dropped when they go to
another worker, and the table key of a partition's own record (watermark, late count, last
input offset, instruments)."""

from __future__ import annotations

from typing import Generic, TypeVar

P = TypeVar("P")


class PartitionedState(Generic[P]):
    """State kept per input partition: loaded when the partition's first message comes,
    dropped when the partition goes to another worker."""

    partitions: dict[int, P]

    def loaded(self, partition: int) -> bool:
        return partition in self.partitions

    def evict(self, partitions: set[int]) -> list[int]:
        gone = [p for p in partitions if p in self.partitions]
        for p in gone:
            del self.partitions[p]
        return gone
