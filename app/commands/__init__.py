"""`faust -A app <command>`: replay, live, gateway, depth (and depth-venue), ticks (and
ticks-vendor), backfill, baselines, config, evaluate, lake, mbp, ohlcv, alerts, snapshots,
version; one module each."""

from __future__ import annotations

import sys
from typing import NoReturn


def exit_with(message: str, code: int = 1) -> NoReturn:
    """End a command with a message and no traceback (Faust prints one for other errors).
    Code 2 is a usage error, as with click's own."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)
