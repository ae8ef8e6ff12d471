"""`faust -A app ohlcv INPUT... [--interval 1m] [--out FILE]`: OHLCV bars from trades, no broker.

Inputs are trades-schema DBN files or any MBO input (its T records). Bars are built by
`tables.bars.BarEngine` on `ts_event`, as the bars stage builds them, with the same allowed
lateness (`TAPESTREAM_ALLOWED_LATENESS`); a trade later than that is left out, counted on
stderr. Empty windows make no row.

Columns follow Databento's OHLCV CSV: `ts_event` (the bar's start, ISO 8601 UTC with
nanoseconds), `rtype` (32/33/34/35 for 1s/1m/1h/1d, Databento's own; empty for intervals it has
no record type for), `publisher_id`, `instrument_id`, `open, high, low, close` (decimals with 9
places), `volume`, `symbol` (from the DBN metadata, when it maps the instrument). `--out x.parquet`
writes the same columns to Parquet, `ts_event` as a UTC timestamp and prices as fixed-point
integers (1e-9 units).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

import orjson
from faust.cli import argument, option

from app.commands import exit_with
from app.commands.mbp import CsvRows, Rows, write_out
from app.faust_app import app, settings
from app.feeds.mbo_files import InputError, open_trades
from app.parquet_out import ParquetRows
from app.progress import Progress
from models.intervals import NS, parse_interval
from tables.bars import Bar, BarEngine

HEADER = [
    "ts_event",
    "rtype",
    "publisher_id",
    "instrument_id",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "symbol",
]
OHLCV_RTYPES = {NS["s"]: 32, NS["m"]: 33, NS["h"]: 34, NS["d"]: 35}


def row_values(bar: Bar, symbols: dict[int, str]) -> list[Any]:
    return [
        bar.start,
        OHLCV_RTYPES.get(bar.interval_ns),
        bar.publisher_id,
        bar.instrument_id,
        bar.open,
        bar.high,
        bar.low,
        bar.close,
        bar.volume,
        symbols.get(bar.instrument_id, ""),
    ]


def write_ohlcv(
    paths: Iterable[str],
    interval_ns: int,
    lateness_ns: int,
    out: TextIO | Rows,
    progress: bool = True,
) -> dict[str, int]:
    """Bars of the inputs to `out`: a text stream (CSV) or `ParquetRows`."""
    files = [open_trades(p) for p in paths]
    engine = BarEngine([interval_ns], lateness_ns)
    writer = out if isinstance(out, ParquetRows) else CsvRows(out, HEADER)  # type: ignore[arg-type]
    symbols: dict[int, str] = {}
    rows = trades = 0
    for f in files:
        bar = Progress(f.path.name, f.size, enabled=progress)
        for chunk in f.chunks():
            symbols.update(f.symbols)
            trades += len(chunk)
            engine.add_stream(chunk)
            if len(chunk):  # a file is in ts_recv order: nothing still to come arrived earlier
                engine.advance(int(chunk["ts_recv"].max()))
            for b in engine.close():
                writer.writerow(row_values(b, symbols))
                rows += 1
            bar.update(f.bytes_read, f.records_read)
        symbols.update(f.symbols)
        bar.update(f.bytes_read, f.records_read, force=True)
        bar.close()
    for b in engine.flush():
        writer.writerow(row_values(b, symbols))
        rows += 1
    return {"rows": rows, "trades": trades, "late": engine.late_count}


@app.command(
    argument("inputs", nargs=-1, required=True),
    option("--interval", default="1m", help="Bar interval: <n>s, <n>m, <n>h or <n>d."),
    option("--out", "out_path", default=None, help="Output CSV or .parquet (default: stdout)."),
    option("--no-progress", is_flag=True, default=False, help="No progress bar."),
)
async def ohlcv(
    self: object, inputs: tuple[str, ...], interval: str, out_path: str | None, no_progress: bool
) -> None:
    """OHLCV bars (Databento's CSV layout) from trades or MBO files, with no broker."""
    try:
        interval_ns = parse_interval(interval)
    except ValueError as exc:
        exit_with(f"--interval: {exc}", 2)
    try:
        if out_path is None:
            summary = write_ohlcv(inputs, interval_ns, settings.lateness_ns, sys.stdout, False)
        else:
            summary = write_out(
                out_path,
                HEADER,
                lambda out: write_ohlcv(
                    inputs, interval_ns, settings.lateness_ns, out, progress=not no_progress
                ),
            )
    except InputError as exc:
        exit_with(f"{exc}\nohlcv stopped; no output file was written")
    print(orjson.dumps({**summary, "interval": interval}).decode(), file=sys.stderr)
