"""The RocksDB store the tables use: Faust's, with one memory budget for the whole worker.

Faust opens one database per table and partition a worker holds (active or standby: 28 with
7 tables and 4 partitions), each with its own block cache and write buffers. Bounded one by
one, a worker's table memory is still 28 times each bound, and it creeps up in steps for the
better part of an hour as database after database fills its buffers (the soak,
docs/testing-and-benchmarks.md). Here every database of the worker shares one block cache, and
one write buffer manager, charged to that cache, limits all memtables together: RocksDB's
memory is then about `TAPESTREAM_ROCKSDB_CACHE_MB` whatever the number of partitions.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any

import rocksdict
from faust.stores import STORES
from faust.stores.rocksdb import RocksDBOptions
from faust.stores.rocksdb import Store as FaustRocksDBStore

from app import metrics

SCHEME = "tapestream-rocksdb"


@cache
def _shared(cache_bytes: int, memtable_bytes: int) -> tuple[Any, Any]:
    """One cache and one write buffer manager per worker process (per budget)."""
    block_cache = rocksdict.Cache(cache_bytes)
    # allow_stall=False: over budget, RocksDB flushes the largest memtable early rather than
    # stalling the writer, so a commit never waits on the budget.
    manager = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
        memtable_bytes, False, block_cache
    )
    _budgets.append((block_cache, manager))
    return block_cache, manager


_budgets: list[tuple[Any, Any]] = []


def _memory() -> Iterator[tuple[tuple[str], float]]:
    if _budgets:
        yield ("cache",), sum(c.get_usage() for c, _ in _budgets)
        yield ("memtables",), sum(m.get_usage() for _, m in _budgets)


metrics.rocksdb_memory.add_source(_memory)


class SharedBudgetOptions(RocksDBOptions):
    """Faust's options, with the block cache and memtables of all databases on one budget."""

    def __init__(self, *, cache_bytes: int, memtable_bytes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cache_bytes = cache_bytes
        self.memtable_bytes = memtable_bytes

    def as_options(self) -> Any:
        options = super().as_options()
        block_cache, manager = _shared(self.cache_bytes, self.memtable_bytes)
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(self.bloom_filter_size, block_based=True)
        table.set_block_cache(block_cache)
        # Index and filter blocks in the cache, so they count against the budget too.
        table.set_cache_index_and_filter_blocks(True)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(table)
        options.set_write_buffer_manager(manager)
        return options


class Store(FaustRocksDBStore):
    """Faust's RocksDB store (rocksdict), opening its databases with `SharedBudgetOptions`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # What is left in self.options is the table's `options=` (Faust popped its own keys).
        self.rocksdb_options = SharedBudgetOptions(**self.options, use_rocksdict=True)


def store_url(configured: str) -> str:
    """The store URL for a table: the shared-budget store where `rocksdb://` is configured."""
    if not configured.startswith("rocksdb://"):
        return configured
    STORES.aliases.setdefault(SCHEME, f"{__name__}:Store")
    return SCHEME + configured[len("rocksdb") :]
