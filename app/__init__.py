"""tapestream: Faust agents for market data. `faust -A app worker` runs a worker.

Importing this package builds the app and registers its agents, tables, web views and commands.
"""

from __future__ import annotations

# Agents, web views and commands register themselves with the app on import.
from agents import access, dashboard, heap, ingest, instruments, lag, options, web  # noqa: F401
from app.commands import (  # noqa: F401
    alerts,
    backfill,
    baselines,
    config,
    depth,
    evaluate,
    gateway,
    lake,
    live,
    mbp,
    ohlcv,
    replay,
    snapshots,
    ticks,
    version,
)
from app.faust_app import app, settings

__all__ = ["app", "settings"]
