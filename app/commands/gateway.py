"""`faust -A app gateway FILE... [--port 13000] [--speed 1] [--fault KIND@N[:X] ...]`: the
stand-in Databento live gateway (app/live/gateway.py) on 127.0.0.1, serving recorded files.

With it, `faust -A app live --gateway 127.0.0.1:13000 ...` runs the live path with no key
(any well-formed key logs in unless `--key` names the accepted ones)."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from faust.cli import argument, option

from app.commands import exit_with
from app.faust_app import app
from app.feeds.mbo_files import InputError
from app.live.gateway import Fault, Feed, GatewayError, StandInGateway


@app.command(
    argument("inputs", nargs=-1, required=True),
    option("--port", type=int, default=13000, help="Port on 127.0.0.1 (0: any free one)."),
    option("--speed", type=float, default=1.0, help="Pace: a multiple of the recorded one."),
    option("--all-at-once", is_flag=True, default=False, help="Publish every record at start."),
    option("--dataset", default="", help="Dataset name (default: the files')."),
    option("--key", "keys", multiple=True, help="An accepted API key (default: any)."),
    option("--fault", "faults", multiple=True, help="KIND@RECORDS[:X], repeatable."),
    option("--horizon", type=float, default=86400.0, help="Replay horizon, seconds."),
)
async def gateway(
    self: object,
    inputs: tuple[str, ...],
    port: int,
    speed: float,
    all_at_once: bool,
    dataset: str,
    keys: tuple[str, ...],
    faults: tuple[str, ...],
    horizon: float,
) -> None:
    """Serve MBO files as Databento's live gateway would, for tests and the demo."""
    if speed <= 0:
        exit_with("--speed must be positive", 2)
    try:
        plan = [Fault.parse(f) for f in faults]
        feed = Feed.from_files(inputs, dataset or None)
    except (GatewayError, InputError) as exc:
        exit_with(str(exc), 2)
    gw = StandInGateway(
        feed,
        keys=keys,
        speed=None if all_at_once else speed,
        horizon_ns=int(horizon * 1e9),
        faults=plan,
        port=port,
    )
    bound = await gw.start()
    print(
        f"stand-in gateway for {feed.dataset} on 127.0.0.1:{bound}, first record published at "
        f"{gw.t0_epoch:.6f}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(s, stop.set)
    await stop.wait()
    await gw.close()
