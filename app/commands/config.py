"""`faust -A app config set KEY VALUE` and `faust -A app config show`: runtime settings
(tables/runtime_config.py) through the control topic (app/control.py), no restart needed."""

from __future__ import annotations

import asyncio
import sys

import click
import orjson
from faust.cli import argument

from app.commands import exit_with
from app.control import Control, follow, publish
from app.faust_app import app
from app.settings import Settings
from tables.runtime_config import KEYS, RuntimeConfig, parse


async def current(settings: Settings) -> Control:
    """The configuration workers run with: the environment's, then the control topic's."""
    control = Control(
        RuntimeConfig(settings.ifd_config().signal, settings.pattern_config()), announce=False
    )
    stop = asyncio.Event()
    task = asyncio.create_task(
        follow(settings, control.apply, caught_up=control.caught_up, stop=stop)
    )
    try:
        await asyncio.wait_for(control.caught_up.wait(), 30)
    finally:
        stop.set()
        await task
    return control


@app.command(
    argument("action", type=click.Choice(["set", "show"])),
    argument("key", required=False),
    argument("value", required=False),
)
async def config(self: object, action: str, key: str | None, value: str | None) -> None:
    """Show or change runtime settings: signal and pattern thresholds, the instrument filter."""
    from app.faust_app import settings

    if action == "show":
        control = await current(settings)
        values = control.current.values()
        print(
            orjson.dumps(
                {
                    k: {"value": v, "from": "control" if k in control.changed_keys else "env"}
                    for k, v in values.items()
                },
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
        return
    if key is None or value is None:
        exit_with(f"usage: config set KEY VALUE; keys: {', '.join(sorted(KEYS))}", 2)
    try:
        parse(key, value)
        control = await current(settings)
        old = control.current.values()[key]
        control.current.with_value(key, parse(key, value))  # the whole must still hold
    except ValueError as exc:
        exit_with(str(exc), 2)
    await publish(settings, key, value)
    print(f"{key}: {old!r} -> {parse(key, value)!r}", file=sys.stderr)
