"""The worker's side of runtime configuration (app/control.py): follow the `control` topic and
hand each change to the state that uses it."""

from __future__ import annotations

import asyncio
import logging

from app.control import Control, follow
from app.faust_app import app, settings
from tables.runtime_config import RuntimeConfig

log = logging.getLogger(__name__)
# Agents wait this long for the settings already in the topic before publishing anything.
CATCH_UP_TIMEOUT_S = 30.0

control = Control(RuntimeConfig(settings.ifd_config().signal, settings.pattern_config()))


@app.task
async def follow_control() -> None:
    await follow(settings, control.apply, caught_up=control.caught_up)


async def caught_up() -> None:
    """Until the settings already in the topic apply (or the wait times out, logged)."""
    try:
        await asyncio.wait_for(control.caught_up.wait(), CATCH_UP_TIMEOUT_S)
    except TimeoutError:
        log.error(
            "control: settings not read within %.0f s; going on with the current ones",
            CATCH_UP_TIMEOUT_S,
        )
