"""`faust -A app mbp INPUT [--depth N] [--out FILE]`: MBP-N CSV derived from MBO, no broker.

Columns: the record's own `ts_recv, ts_event, instrument_id, action, side, price, size,
order_id, flags, sequence`, then `bid_px_00, bid_sz_00, bid_ct_00, ask_px_00, ask_sz_00,
ask_ct_00`, ... to depth N-1: the book after that record (see tables/mbp.py for which records
make rows). Timestamps are ISO 8601 UTC with nanoseconds and prices decimals with 9 places, as
in Databento's CSV; an undefined price or an empty level leaves the price empty and size and
count 0.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import orjson
from faust.cli import argument, option

from app.commands import exit_with
from app.faust_app import app
from app.feeds.mbo_files import InputError, open_mbo
from app.progress import Progress
from models.mbo import UNDEF_PRICE
from tables.mbp import MbpBuilder, MbpRow

RECORD_COLUMNS = [
    "ts_recv",
    "ts_event",
    "instrument_id",
    "action",
    "side",
    "price",
    "size",
    "order_id",
    "flags",
    "sequence",
]


def header(depth: int) -> list[str]:
    cols = list(RECORD_COLUMNS)
    for i in range(depth):
        cols += [f"bid_px_{i:02d}", f"bid_sz_{i:02d}", f"bid_ct_{i:02d}"]
        cols += [f"ask_px_{i:02d}", f"ask_sz_{i:02d}", f"ask_ct_{i:02d}"]
    return cols


def fmt_price(p: int) -> str:
    if p == UNDEF_PRICE:
        return ""
    sign = "-" if p < 0 else ""
    whole, frac = divmod(abs(p), 1_000_000_000)
    return f"{sign}{whole}.{frac:09d}"


def fmt_ts(ns: int) -> str:
    secs, frac = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def row_values(row: MbpRow, depth: int) -> list[str | int]:
    (_, _, _, iid, ts_event, oid, price, size, flags, _, action, side, ts_recv, _, seq) = row.record
    out: list[str | int] = [
        fmt_ts(ts_recv),
        fmt_ts(ts_event),
        iid,
        chr(action),
        chr(side),
        fmt_price(price),
        size,
        oid,
        flags,
        seq,
    ]
    for i in range(depth):
        for lv in (row.bids, row.asks):
            if i < len(lv):
                p, sz, ct = lv[i]
                out += [fmt_price(p), sz, ct]
            else:
                out += ["", 0, 0]
    return out


def write_mbp(paths: Iterable[str], depth: int, out: TextIO, progress: bool = True) -> int:
    files = [open_mbo(p) for p in paths]
    # LOBSTER input makes one row per message, as its orderbook files do.
    builder = MbpBuilder(depth, every_event=all(f.format == "lobster" for f in files))
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header(depth))
    rows = 0
    for f in files:
        bar = Progress(f.path.name, f.size, enabled=progress)
        for chunk in f.chunks():
            for row in builder.add(chunk):
                writer.writerow(row_values(row, depth))
                rows += 1
            bar.update(f.bytes_read, f.records_read)
        bar.update(f.bytes_read, f.records_read, force=True)
        bar.close()
    for row in builder.finish():
        writer.writerow(row_values(row, depth))
        rows += 1
    return rows


@app.command(
    argument("inputs", nargs=-1, required=True),
    option("--depth", type=int, default=10, help="Levels per side (1-50)."),
    option("--out", "out_path", default=None, help="Output CSV (default: stdout)."),
    option("--no-progress", is_flag=True, default=False, help="No progress bar."),
)
async def mbp(
    self: object, inputs: tuple[str, ...], depth: int, out_path: str | None, no_progress: bool
) -> None:
    """Derive MBP-N (top N levels) CSV from MBO files, with no broker."""
    if not 1 <= depth <= 50:
        exit_with("--depth must be between 1 and 50", 2)
    try:
        if out_path is None:
            rows = write_mbp(inputs, depth, sys.stdout, progress=False)
        else:
            tmp = Path(out_path + ".part")
            with open(tmp, "w", newline="") as fh:
                rows = write_mbp(inputs, depth, fh, progress=not no_progress)
            tmp.replace(out_path)
    except InputError as exc:
        exit_with(f"{exc}\nmbp stopped; no output file was written")
    print(orjson.dumps({"rows": rows, "depth": depth}).decode(), file=sys.stderr)
