"""`faust -A app backfill INPUT... --out DIR`: the stage graph over files, with no broker
(app/file_driver.py), so the output equals the live path's.

Each output topic is written as `DIR/<topic>.jsonl` as it is made, one row per line (a topic
message's columns, unrolled: one line per level change, BBO change or trade), so memory holds
the state (books, open windows), not the output; each table's final state goes to
`DIR/<table>.table.jsonl`, one JSON object per line, sorted by key. `--format parquet` writes
`<topic>.parquet` and `<table>.table.parquet` instead, the same rows with the lake's column
types. Files appear only when the whole run succeeded (app/file_outputs.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import orjson
from faust.cli import argument, option

from app.commands import exit_with
from app.faust_app import app
from app.feeds.mbo_files import InputError
from app.file_driver import run_files
from app.file_outputs import FileOutputs, ParquetOutputs
from app.transport import freeze_heap


@app.command(
    argument("inputs", nargs=-1, required=True),
    option(
        "--out",
        "out_dir",
        required=True,
        type=click.Path(file_okay=False),
        help="Directory for <topic>.jsonl and <table>.table.jsonl files.",
    ),
    option("--limit", type=int, default=None, help="Stop after this many records."),
    option(
        "--format",
        "fmt",
        type=click.Choice(["jsonl", "parquet"]),
        default="jsonl",
        help="JSON lines, or Parquet with the lake's column types.",
    ),
    option("--no-progress", is_flag=True, default=False, help="No progress bar."),
)
async def backfill(
    self: object,
    inputs: tuple[str, ...],
    out_dir: str,
    limit: int | None,
    fmt: str,
    no_progress: bool,
) -> None:
    """Run the stage graph over MBO files with no broker, writing JSON lines or Parquet."""
    from app.faust_app import settings

    if limit is not None and limit < 1:
        exit_with("--limit must be at least 1", 2)
    # Everything alive now (Faust, numba, the kernels) is left out of garbage collection: the
    # collections the outputs' objects set off would walk it all again (about 5% of a run).
    freeze_heap()
    outputs = (ParquetOutputs if fmt == "parquet" else FileOutputs)(Path(out_dir))
    try:
        result = run_files(inputs, settings, limit=limit, progress=not no_progress, outputs=outputs)
        for table, rows in result.tables.items():
            outputs.table(table, rows)
        paths = outputs.commit()
    except InputError as exc:
        outputs.abort()
        exit_with(f"{exc}\nbackfill stopped; no output was written")
    except BaseException:
        outputs.abort()
        raise
    print(
        f"backfilled {result.records:,} records in {result.seconds:.2f} s; wrote "
        + ", ".join(str(p) for p in paths),
        file=sys.stderr,
    )
    print(orjson.dumps(result.summary()).decode())
