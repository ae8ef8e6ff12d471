"""`faust -A app live --dataset D --symbols S[,S...]`: Databento's live MBO to the raw topic.

A long-running source beside the workers (one per subscription), like `replay`; what it does
when the connection or the process itself fails is in `app/live/source.py`. The API key comes
only from `DATABENTO_API_KEY`. `--gateway HOST[:PORT]` (or `TAPESTREAM_LIVE_GATEWAY`) points it
at another gateway, such as the stand-in (`faust -A app gateway`). `--web-port` serves
`/status` (JSON: counts, state, resume point) and `/metrics` (Prometheus).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from datetime import UTC, datetime

import orjson
from faust.cli import option

from app.commands import exit_with
from app.commands.replay import ensure_source_topics
from app.faust_app import app, settings
from app.live.source import DEFAULT_PORT, GAPS_TOPIC, LiveConfig, LiveError, LiveSource
from app.status_server import serve_status
from app.topics import RAW_MBO_BASE

log = logging.getLogger(__name__)


def parse_time(text: str) -> int:
    """Nanoseconds since the epoch, from an integer or an ISO 8601 time (UTC if no zone)."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither nanoseconds nor an ISO 8601 time") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


def parse_gateway(text: str) -> tuple[str | None, int]:
    if not text:
        return None, DEFAULT_PORT
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not port:
        return text, DEFAULT_PORT
    if not port.isdigit():
        raise ValueError(f"--gateway {text!r}: the port must be a number")
    return host, int(port)


def _status(source: LiveSource) -> dict:
    return {
        "status": source.status,
        "subscription": source.source.decode(),
        "symbols": source.cfg.symbols,
        "resume_from_ts_event": source.cursor.resume_start(),
        **source.stats.as_dict(),
    }


@app.command(
    option("--dataset", required=True, help="Databento dataset, e.g. GLBX.MDP3."),
    option("--symbols", required=True, help="Comma-separated symbols, or ALL_SYMBOLS."),
    option("--schema", default="mbo", help="Only mbo is supported."),
    option("--stype-in", default="raw_symbol", help="Symbology of --symbols."),
    option("--start", default="", help="First run: intraday replay from this time."),
    option("--snapshot", is_flag=True, default=False, help="First run: the books first."),
    option("--gateway", default="", help="HOST[:PORT] (default: Databento's for the dataset)."),
    option("--heartbeat", type=int, default=30, help="Gateway heartbeat interval, seconds."),
    option("--stall-timeout", type=float, default=0.0, help="Silence that ends a connection."),
    option("--no-definitions", is_flag=True, default=False, help="Do not subscribe them."),
    option(
        "--resume-window",
        type=float,
        default=10.0,
        help="Seconds a ts_event may trail the stream: the resume point reaches back this far.",
    ),
    option("--web-port", type=int, default=0, help="Serve /status and /metrics (0: none)."),
)
async def live(
    self: object,
    dataset: str,
    symbols: str,
    schema: str,
    stype_in: str,
    start: str,
    snapshot: bool,
    gateway: str,
    heartbeat: int,
    stall_timeout: float,
    no_definitions: bool,
    resume_window: float,
    web_port: int,
) -> None:
    """Stream Databento live MBO to the raw MBO topic, gap-free across reconnects and restarts."""
    if schema != "mbo":
        exit_with(f"--schema {schema}: only mbo is supported", 2)
    if start and snapshot:
        exit_with("give --start or --snapshot, not both", 2)
    if heartbeat < 1 or stall_timeout < 0 or resume_window < 0:
        exit_with("--heartbeat must be at least 1; --stall-timeout, --resume-window positive", 2)
    try:
        start_ns = parse_time(start) if start else None
        host, port = parse_gateway(gateway or os.environ.get("TAPESTREAM_LIVE_GATEWAY", ""))
    except ValueError as exc:
        exit_with(str(exc), 2)
    cfg = LiveConfig(
        dataset=dataset,
        symbols=[s.strip() for s in symbols.split(",") if s.strip()],
        stype_in=stype_in,
        start=start_ns,
        snapshot=snapshot,
        definitions=not no_definitions,
        gateway=host,
        port=port,
        heartbeat_s=heartbeat,
        stall_s=stall_timeout or None,
        resume_window_ns=int(resume_window * 1e9),
    )
    topic = settings.topic(RAW_MBO_BASE)
    try:
        source = LiveSource(cfg, settings, os.environ.get("DATABENTO_API_KEY", ""), topic)
    except LiveError as exc:
        exit_with(str(exc), 2)
    partitions = await ensure_source_topics(settings, topic, GAPS_TOPIC)
    runner = None
    if web_port:
        runner = await serve_status(lambda: _status(source), settings.web_host, web_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(s, stop.set)
    try:
        stats = await source.run(stop, partitions)
    finally:
        if runner is not None:
            await runner.cleanup()
    print(orjson.dumps(stats.as_dict()).decode(), file=sys.stderr)
