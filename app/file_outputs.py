"""Where backfill's output goes: to JSON-lines or Parquet files as it is made (the command), into
memory (tests and callers that read the result), or nowhere (baselines, which keeps only the
final state).

Columnar messages (book.deltas, bbo, trades: models/book_events.py) are written one row per
line, like every other topic's rows. Files are written as `<name>.part` and renamed into place
only when the whole run succeeded (`commit`); a failed run leaves none (`abort`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, Protocol

import orjson
import pyarrow as pa

from app.lake_rows import columnar_columns, rows_table
from app.parquet_out import ParquetFile
from models import book_events


class Outputs(Protocol):
    def counts(self) -> dict[str, int]:
        """Rows so far, per topic."""
        ...

    def declare(self, topic: str, columnar: bool = False) -> None:
        """A topic whose output exists even if it gets no row; `columnar`: its rows come in
        columnar messages."""
        ...

    def message(self, topic: str, message: dict[str, Any]) -> None:
        """A columnar message (one array per field, one element per row)."""
        ...

    def row(self, topic: str, row: dict[str, Any]) -> None: ...


class MemoryOutputs:
    """Everything kept: columnar messages as made, other topics' rows."""

    def __init__(self) -> None:
        self.topics: dict[str, list[dict[str, Any]]] = {}
        self.row_topics: dict[str, list[dict[str, Any]]] = {}

    def declare(self, topic: str, columnar: bool = False) -> None:
        (self.topics if columnar else self.row_topics).setdefault(topic, [])

    def message(self, topic: str, message: dict[str, Any]) -> None:
        self.topics.setdefault(topic, []).append(message)

    def row(self, topic: str, row: dict[str, Any]) -> None:
        self.row_topics.setdefault(topic, []).append(row)

    def counts(self) -> dict[str, int]:
        return {
            **{k: sum(len(m["event"]) for m in v) for k, v in self.topics.items()},
            **{k: len(v) for k, v in self.row_topics.items()},
        }


class DiscardOutputs:
    """Rows counted, nothing kept or written."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}

    def declare(self, topic: str, columnar: bool = False) -> None:
        self.rows.setdefault(topic, 0)

    def message(self, topic: str, message: dict[str, Any]) -> None:
        self.rows[topic] = self.rows.get(topic, 0) + len(message["event"])

    def row(self, topic: str, row: dict[str, Any]) -> None:
        self.rows[topic] = self.rows.get(topic, 0) + 1

    def counts(self) -> dict[str, int]:
        return dict(self.rows)


class FileOutputs:
    """Each topic as `<topic>.jsonl` in `out_dir`, written as rows are made: memory holds the
    state, not the output."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.files: dict[str, IO[bytes]] = {}
        self.rows: dict[str, int] = {}
        self.committed: list[Path] = []

    def _file(self, name: str) -> IO[bytes]:
        fh = self.files.get(name)
        if fh is None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            fh = self.files[name] = open(self._part(name), "wb")  # noqa: SIM115 (closed in commit)
            self.rows.setdefault(name, 0)
        return fh

    def _part(self, name: str) -> Path:
        return self.out_dir / f"{name}.part"

    def declare(self, topic: str, columnar: bool = False) -> None:
        self._file(f"{topic}.jsonl")

    def message(self, topic: str, message: dict[str, Any]) -> None:
        self.write(f"{topic}.jsonl", book_events.rows(message))

    def row(self, topic: str, row: dict[str, Any]) -> None:
        self.write(f"{topic}.jsonl", (row,))

    def write(self, name: str, rows: Iterable[dict[str, Any]]) -> None:
        fh = self._file(name)
        n = 0
        for row in rows:
            fh.write(orjson.dumps(row))
            fh.write(b"\n")
            n += 1
        self.rows[name] += n

    def counts(self) -> dict[str, int]:
        return {name.removesuffix(".jsonl"): n for name, n in self.rows.items()}

    def table(self, table: str, rows: Iterable[dict[str, Any]]) -> None:
        """A table's final state, one row per key."""
        self.write(f"{table}.table.jsonl", rows)

    def commit(self) -> list[Path]:
        """Every file into place; returns their paths."""
        for fh in self.files.values():
            fh.close()
        for name in self.files:
            path = self.out_dir / name
            self._part(name).replace(path)
            self.committed.append(path)
        self.files.clear()
        return list(self.committed)

    def abort(self) -> None:
        """Every file written so far removed, final or not: a run that failed leaves none."""
        for name, fh in self.files.items():
            with contextlib.suppress(OSError):
                fh.close()
            self._part(name).unlink(missing_ok=True)
        for path in self.committed:
            path.unlink(missing_ok=True)
        self.files.clear()


class ParquetOutputs:
    """Each topic as `<topic>.parquet` in `out_dir`, with the lake's column types (docs/lake.md),
    written in parts as rows are made and joined into place when the whole run succeeded."""

    BATCH_ROWS = 10_000

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.files: dict[str, ParquetFile] = {}
        self.pending: dict[str, list[dict[str, Any]]] = {}
        self.committed: list[Path] = []

    def _file(self, name: str) -> ParquetFile:
        f = self.files.get(name)
        if f is None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            f = self.files[name] = ParquetFile(self.out_dir / name)
        return f

    def declare(self, topic: str, columnar: bool = False) -> None:
        self._file(f"{topic}.parquet")

    def message(self, topic: str, message: dict[str, Any]) -> None:
        self._file(f"{topic}.parquet").add(pa.table(columnar_columns(message)))

    def row(self, topic: str, row: dict[str, Any]) -> None:
        self.write(f"{topic}.parquet", (row,))

    def table(self, table: str, rows: Iterable[dict[str, Any]]) -> None:
        self.write(f"{table}.table.parquet", rows)

    def write(self, name: str, rows: Iterable[dict[str, Any]]) -> None:
        self._file(name)
        pending = self.pending.setdefault(name, [])
        pending.extend(rows)
        if len(pending) >= self.BATCH_ROWS:
            self._flush(name)

    def _flush(self, name: str) -> None:
        rows = self.pending.pop(name, [])
        if rows:
            self.files[name].add(rows_table(rows))

    def counts(self) -> dict[str, int]:
        return {
            name.removesuffix(".parquet"): f.rows + len(self.pending.get(name, ()))
            for name, f in self.files.items()
        }

    def commit(self) -> list[Path]:
        for name in list(self.pending):
            self._flush(name)
        for f in self.files.values():
            self.committed.append(f.commit())
        self.files.clear()
        return list(self.committed)

    def abort(self) -> None:
        for f in self.files.values():
            f.abort()
        for path in self.committed:
            path.unlink(missing_ok=True)
        self.files.clear()
