"""The Faust tables, one per table the stage graph names (pipeline/graph.py). The state they
hold is defined by the plain classes under tables/, which know nothing of Faust."""

from __future__ import annotations

from typing import Any

from app.faust_app import app, settings
from pipeline.graph import tables

# Keys and values are bytes, which Faust stores raw: keys are instrument ids in ASCII (group
# names on `options`), byte for byte the input topic's keys, so a key's changelog partition
# (what web routing computes) is the partition its events arrive on; values are JSON encoded
# by the state classes themselves, which also give the keys (tables/*_state.py).


def _bytes_table(name: str, help: str) -> Any:
    return app.Table(
        name,
        key_type=bytes,
        value_type=bytes,
        partitions=settings.partitions,
        default=None,
        help=help,
        # Compacted by Faust, kept whole: a changelog is the table (docs/topics.md).
        extra_topic_configs={"min.insync.replicas": str(settings.min_insync)},
        options=rocksdb_options(),
    )


def rocksdb_options() -> dict[str, int]:
    """Each database's memtable size and the worker's one budget for RocksDB's memory, read
    by the app's store (app/rocksdb_store.py, named in app/faust_app.py). Faust's defaults
    (three 64 MiB write buffers and a 2 GiB block cache per database) let a worker's RSS grow
    for hours. The tables are small and rewritten in place: their working set fits in a few
    MiB."""
    return {
        "write_buffer_size": settings.rocksdb_write_buffer_mb << 20,
        "max_write_buffer_number": 2,
        "cache_bytes": settings.rocksdb_cache_mb << 20,
        "memtable_bytes": settings.rocksdb_memtables_mb << 20,
    }


TABLES: dict[str, Any] = {name: _bytes_table(name, help) for name, help in tables()}
instrument_stats = TABLES["instrument-stats"]
books = TABLES["books"]
bars = TABLES["bars"]
ifd = TABLES["ifd"]
options = TABLES["options"]
# Not a stage's: the runtime's journal of at_least_once checkpoints (app/checkpoint_journal.py).
journal = _bytes_table(
    "checkpoint-journal", "each partition's last checkpoint, written before its rows"
)
