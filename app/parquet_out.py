"""Commands' output as Parquet (`backfill --format parquet`, `mbp`/`ohlcv --out x.parquet`).

A topic's rows are written as they come, in parts of `PART_ROWS` rows, so memory holds one part,
not the output. Rows of one topic need not all have the same fields (a pressure window's
z-scores appear once a baseline exists), so the parts are joined at the end under the union of
their schemas, one part at a time, into the one file a reader expects. Column types follow the
lake's (docs/lake.md): times as UTC timestamps, prices as fixed-point integers.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from models.mbo import UNDEF_PRICE

COMPRESSION = "zstd"
PART_ROWS = 100_000


class ParquetFile:
    """One output file, written from tables of rows as they come."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.parts_dir = path.parent / f".{path.name}.parts"
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.parts: list[Path] = []
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.pending_rows += table.num_rows
        self.rows += table.num_rows
        if self.pending_rows >= PART_ROWS:
            self._spill()

    def _spill(self) -> None:
        if not self.pending:
            return
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        part = self.parts_dir / f"{len(self.parts):06d}.parquet"
        pq.write_table(
            pa.concat_tables(self.pending, promote_options="permissive"),
            part,
            compression=COMPRESSION,
        )
        self.parts.append(part)
        self.pending, self.pending_rows = [], 0

    def commit(self) -> Path:
        """The parts joined into the file, in place once whole; returns its path."""
        self._spill()
        tmp = self.path.parent / f".{self.path.name}.tmp"
        schemas = [pq.read_schema(p) for p in self.parts]
        schema = (
            pa.unify_schemas(schemas, promote_options="permissive") if schemas else pa.schema([])
        )
        with pq.ParquetWriter(tmp, schema, compression=COMPRESSION) as writer:
            for part in self.parts:
                writer.write_table(_conform(pq.read_table(part), schema))
        tmp.replace(self.path)
        self.abort()
        return self.path

    def abort(self) -> None:
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        self.parts, self.pending = [], []


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The table with the schema's columns, in its order (nulls where it had none)."""
    columns = [
        table[f.name].cast(f.type)
        if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


class ParquetRows:
    """Rows of a CSV command's columns (`mbp`, `ohlcv`) as one Parquet file: columns named
    `ts_*` are UTC timestamps, price columns (`is_price(name)`) fixed-point integers with
    UNDEF_PRICE as null; the rest as they come."""

    def __init__(self, path: Path, columns: list[str], is_price: Callable[[str], bool]) -> None:
        self.file = ParquetFile(path)
        self.columns = columns
        self.prices = {c for c in columns if is_price(c)}
        self.rows: list[list[Any]] = []

    def writerow(self, values: list[Any]) -> None:
        self.rows.append(values)
        if len(self.rows) >= PART_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        cols = {}
        for i, name in enumerate(self.columns):
            values = [r[i] for r in self.rows]
            if name in self.prices:
                values = [None if v == UNDEF_PRICE or v is None else v for v in values]
                cols[name] = pa.array(values, pa.int64())
            elif name.startswith("ts_"):
                cols[name] = pa.array(values, pa.int64()).cast(pa.timestamp("ns", tz="UTC"))
            else:
                cols[name] = pa.array(values)
        self.file.add(pa.table(cols))
        self.rows = []

    def commit(self) -> Path:
        self._flush()
        return self.file.commit()

    def abort(self) -> None:
        self.file.abort()
