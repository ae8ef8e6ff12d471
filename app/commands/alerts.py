"""`faust -A app alerts --config alerts.toml [--from-beginning] [--metrics-port N]`: send signals
to Slack, webhooks and email as the configuration routes them (app/alert_config.py says how to
write it; app/alert_sink.py how deliveries work). A long-running process beside the workers;
Ctrl-C or SIGTERM stops it after committing what it delivered.

It starts reading the signal topics where its consumer group left off, or, the first time, at
their end (`--from-beginning`: at their start, to alert on history too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.cli import option

from app import kafka
from app.alert_config import AlertConfigError, load
from app.alert_sink import AlertSink, decode, http_sender
from app.commands import exit_with
from app.commands.replay import ensure_topic
from app.control import ensure_compacted_topic, read_compacted
from app.dead_letters import letter
from app.faust_app import app, settings
from app.settings import Settings
from tables.options import OPTIONS_SIGNALS

log = logging.getLogger(__name__)
LOG_TOPIC = "alerts.deliveries"
MAX_BACKLOG = 10_000  # deliveries queued before the sink stops reading for a while


async def run(
    config_path: str, from_beginning: bool, stop: asyncio.Event, settings: Settings
) -> dict[str, int]:
    config = load(config_path)
    log_topic = await ensure_compacted_topic(settings, settings.topic(LOG_TOPIC))
    sources = [settings.topic("signals"), settings.topic(OPTIONS_SIGNALS)]
    dead = settings.topic("dead.letters")
    for topic in (*sources, dead):  # the workers may not have made them yet
        await ensure_topic(settings, topic, settings.partitions)
    producer = kafka.producer(settings, acks="all", enable_idempotence=True)
    await producer.start()
    consumer = kafka.consumer(
        settings,
        *sources,
        group_id=f"{settings.app_id}-alerts",
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    counts = {"signals": 0, "bad": 0}
    async with aiohttp.ClientSession() as session:

        async def record(key: str, entry: dict[str, Any]) -> None:
            await producer.send_and_wait(log_topic, orjson.dumps(entry), key=key.encode())

        async def dead_letter(kind: str, reason: str, signal: dict[str, Any]) -> None:
            log.warning("alert dead-lettered (%s): %s", kind, reason)
            body = letter("alerts", kind, reason, sources[0], None, None, orjson.dumps(signal))
            key = str(signal.get("id", "")).encode()
            await producer.send_and_wait(dead, body, key=key)

        sink = AlertSink(config, record, dead_letter, http_sender(session))

        async def bad_message(tp: TopicPartition, offset: int, value: bytes | None) -> None:
            # Once, even when read again after a restart: the log knows its position.
            key = f"bad|{tp.topic}|{tp.partition}|{offset}"
            if key in sink.log_state:
                return
            sink.log_state[key] = "failed"
            await record(key, {"state": "failed", "reason": "not a signal"})
            body = letter(
                "alerts",
                "bad_signal",
                "not a signal",
                tp.topic,
                tp.partition,
                None,
                value or b"",
                offset=offset,
            )
            await producer.send_and_wait(dead, body)

        sink.start()
        try:
            await sink.recover(await read_compacted(settings, log_topic))
            await consumer.start()
            last_commit = time.monotonic()
            while not stop.is_set():
                if sink.backlog() > MAX_BACKLOG:
                    await asyncio.sleep(0.2)
                else:
                    batch = await consumer.getmany(timeout_ms=500, max_records=1000)
                    for tp, messages in batch.items():
                        for m in messages:
                            signal = decode(m.value)
                            if signal is None:
                                counts["bad"] += 1
                                await bad_message(tp, m.offset, m.value)
                                sink.add(tp, m.offset, {})
                                continue
                            counts["signals"] += 1
                            sink.add(tp, m.offset, signal)
                if time.monotonic() - last_commit > 1.0:
                    await _commit(consumer, sink)
                    last_commit = time.monotonic()
            # Let what is under way finish, briefly, and commit it.
            deadline = time.monotonic() + 10
            while sink.backlog() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await _commit(consumer, sink)
        finally:
            await sink.stop()
            await consumer.stop()
            await producer.stop()
    return counts


async def _commit(consumer: AIOKafkaConsumer, sink: AlertSink) -> None:
    offsets = sink.committable()
    if offsets:
        await consumer.commit(offsets)


@app.command(
    option("--config", "config_path", required=True, help="The alert channels and routes (TOML)."),
    option("--from-beginning", is_flag=True, default=False, help="Alert on the topics' history."),
    option("--metrics-port", type=int, default=0, help="Serve Prometheus metrics (0: none)."),
)
async def alerts(self: object, config_path: str, from_beginning: bool, metrics_port: int) -> None:
    """Send signals to Slack, webhooks and email, each at most once per channel."""
    try:
        load(config_path)  # a bad file stops here, before anything connects
    except AlertConfigError as exc:
        exit_with(str(exc), 2)
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=settings.web_host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(s, stop.set)
    counts = await run(config_path, from_beginning, stop, settings)
    print(orjson.dumps(counts).decode(), file=sys.stderr)
