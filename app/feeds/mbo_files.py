"""Streaming readers for MBO files: DBN (`.dbn`, `.dbn.zst`), Databento-style CSV, LOBSTER
message files (`app/feeds/lobster.py`) and Binance depth captures (`app/feeds/depth_capture.py`).

Every reader yields numpy arrays of `models.mbo.MBO_DTYPE` in file order (`open_trades`: of
`models.trades.TRADE_DTYPE`, from trades files or the T records of MBO files), holding at most
one chunk in memory, and raises `InputError` naming the file and the position for anything
that is not a whole, well-formed MBO file: a missing file, a truncated record or zstd frame,
another schema, an unparsable CSV row.
"""

from __future__ import annotations

import csv
import io
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import databento_dbn
import numpy as np
import pyarrow as pa
import zstandard

from models.definitions import dbn_call
from models.mbo import (
    ACTION_CODES,
    MBO_DTYPE,
    MBO_LENGTH_WORDS,
    MBO_RTYPE,
    MBO_SIZE,
    SIDE_CODES,
    UNDEF_PRICE,
    OutOfRange,
    empty_records,
    records_from_rows,
)
from models.trades import (
    TRADE_DTYPE,
    TRADE_LENGTH_WORDS,
    TRADE_RTYPE,
    TRADE_SIZE,
    empty_trades,
    trades_from_mbo,
)

DEFAULT_CHUNK_RECORDS = 65_536
_READ_BYTES = 1 << 20
_DBN_MAGIC = b"DBN"


class InputError(Exception):
    """An input file that cannot be read as MBO; the message names the file and position."""

    def __init__(self, path: Path | str, where: str, problem: str) -> None:
        self.path = str(path)
        self.where = where
        self.problem = problem
        super().__init__(f"{path}: {where}: {problem}")


@dataclass(frozen=True)
class RecordKind:
    """A DBN record type a reader keeps: its schema name, layout and header."""

    schema: str
    dtype: np.dtype
    rtype: int
    size: int
    length_words: int
    empty: Callable[[int], np.ndarray]


MBO = RecordKind("mbo", MBO_DTYPE, MBO_RTYPE, MBO_SIZE, MBO_LENGTH_WORDS, empty_records)
TRADES = RecordKind(
    "trades", TRADE_DTYPE, TRADE_RTYPE, TRADE_SIZE, TRADE_LENGTH_WORDS, empty_trades
)


@dataclass
class MboFile:
    """One input file. Iterate `chunks()` once; `bytes_read`/`size` give progress."""

    path: Path
    format: str
    size: int
    dataset: str = ""
    symbols: dict[int, str] = field(default_factory=dict)
    records_read: int = 0
    records_skipped: int = 0  # non-MBO records in a mixed-schema DBN stream
    bytes_read: int = 0
    kind: RecordKind = MBO
    _stream: BinaryIO | None = None

    def chunks(self, chunk_records: int = DEFAULT_CHUNK_RECORDS) -> Iterator[np.ndarray]:
        if self.format == "csv":
            yield from _csv_chunks(self, chunk_records)
        elif self.format == "lobster":
            from app.feeds.lobster import lobster_chunks

            yield from lobster_chunks(self, chunk_records)
        elif self.format == "depth":
            from app.feeds.depth_capture import depth_chunks

            yield from depth_chunks(self, chunk_records)
        elif self.format == "ticks":
            from app.feeds.tick_capture import tick_chunks

            yield from tick_chunks(self, chunk_records)
        elif self.format == "lake":
            from app.feeds.lake_reader import lake_chunks

            def read(size: int) -> None:
                self.bytes_read += size

            try:
                for chunk in lake_chunks(self.path, chunk_records, read):
                    self.records_read += len(chunk)
                    yield chunk
            except (pa.ArrowException, KeyError) as exc:  # not a lake file, or not raw MBO
                raise InputError(
                    self.path, f"after {self.records_read} records", f"not a lake's raw MBO: {exc}"
                ) from None
        else:
            yield from _dbn_chunks(self, chunk_records)

    def definitions(self) -> list[databento_dbn.InstrumentDefMsg]:
        """The instrument definitions a lake holds (none in a file: those come in definition
        files of their own)."""
        if self.format != "lake":
            return []
        from app.feeds.lake_reader import definitions
        from models.definitions import parse_definitions

        out: list[databento_dbn.InstrumentDefMsg] = []
        for raw in definitions(self.path):
            out += parse_definitions(str(int.from_bytes(raw[4:8], "little")).encode(), raw)
        return out


