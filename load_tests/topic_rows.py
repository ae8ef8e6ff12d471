"""What a deployment wrote, read back for comparison: every message of a topic, its rows as
canonical JSON (to compare with the file driver's rows), and the rows the Parquet lake holds
per (partition, offset). Used by the integration tests and the chaos run alike."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from app.file_driver import FileRun
from models import book_events
from models.definitions import is_definition
from models.mbo import MBO_SIZE
from pipeline.graph import COLUMNAR

DEFINITION_SIZE = 520


def consume_all(
    bootstrap: str,
    topic: str,
    expect_messages: int | None = None,
    timeout: float = 60,
    isolation: str = "read_committed",
    settle: float = 1.0,
    headers: bool = False,
) -> list[tuple]:
    """(key, value, partition, offset) of every message in a topic, with its headers as a dict
    fifth when `headers`, by plain aiokafka: until
    `expect_messages` have come; or, without it, until every partition is read to its end as
    the broker gives it now (the last stable offset, read_committed) and nothing has come for
    `settle` s, in case a transaction was still being committed; or until `timeout`."""
    from aiokafka import AIOKafkaConsumer

    async def run() -> list[tuple]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level=isolation,
            group_id=None,
        )
        await consumer.start()
        out: list[tuple] = []

        async def at_end() -> bool:
            assigned = list(consumer.assignment())
            if not assigned:  # settled with no partitions: the topic does not exist
                return True
            ends = await consumer.end_offsets(assigned)
            for tp in assigned:
                if await consumer.position(tp) < ends[tp]:
                    return False
            return True

        try:
            deadline = time.monotonic() + timeout
            idle_since = time.monotonic()
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                got = [m for msgs in batch.values() for m in msgs]
                if headers:
                    out.extend(
                        (m.key, m.value, m.partition, m.offset, dict(m.headers or ())) for m in got
                    )
                else:
                    out.extend((m.key, m.value, m.partition, m.offset) for m in got)
                if got:
                    idle_since = time.monotonic()
                if expect_messages is not None:
                    if len(out) >= expect_messages:
                        break
                elif time.monotonic() - idle_since > settle and await at_end():
                    break
        finally:
            await consumer.stop()
        return out

    return asyncio.run(run())


def canon(row: dict[str, Any]) -> bytes:
    return orjson.dumps(row, option=orjson.OPT_SORT_KEYS)


def expected_rows(result: FileRun) -> dict[str, list[bytes]]:
    """Per output topic, the file driver's rows, each as canonical JSON."""
    out = {t: [canon(r) for r in result.topic_rows(t)] for t in result.topics}
    # with the topics it leaves empty (late trades, signals, option groups): so must live
    out.update({t: [canon(r) for r in rows] for t, rows in result.row_topics.items()})
    return out


def live_rows(bootstrap: str, prefix: str, topics: list[str]) -> dict[str, list[bytes]]:
    """Every row of each topic, as canonical JSON, in no particular order; columnar messages
    (book.deltas, bbo, trades) split into rows; source-watermark markers and the wall-clock
    `processing_lag` signals left out."""
    out: dict[str, list[bytes]] = {}
    for topic in topics:
        rows: list[bytes] = []
        for _, value, _, _ in consume_all(bootstrap, f"{prefix}{topic}", timeout=60):
            if not value:
                continue
            message = orjson.loads(value)
            if topic in COLUMNAR:
                rows.extend(canon(r) for r in book_events.rows(message))
            elif message.get("kind") != "processing_lag":
                rows.append(canon(message))
        out[topic] = rows
    return out


def rows_per_message(base: str, value: bytes | None) -> int:
    """The rows one message of topic `base` holds, as the lake counts them."""
    if not value:
        return 0
    if base == "mbo.raw":
        return len(value) // DEFINITION_SIZE if is_definition(value) else len(value) // MBO_SIZE
    if base in COLUMNAR:
        return len(orjson.loads(value)["ts_recv"])
    return 1


def topic_row_counts(bootstrap: str, prefix: str, base: str) -> Counter:
    """(partition, offset) -> rows its message makes, for every message of the topic."""
    out: Counter = Counter()
    for _, value, partition, offset in consume_all(bootstrap, prefix + base, timeout=60):
        n = rows_per_message(base, value)
        if n:
            out[(partition, offset)] = n
    return out


def lake_row_counts(root: Path | str, base: str) -> Counter:
    """(partition, offset) -> rows the lake holds of that message of topic `base`; `root`: a
    directory, or an object store's URI (read through pyarrow's filesystem)."""
    import duckdb

    if isinstance(root, str):
        return _object_store_row_counts(root, base)
    if not list((root / base).rglob("*.parquet")):
        return Counter()
    rows = duckdb.sql(
        f"SELECT kafka_partition, kafka_offset, count(*) FROM read_parquet("
        f"'{root / base}/**/*.parquet', union_by_name=true, hive_partitioning=false) "
        "GROUP BY ALL"
    ).fetchall()
    return Counter({(p, o): n for p, o, n in rows})


def _object_store_row_counts(root: str, base: str) -> Counter:
    import pyarrow.parquet as pq

    from app.lake_files import Lake

    lake = Lake(root, instance="reader")
    out: Counter = Counter()
    for path, _ in lake.files(base):
        cols = pq.read_table(path, filesystem=lake.fs, columns=["kafka_partition", "kafka_offset"])
        pairs = zip(
            cols["kafka_partition"].to_pylist(), cols["kafka_offset"].to_pylist(), strict=True
        )
        out.update(pairs)
    return out
