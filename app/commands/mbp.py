"""`faust -A app mbp INPUT [--depth N] [--out FILE]`: MBP-N CSV derived from MBO, no broker.

Columns: the record's own `ts_recv, ts_event, instrument_id, action, side, price, size,
order_id, flags, sequence`, then `bid_px_00, bid_sz_00, bid_ct_00, ask_px_00, ask_sz_00,
ask_ct_00`, ... to depth N-1: the book after that record (see tables/mbp.py for which records
make rows), made by the graph's MBP stage, which the file driver (app/file_driver.py) runs
alone, in the records' order. Timestamps are ISO 8601 UTC with nanoseconds and prices
decimals with 9 places, as in Databento's CSV; an undefined price or an empty level leaves the
price empty and size and count 0. `--out x.parquet` writes the same columns to Parquet, times as
UTC timestamps and prices as fixed-point integers (1e-9 units; null where the CSV is empty).
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

import orjson
from faust.cli import argument, option

from app.commands import exit_with
from app.faust_app import app, settings
from app.feeds.mbo_files import InputError, is_definition_file, open_mbo
from app.file_driver import run_files
from app.parquet_out import ParquetRows
from models.mbo import UNDEF_PRICE
from pipeline.stages import MBP
from tables.mbp import columns


def fmt_price(p: int) -> str:
    if p == UNDEF_PRICE:
        return ""
    sign = "-" if p < 0 else ""
    whole, frac = divmod(abs(p), 1_000_000_000)
    return f"{sign}{whole}.{frac:09d}"


def fmt_ts(ns: int) -> str:
    secs, frac = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def is_price(column: str) -> bool:
    return column in ("price", "open", "high", "low", "close") or "_px_" in column


class CsvRows:
    """Typed rows as Databento's CSV: times (`ts_*`) ISO 8601 UTC with nanoseconds, prices
    decimals with 9 places, an undefined price or a missing value empty."""

    def __init__(self, out: TextIO, columns: list[str]) -> None:
        self.writer = csv.writer(out, lineterminator="\n")
        self.writer.writerow(columns)
        self.formats = [
            fmt_ts if c.startswith("ts_") else fmt_price if is_price(c) else None for c in columns
        ]

    def writerow(self, values: list[Any]) -> None:
        self.writer.writerow(
            [
                "" if v is None else v if f is None else f(v)
                for f, v in zip(self.formats, values, strict=True)
            ]
        )


class Rows(Protocol):
    def writerow(self, values: list[Any]) -> None: ...


class MbpOutputs:
    """The MBP stage's rows to a CSV or Parquet writer."""

    def __init__(self, out: TextIO | Rows, depth: int) -> None:
        self.writer = out if isinstance(out, ParquetRows) else CsvRows(out, columns(depth))  # type: ignore[arg-type]
        self.rows = 0

    def declare(self, topic: str, columnar: bool = False) -> None:
        pass

    def message(self, topic: str, message: dict[str, Any]) -> None:
        pass

    def row(self, topic: str, row: dict[str, Any]) -> None:
        if topic == MBP:
            self.writer.writerow(list(row.values()))
            self.rows += 1

    def counts(self) -> dict[str, int]:
        return {MBP: self.rows}


def write_mbp(paths: Iterable[str], depth: int, out: TextIO | Rows, progress: bool = True) -> int:
    """MBP-N rows of the inputs to `out` (a text stream, CSV, or `ParquetRows`): the file
    driver running the MBP stage alone, its messages in the files' record order."""
    paths = list(paths)
    # LOBSTER input makes one row per message, as its orderbook files do.
    lobster = all(open_mbo(p).format == "lobster" for p in paths if not is_definition_file(p))
    config = replace(settings.stage_config(), mbp_depth=depth, mbp_every_event=lobster)
    outputs = MbpOutputs(out, depth)
    run_files(
        paths,
        settings,
        progress=progress,
        outputs=outputs,
        wants=[MBP],
        in_order=True,
        close_at_end=True,
        config=config,
    )
    return outputs.rows


def write_out(out_path: str, columns: list[str], write: Callable[[TextIO | Rows], Any]) -> Any:
    """`write` into OUT_PATH, whole or not at all: Parquet when the name ends in `.parquet`
    (the same columns, typed as docs/lake.md says), CSV otherwise."""
    if out_path.endswith(".parquet"):
        rows = ParquetRows(Path(out_path), columns, is_price)
        try:
            result = write(rows)
            rows.commit()
        except BaseException:
            rows.abort()
            raise
        return result
    tmp = Path(out_path + ".part")
    try:
        with open(tmp, "w", newline="") as fh:
            result = write(fh)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out_path)
    return result


@app.command(
    argument("inputs", nargs=-1, required=True),
    option("--depth", type=int, default=10, help="Levels per side (1-50)."),
    option("--out", "out_path", default=None, help="Output CSV or .parquet (default: stdout)."),
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
            rows = write_out(
                out_path,
                columns(depth),
                lambda out: write_mbp(inputs, depth, out, progress=not no_progress),
            )
    except InputError as exc:
        exit_with(f"{exc}\nmbp stopped; no output file was written")
    print(orjson.dumps({"rows": rows, "depth": depth}).decode(), file=sys.stderr)
