"""`faust -A app lake [--root DIR|URI] [--topics a,b] [--roll-seconds S] [--file-mb N]
[--instance NAME] [--nice N] [--no-idle] [--spare-cpus N] [--max-wait S] [--metrics-port N]`:
the cold tier. Writes the chosen topics to Parquet under the lake root, each record exactly
once (app/lake_sink.py, docs/lake.md). A long-running process beside the workers, in its own
consumer group; Ctrl-C or SIGTERM stops it after writing what it holds. Run several to share
the partitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

import click
import orjson
from faust.cli import option

from app import kafka
from app.commands import exit_with, wait_for_broker_or_exit
from app.commands.replay import ensure_topic
from app.cpu_priority import Yield, default_spare_cpus, run_below_workers
from app.faust_app import app, settings
from app.lake_files import Lake
from app.lake_rows import layout_of
from app.lake_sink import LakeSink, run
from app.settings import Settings
from app.topics import RAW_MBO_BASE
from models.intervals import interval_name
from pipeline.graph import COLUMNAR, public_topics

log = logging.getLogger(__name__)


def lake_topics(settings: Settings, spec: str) -> list[str]:
    """The base names `spec` lists (`bars` for every bar interval, `all` for every topic);
    raises ValueError naming what is unknown."""
    intervals = [interval_name(iv) for iv in settings.bar_intervals_ns]
    known = [RAW_MBO_BASE, *public_topics(intervals)]
    out: list[str] = []
    for name in (n.strip() for n in spec.split(",")):
        if not name:
            continue
        if name == "all":
            chosen = known
        elif name == "bars":
            chosen = [t for t in known if t.startswith("bars.")]
        elif name in known:
            chosen = [name]
        else:
            raise ValueError(f"unknown topic {name!r} (known: all, bars, {', '.join(known)})")
        out += [t for t in chosen if t not in out]
    if not out:
        raise ValueError("no topics chosen")
    return out


async def sink(
    settings: Settings,
    root: str,
    bases: list[str],
    roll_s: float,
    file_bytes: int,
    instance: str,
    yielding: Yield | None = None,
) -> dict:
    lake = Lake(root, instance)
    layouts = {settings.topic(b): (b, layout_of(b, RAW_MBO_BASE, COLUMNAR)) for b in bases}
    await wait_for_broker_or_exit(settings)
    for topic in layouts:  # the workers may not have made them yet
        await ensure_topic(settings, topic, settings.partitions)
    consumer = kafka.consumer(
        settings,
        group_id=f"{settings.app_id}-lake",
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=settings.fetch_bytes,
        # The lake is in no hurry: the broker gathers up to 1 MiB (or 500 ms) before it
        # answers, so a burst costs it a few large reads, not hundreds of small ones on the
        # cores the market path needs (load_tests/bench_lake.py).
        fetch_min_bytes=1 << 20,
        fetch_max_wait_ms=500,
        session_timeout_ms=int(settings.session_timeout * 1000),
        # Static membership: a sink restarted under the same name takes its partitions back
        # at once, where a new member waits for the group to give up on the old one.
        group_instance_id=f"{settings.app_id}-lake-{instance}" if instance else None,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(s, stop.set)
    sink = LakeSink(layouts, roll_s, file_bytes)
    progress = await run(consumer, lake, sink, stop, yielding=yielding)
    return {
        "records": progress.records,
        "files": progress.files,
        "bytes": progress.bytes,
        "waited_s": round(progress.waited_s, 1),
    }


@app.command(
    option("--root", default="", help="Lake root: a directory or a pyarrow URI (s3://...)."),
    option("--topics", default="", help="Comma-separated base names; `bars`, `all`."),
    option("--roll-seconds", type=float, default=0.0, help="Longest a file stays open."),
    option("--file-mb", type=float, default=0.0, help="Input MB after which a file rolls."),
    option("--instance", default="", help="A name for this sink, the same across restarts."),
    option(
        "--nice",
        type=click.IntRange(0, 19),
        default=10,
        help="CPU priority below the workers' (0: the same), where --no-idle.",
    ),
    option(
        "--idle/--no-idle",
        default=True,
        help="Run only on CPU time the workers leave (Linux's idle scheduling class).",
    ),
    option(
        "--spare-cpus",
        type=click.FloatRange(0),
        default=None,
        help="Wait while the other processes leave fewer CPUs than this idle (default: 1, or "
        "half the CPUs where there are fewer than 2; 0: never wait).",
    ),
    option(
        "--max-wait",
        # Below the consumer's max.poll.interval (300 s): a longer wait would leave the group.
        type=click.FloatRange(1, 240),
        default=60.0,
        help="Longest wait for spare CPU in a row; then work at least 10 s.",
    ),
    option("--metrics-port", type=int, default=0, help="Serve Prometheus metrics (0: none)."),
)
async def lake(
    self: object,
    root: str,
    topics: str,
    roll_seconds: float,
    file_mb: float,
    instance: str,
    nice: int,
    idle: bool,
    spare_cpus: float | None,
    max_wait: float,
    metrics_port: int,
) -> None:
    """Write topics to a Parquet lake, each record exactly once."""
    # On a machine the workers share, the sink takes the CPU they leave, and waits while they
    # leave too little: it falls behind for a while rather than slow the market path
    # (load_tests/bench_lake.py).
    priority = run_below_workers(nice, idle)
    try:
        bases = lake_topics(settings, topics or settings.lake_topics)
    except ValueError as exc:
        exit_with(str(exc), 2)
    if roll_seconds < 0 or file_mb < 0:
        exit_with("--roll-seconds and --file-mb must be positive", 2)
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=settings.web_host)
    root = root or settings.lake_root
    roll_s = roll_seconds or settings.lake_roll
    file_bytes = int(file_mb * 1024 * 1024) or settings.lake_file_bytes
    if spare_cpus is None:
        spare_cpus = default_spare_cpus()
    yielding = None
    if spare_cpus > 0:
        try:
            yielding = Yield(spare_cpus, max_wait)
        except OSError as exc:  # no /proc/stat: not Linux, or a sandbox
            log.warning("lake: CPU use not readable (%s); the sink never waits", exc)
    log.info(
        "lake: %s -> %s (roll after %.0f s or %d bytes; %s; %s)",
        bases,
        root,
        roll_s,
        file_bytes,
        priority,
        f"waits while fewer than {spare_cpus:g} CPUs are spare" if yielding else "never waits",
    )
    summary = await sink(settings, root, bases, roll_s, file_bytes, instance, yielding)
    print(orjson.dumps(summary).decode(), file=sys.stderr)