def open_mbo(path: str | Path) -> MboFile:
    """Identify an MBO input file by name; raise InputError if it is missing or unsupported."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "open", "no such file")
    from app.feeds.lake_reader import is_lake, raw_files

    if is_lake(p) or (p.is_file() and p.name.endswith(".parquet")):
        files = [f for fs in raw_files(p).values() for f in fs]
        if not files:
            raise InputError(p, "open", "a lake with no raw MBO files")
        return MboFile(path=p, format="lake", size=sum(f.stat().st_size for f in files))
    if not p.is_file():
        raise InputError(p, "open", "not a regular file, nor a lake (docs/lake.md)")
    name = p.name.lower()
    if name.endswith(".dbn.zst"):
        fmt = "dbn.zst"
    elif name.endswith(".dbn"):
        fmt = "dbn"
    elif name.endswith(".csv"):
        from app.feeds.lobster import is_lobster

        fmt = "lobster" if is_lobster(p) else "csv"
    else:
        from app.feeds.depth_capture import is_depth_capture
        from app.feeds.tick_capture import is_tick_capture

        if is_depth_capture(p):
            fmt = "depth"
        elif is_tick_capture(p):
            fmt = "ticks"
        else:
            raise InputError(
                p,
                "open",
                "unsupported file type (expected .dbn, .dbn.zst, .csv, a lake, or a depth or "
                "tick capture: docs/depth.md, docs/ticks.md)",
            )
    return MboFile(path=p, format=fmt, size=p.stat().st_size)


class TradesFile:
    """Trades from a trades-schema DBN file, or the T records of any MBO input."""

    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        self._file = open_mbo(p)
        if self._file.format in ("dbn", "dbn.zst") and _dbn_schema(p) == "trades":
            self._file.kind = TRADES

    def __getattr__(self, name: str) -> object:  # path, size, bytes_read, symbols, ...
        return getattr(self._file, name)

    def chunks(self, chunk_records: int = DEFAULT_CHUNK_RECORDS) -> Iterator[np.ndarray]:
        for chunk in self._file.chunks(chunk_records):
            yield chunk if chunk.dtype == TRADE_DTYPE else trades_from_mbo(chunk)


def open_trades(path: str | Path) -> TradesFile:
    """Open a trades or MBO input for its trades; raise InputError as `open_mbo` does."""
    return TradesFile(path)


def _dbn_schema(path: Path) -> str | None:
    """The schema a DBN file's metadata names (None for a mixed stream)."""
    with open(path, "rb") as fh:
        f = MboFile(
            path=path,
            format="dbn.zst" if path.name.lower().endswith(".zst") else "dbn",
            size=path.stat().st_size,
        )
        try:
            meta, _ = _metadata(f, _raw_bytes(f, fh), _Pending())
        except Exception:
            return None  # the real read reports what is wrong, with its position
    return str(meta.schema) if meta.schema is not None else None


def read_all(path: str | Path) -> np.ndarray:
    """Whole file as one array; for tests and small files."""
    parts = list(open_mbo(path).chunks())
    return np.concatenate(parts) if parts else empty_records()


# --- DBN -------------------------------------------------------------------------------------


def _raw_bytes(
    f: MboFile, fh: BinaryIO, want: Callable[[], int] = lambda: _READ_BYTES
) -> Iterator[bytes]:
    """Decompressed bytes of the file, checking that every zstd frame is complete. A plain
    file is read `want()` bytes at a time: what completes the next chunk, which is then carved
    from the block read, with no copy."""
    if f.format == "dbn":
        while block := fh.read(max(want(), 1 << 16)):
            f.bytes_read += len(block)
            yield block
        return
    dctx = zstandard.ZstdDecompressor()
    dobj = dctx.decompressobj()
    pending = b""
    in_frame = False
    while True:
        if pending:
            block, pending = pending, b""
        else:
            block = fh.read(_READ_BYTES)
            f.bytes_read += len(block)
        if not block:
            break
        in_frame = True
        try:
            out = dobj.decompress(block)
        except zstandard.ZstdError as exc:
            raise InputError(
                f.path, f"compressed byte {f.bytes_read}", f"corrupt zstd data ({exc})"
            ) from None
        if out:
            yield out
        if dobj.eof:
            # Concatenated frames: continue with whatever follows this one.
            pending = dobj.unused_data
            dobj = dctx.decompressobj()
            in_frame = False
    if in_frame:
        raise _TruncatedFrame


class _TruncatedFrame(Exception):
    pass


