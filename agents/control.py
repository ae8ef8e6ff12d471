"""The worker's side of runtime configuration (app/control.py): follow the `control` topic and
hand each change to the state that uses it."""

from __future__ import annotations

import logging

from app.control import Control, follow
from app.faust_app import app, settings
from tables.runtime_config import RuntimeConfig

log = logging.getLogger(__name__)

control = Control(RuntimeConfig(settings.ifd_config().signal, settings.pattern_config()))


@app.task
async def follow_control() -> None:
    # Agents do not wait for this: an agent that awaited anything before iterating its stream
    # stalled for minutes in about half of the test runs here, never fetching its partitions
    # (Faust's startup and recovery expect the agent's stream to be consumed at once).
    await follow(settings, control.apply, caught_up=control.caught_up)
