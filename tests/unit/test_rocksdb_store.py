from __future__ import annotations

from pathlib import Path

from faust.stores import by_url

from app import rocksdb_store
from app.rocksdb_store import SharedBudgetOptions, Store, store_url

MiB = 1 << 20


def _options() -> SharedBudgetOptions:
    return SharedBudgetOptions(
        cache_bytes=16 * MiB,
        memtable_bytes=8 * MiB,
        write_buffer_size=1 * MiB,
        max_write_buffer_number=2,
        use_rocksdict=True,
    )


def test_rocksdb_is_served_by_the_shared_budget_store() -> None:
    url = store_url("rocksdb://")
    assert url == "tapestream-rocksdb://"
    assert by_url(url) is Store
    assert store_url("memory://") == "memory://"


def test_databases_share_one_cache_and_write_buffer_manager() -> None:
    # One budget per worker: the same objects whatever the number of databases.
    assert rocksdb_store._shared(16 * MiB, 8 * MiB) == rocksdb_store._shared(16 * MiB, 8 * MiB)


def test_databases_on_the_shared_budget_keep_their_data(tmp_path: Path) -> None:
    options = _options()
    payload = b"x" * 4096
    dbs = [options.open(tmp_path / f"db{i}") for i in range(3)]
    # More than the whole memtable budget: flushes happen, nothing is lost.
    for n in range(3000):
        for i, db in enumerate(dbs):
            db[f"{n:06d}".encode()] = payload + bytes([i])
    for i, db in enumerate(dbs):
        assert db[b"000000"] == payload + bytes([i])
        assert db[b"002999"] == payload + bytes([i])
        db.close()
    reopened = options.open(tmp_path / "db1")
    assert len(list(reopened.keys())) == 3000
    reopened.close()


def test_the_budget_in_use_is_a_metric(tmp_path: Path) -> None:
    from prometheus_client import REGISTRY

    def used(part: str) -> float:
        value = REGISTRY.get_sample_value("tapestream_rocksdb_memory_bytes", {"part": part})
        assert value is not None, part
        return value

    db = _options().open(tmp_path / "db")
    for n in range(200):
        db[f"{n:06d}".encode()] = b"x" * 4096
    # The memtables hold what was written and are charged to the one cache.
    assert used("memtables") > 0
    assert used("cache") >= used("memtables")
    db.close()


def test_the_worker_s_tables_open_the_shared_budget_store() -> None:
    # The app's store names it: Faust passes over a table's own store URL when it is falsy,
    # as yarl's URL of "tapestream-rocksdb://" is.
    import app as _registers_the_tables  # noqa: F401
    from app.faust_app import app, settings

    if not settings.store.startswith("rocksdb://"):
        return
    assert app.tables
    for name, table in app.tables.items():
        assert type(table.data) is Store, name
