"""`faust -A app depth --symbols BTCUSDT[,...]`: Binance USD-M futures' diff-depth and trades to
the raw MBO topic as L2 books (app/depth/source.py); `faust -A app depth-venue`: a stand-in for
the venue on 127.0.0.1 (app/depth/venue.py), for tests and the demo.

The venue's addresses come from `--ws-url` and `--rest-url`, or `TAPESTREAM_DEPTH_WS_URL` and
`TAPESTREAM_DEPTH_REST_URL`; the defaults are Binance's own. Market data needs no key.
"""

from __future__ import annotations

import os
from pathlib import Path

from faust.cli import option

from app.commands import exit_with
from app.commands.sources import run_source, stop_on_signals
from app.depth.source import REST_URL, WS_URL, DepthConfig, DepthError, DepthSource
from app.depth.venue import Fault, StandInVenue, VenueError
from app.faust_app import app, settings
from app.feeds.captures import BadMessage
from app.topics import RAW_MBO_BASE


@app.command(
    option("--symbols", required=True, help="Comma-separated symbols, e.g. BTCUSDT,ETHUSDT."),
    option("--ws-url", default="", help=f"WebSocket base URL (default: {WS_URL})."),
    option("--rest-url", default="", help=f"REST base URL (default: {REST_URL})."),
    option("--depth-stream", default="depth@100ms", help="depth, depth@500ms or depth@100ms."),
    option("--snapshot-limit", type=int, default=1000, help="Levels per side in a snapshot."),
    option("--record", default="", help="Append every message taken to this capture file."),
    option(
        "--max-connection-age",
        type=float,
        default=23 * 3600.0,
        help="Seconds before a connection is replaced (the venue closes them at 24 h).",
    ),
    option("--stall-timeout", type=float, default=30.0, help="Silence that ends a connection."),
    option("--web-port", type=int, default=0, help="Serve /status and /metrics (0: none)."),
)
async def depth(
    self: object,
    symbols: str,
    ws_url: str,
    rest_url: str,
    depth_stream: str,
    snapshot_limit: int,
    record: str,
    max_connection_age: float,
    stall_timeout: float,
    web_port: int,
) -> None:
    """Stream a venue's L2 depth and trades to the raw MBO topic, resyncing across gaps."""
    if depth_stream not in ("depth", "depth@500ms", "depth@100ms", "depth@0ms"):
        exit_with(f"--depth-stream {depth_stream!r}: depth, depth@500ms or depth@100ms", 2)
    if max_connection_age <= 0 or stall_timeout <= 0 or not 5 <= snapshot_limit <= 1000:
        exit_with("--max-connection-age, --stall-timeout positive; --snapshot-limit 5-1000", 2)
    cfg = DepthConfig(
        symbols=[s.strip() for s in symbols.split(",") if s.strip()],
        ws_url=ws_url or os.environ.get("TAPESTREAM_DEPTH_WS_URL", "") or WS_URL,
        rest_url=rest_url or os.environ.get("TAPESTREAM_DEPTH_REST_URL", "") or REST_URL,
        depth_stream=depth_stream,
        snapshot_limit=snapshot_limit,
        max_connection_age_s=max_connection_age,
        stall_s=stall_timeout,
        record=Path(record) if record else None,
    )
    topic = settings.topic(RAW_MBO_BASE)
    try:
        source = DepthSource(cfg, settings, topic)
    except DepthError as exc:
        exit_with(str(exc), 2)

    def status() -> dict:
        books = {
            s: {"synced": b.synced, "last_update_id": b.last_id, **b.counters.__dict__}
            for s, b in source.books.books.items()
        }
        return {"status": source.status, "symbols": cfg.symbols, "books": books,
                **source.stats.as_dict()}  # fmt: skip

    await run_source(source, status, web_port)


@app.command(
    option("--symbols", default="GENUSDT", help="Generated markets (without --capture)."),
    option("--capture", default="", help="Serve this recorded capture instead."),
    option("--rate", type=float, default=500.0, help="Generated messages per second."),
    option("--speed", type=float, default=1.0, help="Capture pace, a multiple (0: at once)."),
    option("--updates", type=int, default=0, help="End the feed after N depth updates."),
    option("--seed", type=int, default=1, help="The generator's seed."),
    option("--fault", "faults", multiple=True, help="drop@N, disconnect@N, garbage@N, stale@K."),
    option("--max-age", type=float, default=24 * 3600.0, help="Connection age limit, seconds."),
    option("--depth-stream", default="depth@100ms", help="The stream name it publishes."),
    option("--port", type=int, default=0, help="Port on 127.0.0.1 (0: any free one)."),
)
async def depth_venue(
    self: object,
    symbols: str,
    capture: str,
    rate: float,
    speed: float,
    updates: int,
    seed: int,
    faults: tuple[str, ...],
    max_age: float,
    depth_stream: str,
    port: int,
) -> None:
    """A stand-in Binance USD-M market-data venue: REST snapshots and the combined stream."""
    if rate <= 0 or speed < 0 or max_age <= 0:
        exit_with("--rate and --max-age must be positive, --speed not negative", 2)
    try:
        venue = StandInVenue(
            symbols=[s.strip() for s in symbols.split(",") if s.strip()],
            capture=Path(capture) if capture else None,
            rate=rate,
            speed=speed,
            updates=updates,
            seed=seed,
            faults=[Fault.parse(f) for f in faults],
            max_age_s=max_age,
            depth_stream=depth_stream,
            port=port,
        )
    except (VenueError, BadMessage, OSError) as exc:
        exit_with(str(exc), 2)
    bound = await venue.start()
    print(f"stand-in venue for {','.join(venue.symbols)} on 127.0.0.1:{bound}", flush=True)
    await stop_on_signals().wait()
    await venue.close()
