"""Topic messages as typed Arrow columns, for the lake (app/lake_sink.py).

Three kinds of topic, three layouts (docs/lake.md lists the columns):

- the raw MBO topic: one row per DBN record, every `MboMsg` field in its own column, `action`
  and `side` as one-character strings; an instrument definition is a row with `rtype` 19, its
  header fields, and the whole DBN v3 record in `definition` (null on MBO rows); watermark
  markers carry no record and leave no row;
- the columnar topics (`book.deltas`, `bbo`, `trades`): one row per element of the message's
  arrays, the instrument id repeated;
- the JSON row topics (bars, indicators, pressure, signals, deltas, options...): one row per
  message, nested objects as Arrow structs and lists.

Prices stay fixed-point integers in units of 1e-9, as on the topics (UNDEF_PRICE marks an empty
side). Integer times named in TIME_COLUMNS become UTC timestamps in ns. Every row also carries
where it came from: `kafka_partition` and `kafka_offset`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from models.definitions import DEFINITION_RTYPE, is_definition
from models.mbo import MBO_DTYPE, MBO_SIZE

TIME_COLUMNS = frozenset({"ts_event", "ts_recv", "start", "end"})
NS_PER_HOUR = 3_600 * 1_000_000_000
_TIMESTAMP = pa.timestamp("ns", tz="UTC")
_MBO_FIELDS = [f for f in MBO_DTYPE.names if f != "length"]
_CODES = {"action", "side"}


class BadMessage(ValueError):
    """A message that is not of its topic's layout."""


def _timestamps(name: str, column: pa.Array) -> pa.Array:
    if name in TIME_COLUMNS and pa.types.is_integer(column.type):
        return column.cast(pa.int64()).cast(_TIMESTAMP)
    return column


def _origin(n: int, partition: int, offset: int) -> dict[str, pa.Array]:
    return {
        "kafka_partition": pa.array(np.full(n, partition, np.int32)),
        "kafka_offset": pa.array(np.full(n, offset, np.int64)),
    }


class RawLayout:
    """The raw MBO topic."""

    def rows(self, key: bytes | None, value: bytes | None, partition: int, offset: int) -> Any:
        if not value:
            return None  # a watermark marker
        if is_definition(value):
            return ("definitions", key, value, partition, offset)
        if len(value) % MBO_SIZE:
            raise BadMessage(f"{len(value)} bytes is not a whole number of MBO records")
        records = np.frombuffer(value, MBO_DTYPE)
        return ("mbo", records, partition, offset)

    def event_ns(self, piece: Any) -> int:
        if piece[0] == "mbo":
            return int(piece[1]["ts_recv"][0])
        return int(np.frombuffer(piece[2][8:16], "<u8")[0])  # the definition's ts_event

    def table(self, pieces: list[Any]) -> pa.Table:
        parts = []
        for piece in pieces:
            if piece[0] == "mbo":
                _, records, partition, offset = piece
                cols = {name: _mbo_column(name, records[name]) for name in _MBO_FIELDS}
                cols["definition"] = pa.nulls(len(records), pa.binary())
                cols.update(_origin(len(records), partition, offset))
            else:
                cols = _definition_columns(*piece[1:])
            parts.append(pa.table(cols))
        return pa.concat_tables(parts)


def _mbo_column(name: str, values: np.ndarray) -> pa.Array:
    if name in _CODES:
        return pa.array(values.view("S1").astype("U1"))
    return _timestamps(name, pa.array(values))


