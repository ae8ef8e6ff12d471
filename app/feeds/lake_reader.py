"""The lake's raw MBO read back as an input (docs/lake.md): `replay`, `backfill`, `mbp` and
`ohlcv` take a lake root, its `mbo.raw` directory or one of its Parquet files wherever they
take an MBO file.

Each partition's files hold its records in offset order, which is the order they were
received in. The partitions are merged by `ts_recv` a chunk at a time, never reordering a
partition's own records (so an instrument's records keep their order), and holding about one
file per partition in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from app.lake_files import parse_name
from models.mbo import MBO_DTYPE, MBO_LENGTH_WORDS, MBO_RTYPE

RAW_DIR = "mbo.raw"
DEFINITION_RTYPE = 0x13


def is_lake(path: Path) -> bool:
    return path.is_dir() and (path.name == RAW_DIR or (path / RAW_DIR).is_dir())


def raw_files(path: Path) -> dict[int, list[Path]]:
    """Partition -> its files in offset order, under a lake root or its raw directory; or the
    one file given."""
    if path.is_file():
        span = parse_name(path.name)
        return {span.partition if span else 0: [path]}
    base = path if path.name == RAW_DIR else path / RAW_DIR
    found: dict[int, list[tuple[int, Path]]] = {}
    for p in base.rglob("*.parquet"):
        span = parse_name(p.name)
        if span is not None:
            found.setdefault(span.partition, []).append((span.first, p))
    return {part: [p for _, p in sorted(files)] for part, files in sorted(found.items())}


def to_records(table: pa.Table) -> np.ndarray:
    """The MBO rows of a lake table as DBN MBO records."""
    rtype = table["rtype"].to_numpy()
    table = table.filter(pa.array(rtype == MBO_RTYPE))
    out = np.zeros(table.num_rows, MBO_DTYPE)
    out["length"] = MBO_LENGTH_WORDS
    for name in MBO_DTYPE.names:
        if name == "length":
            continue
        column = table[name]
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.int64())
        if pa.types.is_string(column.type):
            out[name] = np.array(column.to_pylist(), "S1").view("u1")
        else:
            out[name] = column.to_numpy()
    return out


def definitions(path: Path) -> list[bytes]:
    """The DBN v3 definition records the lake holds, in file order (`models.definitions`
    decodes them)."""
    out: list[bytes] = []
    for files in raw_files(path).values():
        for f in files:
            t = pq.read_table(f, columns=["rtype", "definition"])
            mask = pa.array(t["rtype"].to_numpy() == DEFINITION_RTYPE)
            out += t.filter(mask)["definition"].to_pylist()
    return out


def _partition(
    files: list[Path], read: Callable[[int], None]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A partition's records with their merge keys: ts_recv's running maximum, which never
    decreases along the partition, so sorting on it never moves a record past an earlier one
    of its partition (a partition's ts_recv can step back: another feed's clock)."""
    running = 0
    for f in files:
        pf = pq.ParquetFile(f)
        for i in range(pf.num_row_groups):
            records = to_records(pf.read_row_group(i))
            if len(records):
                keys = np.maximum.accumulate(np.maximum(records["ts_recv"], running))
                running = int(keys[-1])
                yield records, keys
        read(f.stat().st_size)


def lake_chunks(
    path: Path, chunk_records: int, read: Callable[[int], None] = lambda size: None
) -> Iterator[np.ndarray]:
    """Every partition's records merged by ts_recv, in chunks of about `chunk_records`;
    `read(bytes)` as each file is done with (progress)."""
    streams = [_partition(files, read) for files in raw_files(path).values()]
    heads: list[Any] = [next(s, None) for s in streams]
    while any(h is not None for h in heads):
        live = [i for i, h in enumerate(heads) if h is not None]
        # Nothing a partition still holds sorts before what every partition has read up to:
        # each partition's records up to that bound can go.
        bound = min(int(heads[i][1][-1]) for i in live)
        records, keys = [], []
        for i in live:
            r, k = heads[i]
            cut = int(np.searchsorted(k, bound, side="right"))
            records.append(r[:cut])
            keys.append(k[:cut])
            heads[i] = (r[cut:], k[cut:]) if cut < len(r) else next(streams[i], None)
        order = np.argsort(np.concatenate(keys), kind="stable")
        merged = np.concatenate(records)[order]
        for at in range(0, len(merged), chunk_records):
            yield merged[at : at + chunk_records]
