"""`faust -A app <command>`: replay, live, gateway, depth (and depth-venue), ticks (and
ticks-vendor), backfill, baselines, config, evaluate, lake, mbp, ohlcv, alerts, snapshots,
version; one module each."""

from __future__ import annotations

import sys
from typing import NoReturn

from app import kafka
from app.settings import Settings


def exit_with(message: str, code: int = 1) -> NoReturn:
    """End a command with a message and no traceback (Faust prints one for other errors).
    Code 2 is a usage error, as with click's own."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


async def wait_for_broker_or_exit(settings: Settings) -> None:
    """A long-running command (re)started while its broker restarts waits for it, up to
    TAPESTREAM_BROKER_WAIT, then ends with the reason."""
    try:
        await kafka.wait_for_broker(settings, settings.broker_wait)
    except kafka.BrokerUnreachable as exc:
        exit_with(str(exc), 1)