def _definition_columns(key: bytes | None, value: bytes, partition: int, offset: int) -> dict:
    """A definition message's records, one row each, with their header fields."""
    out: dict[str, list] = {name: [] for name in _MBO_FIELDS}
    blobs = []
    at = 0
    while at < len(value):
        size = value[at] * 4
        record = value[at : at + size]
        if size == 0 or len(record) < size or record[1] != DEFINITION_RTYPE:
            raise BadMessage(f"a definition message with a bad record at byte {at}")
        rtype, publisher, instrument, ts_event = np.frombuffer(record[1:16], _DEF_HEADER)[0]
        ts_recv = int(np.frombuffer(record[16:24], "<u8")[0])
        for name in _MBO_FIELDS:
            out[name].append(None)
        out["rtype"][-1], out["publisher_id"][-1] = int(rtype), int(publisher)
        out["instrument_id"][-1], out["ts_event"][-1] = int(instrument), int(ts_event)
        out["ts_recv"][-1] = ts_recv
        blobs.append(bytes(record))
        at += size
    types = {name: pa.from_numpy_dtype(MBO_DTYPE[name]) for name in _MBO_FIELDS}
    cols = {
        name: _timestamps(name, pa.array(vals, pa.string() if name in _CODES else types[name]))
        for name, vals in out.items()
    }
    cols["definition"] = pa.array(blobs, pa.binary())
    cols.update(_origin(len(blobs), partition, offset))
    return cols


# After the length byte: rtype, publisher_id, instrument_id, ts_event (DBN's record header).
_DEF_HEADER = np.dtype([("rtype", "u1"), ("pub", "<u2"), ("iid", "<u4"), ("ts", "<u8")])


class ColumnarLayout:
    """`book.deltas`, `bbo`, `trades`: one array per field (models/book_events.py)."""

    def rows(self, key: bytes | None, value: bytes | None, partition: int, offset: int) -> Any:
        message = _json(value)
        if not isinstance(message, dict) or not isinstance(message.get("ts_recv"), list):
            raise BadMessage("not a columnar message (no ts_recv array)")
        return (message, partition, offset)

    def event_ns(self, piece: Any) -> int:
        stamps = piece[0]["ts_recv"]
        return int(stamps[0]) if stamps else 0

    def table(self, pieces: list[Any]) -> pa.Table:
        parts = []
        for message, partition, offset in pieces:
            cols = columnar_columns(message)
            cols.update(_origin(len(message["ts_recv"]), partition, offset))
            parts.append(pa.table(cols))
        return pa.concat_tables(parts, promote_options="permissive")


def columnar_columns(message: dict[str, Any]) -> dict[str, pa.Array]:
    """A columnar message's rows as typed columns, its scalars repeated on every row."""
    n = len(message["ts_recv"])
    cols: dict[str, pa.Array] = {}
    for name, values in message.items():
        if isinstance(values, np.ndarray) and values.dtype.kind == "S":
            values = values.astype("U")
        if isinstance(values, list | np.ndarray):  # lists on a topic, arrays in the file driver
            cols[name] = _timestamps(name, pa.array(values))
        elif isinstance(values, str) and len(values) == n:  # one character per row
            cols[name] = pa.array(list(values), pa.string())
        else:
            cols[name] = pa.array([values] * n)
    return cols


def rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    """JSON rows as typed columns, nested objects as structs and lists."""
    t = pa.Table.from_pylist(rows)
    return pa.table({name: _timestamps(name, t[name]) for name in t.column_names})


class RowLayout:
    """One JSON object per message."""

    def rows(self, key: bytes | None, value: bytes | None, partition: int, offset: int) -> Any:
        row = _json(value)
        if not isinstance(row, dict):
            raise BadMessage("not a JSON object")
        row["kafka_partition"], row["kafka_offset"] = partition, offset
        return row

    def event_ns(self, piece: Any) -> int:
        for name in ("start", "ts_recv", "ts_event"):
            value = piece.get(name)
            if isinstance(value, int):
                return value
        return 0

    def table(self, pieces: list[Any]) -> pa.Table:
        return rows_table(pieces)


def _json(value: bytes | None) -> Any:
    try:
        return orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise BadMessage(f"not JSON: {exc}") from None


Layout = RawLayout | ColumnarLayout | RowLayout


def layout_of(base: str, raw: str, columnar: tuple[str, ...]) -> Layout:
    if base == raw:
        return RawLayout()
    if base in columnar:
        return ColumnarLayout()
    return RowLayout()


def hour_of(event_ns: int) -> int:
    """The hour (since the epoch) a message's files go under."""
    return event_ns // NS_PER_HOUR