class _Pending:
    """Decompressed bytes not carved yet: blocks joined only when a chunk's worth is there (one
    copy), and carved as views of the joined bytes (no copy)."""

    def __init__(self) -> None:
        self.blocks: list[bytes | memoryview] = []
        self.size = 0

    def add(self, block: bytes | memoryview) -> None:
        self.blocks.append(block)
        self.size += len(block)

    def take(self) -> bytes:
        one = len(self.blocks) == 1 and isinstance(self.blocks[0], bytes)
        data = self.blocks[0] if one else b"".join(self.blocks)
        self.blocks, self.size = [], 0
        return data

    def fill(self, raw: Iterator[bytes], n: int) -> bytes:
        """At least n bytes if the stream has them, taken."""
        while self.size < n:
            block = next(raw, None)
            if block is None:
                break
            self.add(block)
        return self.take()


def _metadata(
    f: MboFile, raw: Iterator[bytes], pending: _Pending
) -> tuple[databento_dbn.Metadata, int]:
    """The stream's DBN metadata and its end (the offset of the first record); the bytes read
    past it stay pending."""
    # Header: b"DBN" + version byte + u32 metadata length, then the metadata.
    data = pending.fill(raw, 8)
    if len(data) < 8 or data[:3] != _DBN_MAGIC:
        raise InputError(f.path, "byte 0", "not a DBN stream (missing 'DBN' header)")
    (meta_len,) = struct.unpack_from("<I", data, 4)
    pending.add(data)
    data = pending.fill(raw, 8 + meta_len)
    if len(data) < 8 + meta_len:
        raise InputError(f.path, "metadata", "truncated: file ends inside the DBN metadata")
    try:
        meta = dbn_call(databento_dbn.Metadata.decode, data[: 8 + meta_len])
    except Exception as exc:
        raise InputError(f.path, "metadata", f"unreadable DBN metadata ({exc})") from None
    pending.add(data[8 + meta_len :])
    return meta, 8 + meta_len


def _dbn_chunks(f: MboFile, chunk_records: int) -> Iterator[np.ndarray]:
    target = chunk_records * f.kind.size
    with open(f.path, "rb") as fh:
        pending = _Pending()
        raw = _raw_bytes(f, fh, lambda: target - pending.size)
        try:
            meta, offset = _metadata(f, raw, pending)
        except _TruncatedFrame:
            raise InputError(
                f.path,
                f"compressed byte {f.bytes_read}",
                "truncated: the zstd stream ends inside a frame, in the DBN metadata",
            ) from None
        schema = str(meta.schema) if meta.schema is not None else None
        if schema not in (None, f.kind.schema):
            raise InputError(f.path, "metadata", f"schema is {schema}, expected {f.kind.schema}")
        f.dataset = meta.dataset
        f.symbols = _symbols_from_mappings(meta.mappings)
        # offset: the decompressed byte offset of the pending bytes, for error positions
        truncated_frame = False
        try:
            for block in raw:
                pending.add(block)
                if pending.size < target:
                    continue
                data = pending.take()
                pos = 0
                while len(data) - pos >= target:
                    used, out = _carve(f, data, pos, offset, target)
                    pos += used
                    offset += used
                    if len(out):
                        yield out
                if pos < len(data):
                    pending.add(memoryview(data)[pos:])  # joined with the next block: no copy now
        except _TruncatedFrame:
            truncated_frame = True
        # Whatever is whole is yielded before any error, so a caller can say what it used.
        data = pending.take()
        pos, used = 0, -1
        while used != 0:
            used, out = _carve(f, data, pos, offset, target)
            pos += used
            offset += used
            if len(out):
                yield out
        if truncated_frame:
            raise InputError(
                f.path,
                f"compressed byte {f.bytes_read} (after {f.records_read} whole records)",
                "truncated: the zstd stream ends inside a frame",
            )
        if pos < len(data):
            raise InputError(
                f.path,
                f"byte {offset} (record {f.records_read + f.records_skipped})",
                f"truncated: {len(data) - pos} trailing bytes are not a whole record",
            )


def _carve(f: MboFile, data: bytes, start: int, offset: int, limit: int) -> tuple[int, np.ndarray]:
    """Whole records in the `limit` bytes of data from start (at byte `offset` of the stream):
    (bytes used, records of f.kind, a view of data)."""
    k = f.kind
    n = min(len(data) - start, limit) // k.size
    if n == 0:
        return _carve_mixed(f, data, start, offset, limit)
    arr = np.frombuffer(data, dtype=k.dtype, count=n, offset=start)
    if (arr["length"] == k.length_words).all() and (arr["rtype"] == k.rtype).all():
        f.records_read += n
        return n * k.size, arr
    return _carve_mixed(f, data, start, offset, limit)


