"""`faust -A app ohlcv INPUT... [--interval 1m] [--out FILE]`: OHLCV bars from trades, no broker.

Inputs are trades-schema DBN files or any MBO input (its T records). The file driver
(app/file_driver.py) runs the graph's bars stage alone on them, bars on `ts_event` with the
allowed lateness (`TAPESTREAM_ALLOWED_LATENESS`); a trade later than that is left out, counted
on stderr. Empty windows make no row.

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
from dataclasses import replace
from typing import Any, TextIO

import orjson
from faust.cli import argument, option

from app.commands import exit_with
from app.commands.mbp import CsvRows, Rows, write_out
from app.faust_app import app, settings
from app.feeds.mbo_files import InputError
from app.file_driver import run_files
from app.parquet_out import ParquetRows
from models.bar_events import LATE_TRADES, bars_topic
from models.book_events import TRADES
from models.intervals import NS, parse_interval

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


class OhlcvOutputs:
    """The bars stage's rows of one interval, in Databento's OHLCV layout; its late trades
    counted; its other outputs (indicators, patterns) dropped."""

    def __init__(self, out: TextIO | Rows, interval_ns: int, symbols: dict[int, str]) -> None:
        self.writer = out if isinstance(out, ParquetRows) else CsvRows(out, HEADER)  # type: ignore[arg-type]
        self.topic = bars_topic(interval_ns)
        self.rtype = OHLCV_RTYPES.get(interval_ns)
        self.symbols = symbols
        self.rows = self.late = 0

    def declare(self, topic: str, columnar: bool = False) -> None:
        pass

    def message(self, topic: str, message: dict[str, Any]) -> None:
        pass

    def row(self, topic: str, row: dict[str, Any]) -> None:
        if topic == LATE_TRADES:
            self.late += 1
        if topic != self.topic:
            return
        iid = row["instrument_id"]
        self.writer.writerow(
            [
                row["start"],
                self.rtype,
                row["publisher_id"],
                iid,
                row["open"],
                row["high"],
                row["low"],
                row["close"],
                row["volume"],
                self.symbols.get(iid, ""),
            ]
        )
        self.rows += 1

    def counts(self) -> dict[str, int]:
        return {self.topic: self.rows, LATE_TRADES: self.late}


def write_ohlcv(
    paths: Iterable[str],
    interval_ns: int,
    lateness_ns: int,
    out: TextIO | Rows,
    progress: bool = True,
) -> dict[str, int]:
    """Bars of the inputs to `out` (a text stream, CSV, or `ParquetRows`): the file driver
    running the bars stage alone, the inputs' trades entering at the `trades` port."""
    config = replace(
        settings.stage_config(), bar_intervals_ns=[interval_ns], lateness_ns=lateness_ns
    )
    symbols: dict[int, str] = {}
    outputs = OhlcvOutputs(out, interval_ns, symbols)
    run = run_files(
        paths,
        settings,
        progress=progress,
        outputs=outputs,
        wants=["bars.<iv>"],
        enter=TRADES,
        symbols=symbols,
        close_at_end=True,
        config=config,
    )
    return {"rows": outputs.rows, "trades": run.records, "late": outputs.late}


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
