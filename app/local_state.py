"""Whether a worker may trust the table state it left on local disk.

Table writes reach RocksDB as they are made, before the transaction that carries them to the
changelog commits. Under exactly_once a worker killed (or whose commit failed) between the two
leaves local state holding writes the broker aborted; keeping it would restore books that never
committed and skip, as already applied, input whose outputs were aborted. So, as Kafka Streams
does under exactly-once, local state survives only a clean stop: the worker marks the directory
clean as its last act, unmarks it when it starts, and under exactly_once wipes the tables of a
directory left unmarked. They are then restored from their changelogs, which hold only committed
writes (the worker reads them read_committed). Under at_least_once local state is always kept:
a checkpoint's outputs are flushed before it is written, so state ahead of the changelog only
makes redelivered input be skipped, never an output lost.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

CLEAN_MARK = "clean-stop"


def open_local_state(tabledir: Path, exactly_once: bool) -> bool:
    """Call as a worker starts, before any table opens. Returns whether the tables were wiped."""
    mark = tabledir / CLEAN_MARK
    clean = mark.exists()
    mark.unlink(missing_ok=True)
    stores = [p for p in tabledir.iterdir() if p.name != CLEAN_MARK] if tabledir.is_dir() else []
    if clean or not exactly_once or not stores:
        return False
    log.warning(
        "local table state in %s was not left by a clean stop; under exactly_once it may hold "
        "aborted writes, so it is wiped and the tables are restored from their changelogs",
        tabledir,
    )
    for p in stores:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    return True


def mark_clean(tabledir: Path) -> None:
    """Call after the worker has stopped without a crash: its last commit covers its state."""
    tabledir.mkdir(parents=True, exist_ok=True)
    (tabledir / CLEAN_MARK).touch()