def _carve_mixed(
    f: MboFile, data: bytes, start: int, offset: int, limit: int
) -> tuple[int, np.ndarray]:
    """Slow path for streams that interleave other record types (or carry ts_out)."""
    k = f.kind
    pos, keep = start, []
    end = start + min(len(data) - start, max(limit, 255 * 4))
    while pos + 2 <= end:
        length = data[pos] * 4
        if length < 16:
            if keep:  # the records before it first: the next call starts at it, and raises
                break
            raise InputError(
                f.path, f"byte {offset + pos - start}", f"corrupt record header (length {length})"
            )
        if pos + length > end:
            break
        if data[pos + 1] == k.rtype and length >= k.size:
            rec = bytearray(data[pos : pos + k.size])
            rec[0] = k.length_words  # drop a trailing ts_out: the record is re-framed alone
            keep.append(bytes(rec))
            f.records_read += 1
        else:
            f.records_skipped += 1
        pos += length
    out = np.frombuffer(b"".join(keep), dtype=k.dtype) if keep else k.empty(0)
    return pos - start, out


def _symbols_from_mappings(mappings: dict) -> dict[int, str]:
    out: dict[int, str] = {}
    for raw_symbol, intervals in (mappings or {}).items():
        for interval in intervals:
            sym = interval.get("symbol") if isinstance(interval, dict) else None
            if sym and sym.isdigit():
                out[int(sym)] = raw_symbol
    return out


# --- CSV -------------------------------------------------------------------------------------

_CSV_REQUIRED = (
    "ts_recv",
    "ts_event",
    "publisher_id",
    "instrument_id",
    "action",
    "side",
    "price",
    "size",
    "order_id",
    "flags",
    "sequence",
)
_CSV_OPTIONAL = ("channel_id", "ts_in_delta")


class _CountingReader(io.RawIOBase):
    """Counts the bytes csv pulls from the file, for progress."""

    def __init__(self, fh: BinaryIO, f: MboFile) -> None:
        self._fh, self._f = fh, f

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = self._fh.readinto(b)
        self._f.bytes_read += n or 0
        return n or 0


