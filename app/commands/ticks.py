"""`faust -A app ticks --symbols AAPL[,...]`: a tick vendor's trades and quotes (the Massive,
formerly Polygon.io, stocks WebSocket) to the raw MBO topic (app/ticks/source.py);
`faust -A app ticks-vendor`: a stand-in for the vendor on 127.0.0.1 (app/ticks/vendor.py).

The key comes only from `MASSIVE_API_KEY` (or `POLYGON_API_KEY`); the URL from `--url` or
`TAPESTREAM_TICKS_URL`.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
from faust.cli import option

from app.commands import exit_with
from app.commands.sources import run_source, stop_on_signals
from app.faust_app import app, settings
from app.ticks.source import KEY_VARIABLES, URL, TicksConfig, TicksError, TicksSource
from app.ticks.vendor import Fault, StandInVendor, VendorError
from app.topics import RAW_MBO_BASE
from tables.tick_rules import Conditions


def _conditions(path: str) -> Conditions | None:
    if not path:
        return None
    try:
        return Conditions.from_reference(orjson.loads(Path(path).read_bytes()))
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        exit_with(f"--conditions {path}: {exc}", 2)


@app.command(
    option("--symbols", required=True, help="Comma-separated symbols, e.g. AAPL,MSFT."),
    option("--url", default="", help=f"WebSocket URL (default: {URL})."),
    option("--conditions", default="", help="The vendor's conditions reference (JSON)."),
    option("--record", default="", help="Append every frame taken to this capture file."),
    option("--stall-timeout", type=float, default=30.0, help="Silence that ends a connection."),
    option("--web-port", type=int, default=0, help="Serve /status and /metrics (0: none)."),
)
async def ticks(
    self: object,
    symbols: str,
    url: str,
    conditions: str,
    record: str,
    stall_timeout: float,
    web_port: int,
) -> None:
    """Stream a tick vendor's trades and quotes to the raw MBO topic."""
    if stall_timeout <= 0:
        exit_with("--stall-timeout must be positive", 2)
    cfg = TicksConfig(
        symbols=symbols.split(","),
        url=url or os.environ.get("TAPESTREAM_TICKS_URL", "") or URL,
        stall_s=stall_timeout,
        record=Path(record) if record else None,
        conditions=_conditions(conditions),
    )
    key = next((os.environ[v] for v in KEY_VARIABLES if os.environ.get(v)), "")
    topic = settings.topic(RAW_MBO_BASE)
    try:
        source = TicksSource(cfg, settings, topic, key)
    except TicksError as exc:
        exit_with(str(exc), 2)

    def status() -> dict:
        return {"status": source.status, "symbols": cfg.symbols, **source.stats.as_dict()}

    await run_source(source, status, web_port)


@app.command(
    option("--symbols", default="AAPL,MSFT", help="Generated symbols."),
    option("--rate", type=float, default=200.0, help="Events per second, over all symbols."),
    option("--events", type=int, default=0, help="End the feed after N events (0: never)."),
    option("--seed", type=int, default=1, help="The generator's seed."),
    option("--key", "keys", multiple=True, help="An accepted key (default: any)."),
    option("--refuse", type=int, default=0, help="Refuse the first N logins."),
    option("--excluded-every", type=int, default=25, help="Every Nth trade an odd lot (0: none)."),
    option("--fault", "faults", multiple=True, help="close@N, garbage@N, badevent@N, seqgap@N."),
    option("--port", type=int, default=0, help="Port on 127.0.0.1 (0: any free one)."),
)
async def ticks_vendor(
    self: object,
    symbols: str,
    rate: float,
    events: int,
    seed: int,
    keys: tuple[str, ...],
    refuse: int,
    excluded_every: int,
    faults: tuple[str, ...],
    port: int,
) -> None:
    """A stand-in for the Massive stocks WebSocket: generated trades and quotes."""
    if rate <= 0 or events < 0 or refuse < 0 or excluded_every < 0:
        exit_with("--rate must be positive; --events, --refuse, --excluded-every not negative", 2)
    try:
        vendor = StandInVendor(
            symbols=[s.strip() for s in symbols.split(",") if s.strip()],
            rate=rate,
            events=events,
            seed=seed,
            keys=keys,
            refuse=refuse,
            excluded_every=excluded_every,
            faults=[Fault.parse(f) for f in faults],
            port=port,
        )
    except VendorError as exc:
        exit_with(str(exc), 2)
    bound = await vendor.start()
    print(f"stand-in tick vendor for {','.join(vendor.symbols)} on 127.0.0.1:{bound}", flush=True)
    await stop_on_signals().wait()
    await vendor.close()