def csv_rows(reader: Any, path: Path) -> Iterator[list[str]]:
    """The rows of a csv reader; its own errors (a field over the module's size limit) as an
    InputError naming the line."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InputError(path, f"line {reader.line_num}", f"not CSV ({exc})") from None
        yield row


def _csv_chunks(f: MboFile, chunk_records: int) -> Iterator[np.ndarray]:
    with open(f.path, "rb") as fh:
        # surrogateescape: a byte that is not UTF-8 fails the field it is in, on its own line
        # (strict decoding fails blocks of lines ahead of it, before the rows above it are out)
        text = io.TextIOWrapper(
            io.BufferedReader(_CountingReader(fh, f)),
            encoding="utf-8",
            errors="surrogateescape",
            newline="",
        )
        reader = csv.reader(text)
        rows_in = csv_rows(reader, f.path)
        header = next(rows_in, None)
        if header is None:
            raise InputError(f.path, "line 1", "empty file (expected a CSV header)")
        cols = {name.strip(): i for i, name in enumerate(header)}
        missing = [c for c in _CSV_REQUIRED if c not in cols]
        if missing:
            raise InputError(
                f.path, "line 1", f"not MBO CSV: missing column(s) {', '.join(missing)}"
            )
        rtype_col = cols.get("rtype")
        idx = {c: cols[c] for c in _CSV_REQUIRED}
        opt = {c: cols[c] for c in _CSV_OPTIONAL if c in cols}
        sym_col = cols.get("symbol")
        width = len(header)
        rows: list[tuple] = []
        lines: list[int] = []
        for row in rows_in:
            line = reader.line_num
            if not row:
                continue
            if len(row) < width:
                raise InputError(
                    f.path, f"line {line}", f"truncated row: {len(row)} of {width} fields"
                )
            try:
                if rtype_col is not None and int(row[rtype_col]) != MBO_RTYPE:
                    raise ValueError(f"rtype {row[rtype_col]} is not MBO (160)")
                rec = _csv_record(row, idx, opt)
                symbol = row[sym_col] if sym_col is not None else ""
                if not symbol.isascii():
                    _utf8(symbol, "symbol")
            except (ValueError, IndexError) as exc:
                raise InputError(f.path, f"line {line}", f"bad MBO row ({exc})") from None
            rows.append(rec)
            lines.append(line)
            if symbol:
                f.symbols.setdefault(rec[3], symbol)
            if len(rows) >= chunk_records:
                chunk = _csv_records(f, rows, lines)
                f.records_read += len(rows)
                yield chunk
                rows, lines = [], []
        if rows:
            chunk = _csv_records(f, rows, lines)
            f.records_read += len(rows)
            yield chunk


def _utf8(text: str, what: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:  # a byte that is not UTF-8, read as a lone surrogate
        raise ValueError(f"{what} {text!r} is not UTF-8 text") from None


def _csv_records(f: MboFile, rows: list[tuple], lines: list[int]) -> np.ndarray:
    try:
        return records_from_rows(rows)
    except OutOfRange as exc:
        raise InputError(f.path, f"line {lines[exc.row]}", f"bad MBO row ({exc})") from None


def _csv_record(row: list[str], idx: dict[str, int], opt: dict[str, int]) -> tuple:
    action = row[idx["action"]]
    side = row[idx["side"]]
    if len(action) != 1 or ord(action) not in ACTION_CODES:
        raise ValueError(f"unknown action {action!r}")
    if len(side) != 1 or ord(side) not in SIDE_CODES:
        raise ValueError(f"unknown side {side!r}")
    return (
        MBO_LENGTH_WORDS,
        MBO_RTYPE,
        int(row[idx["publisher_id"]]),
        int(row[idx["instrument_id"]]),
        parse_ts(row[idx["ts_event"]]),
        int(row[idx["order_id"]]),
        parse_price(row[idx["price"]]),
        int(row[idx["size"]]),
        int(row[idx["flags"]]),
        int(row[opt["channel_id"]]) if "channel_id" in opt else 0,
        ord(action),
        ord(side),
        parse_ts(row[idx["ts_recv"]]),
        int(row[opt["ts_in_delta"]]) if "ts_in_delta" in opt else 0,
        int(row[idx["sequence"]]),
    )


def parse_price(text: str) -> int:
    """A Databento CSV price: decimal (pretty_px) or fixed-point integer; empty is UNDEF_PRICE."""
    if not text:
        return UNDEF_PRICE
    if "." not in text:
        return int(text)
    neg = text.startswith("-")
    whole, frac = text.lstrip("-").split(".", 1)
    if len(frac) > 9 or not frac.isdigit() or not (whole.isdigit() or whole == ""):
        raise ValueError(f"bad price {text!r}")
    value = int(whole or "0") * 1_000_000_000 + int(frac.ljust(9, "0"))
    return -value if neg else value


def parse_ts(text: str) -> int:
    """A Databento CSV timestamp: ISO 8601 UTC with up to 9 fractional digits, or integer ns."""
    if text.isdigit():
        return int(text)
    if not text.endswith("Z") or len(text) < 20 or text[10] != "T":
        raise ValueError(f"bad timestamp {text!r}")
    seconds = _epoch_seconds(text[:19])
    frac = text[20:-1] if text[19] == "." else ""
    if len(frac) > 9 or (frac and not frac.isdigit()):
        raise ValueError(f"bad timestamp {text!r}")
    return seconds * 1_000_000_000 + int(frac.ljust(9, "0") or "0")


@lru_cache(maxsize=4096)
def _epoch_seconds(stamp: str) -> int:
    return int(datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp())


# --- definitions -----------------------------------------------------------------------------


def is_definition_file(path: str | Path) -> bool:
    """A DBN file of the definition schema (replay and backfill read these first)."""
    p = Path(path)
    return (
        p.is_file()
        and p.name.lower().endswith((".dbn", ".dbn.zst"))
        and (_dbn_schema(p) == "definition")
    )


def read_definitions(path: str | Path) -> list[databento_dbn.InstrumentDefMsg]:
    """Every definition of a definition-schema DBN file, in version 3 layout; InputError for
    a file that is not one."""
    p = Path(path)
    f = open_mbo(p)
    if f.format not in ("dbn", "dbn.zst"):
        raise InputError(p, "open", "definitions come in DBN files")
    decoder = databento_dbn.DBNDecoder(
        upgrade_policy=databento_dbn.VersionUpgradePolicy.UPGRADE_TO_V3
    )
    out: list[databento_dbn.InstrumentDefMsg] = []
    with open(p, "rb") as fh:
        try:
            for chunk in _raw_bytes(f, fh):
                decoder.write(chunk)
                out += [
                    r
                    for r in dbn_call(decoder.decode)
                    if isinstance(r, databento_dbn.InstrumentDefMsg)
                ]
        except _TruncatedFrame:
            raise InputError(p, f"byte {f.bytes_read:,}", "truncated zstd frame") from None
        except Exception as exc:
            raise InputError(p, f"record {len(out):,}", f"not a definition file: {exc}") from None
    if decoder.buffer():
        raise InputError(p, f"record {len(out):,}", "truncated record at the end of the file")
    return out
