"""Send input that cannot be processed, and output too large to send, to the dead-letter topic,
with the reason, and count it."""

from __future__ import annotations

import base64
import logging

import orjson
from faust.types import EventT

from app import metrics
from app.topics import dead_letters, ensure_declared

log = logging.getLogger(__name__)

# Enough of a bad payload to diagnose it; the full message stays in its source topic.
MAX_PAYLOAD_KEPT = 64 * 1024


def letter(
    agent: str,
    kind: str,
    reason: str,
    topic: str,
    partition: int | None,
    key: bytes | None,
    payload: bytes,
    offset: int | None = None,
    timestamp: float | None = None,
) -> bytes:
    """A dead letter, counted: what went wrong, where, and the start of the payload."""
    metrics.dead_letters.labels(agent, kind).inc()
    return orjson.dumps(
        {
            "agent": agent,
            "kind": kind,
            "reason": reason,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "timestamp_ms": int(timestamp * 1000) if timestamp else None,
            "key": (key or b"").decode("utf-8", "replace"),
            "payload_bytes": len(payload),
            "payload_b64": base64.b64encode(payload[:MAX_PAYLOAD_KEPT]).decode(),
        }
    )


async def send_dead_letter(agent: str, event: EventT, kind: str, reason: str) -> None:
    msg = event.message
    body = letter(
        agent,
        kind,
        reason,
        msg.topic,
        msg.partition,
        msg.key,
        msg.value or b"",
        offset=msg.offset,
        timestamp=msg.timestamp,
    )
    log.warning(
        "dead letter from %s[%s]@%s (%s): %s", msg.topic, msg.partition, msg.offset, kind, reason
    )
    await ensure_declared(dead_letters)
    # The source partition, given explicitly: under exactly_once Faust sends a message in the
    # transaction of its partition only when the partition is known here, and it does not
    # know the partitions of topics the worker does not consume.
    await dead_letters.send(key=msg.key, value=body, partition=msg.partition)


async def processing_failed(agent: str, event: EventT, exc: Exception) -> None:
    """A message whose processing raised: the agent goes on with the next one, since the same
    message would fail again on every restart and stop every instrument of the worker with
    it. The state it touched has been marked (a book is suspect until its next clear)."""
    log.error(
        "%s: processing %s[%s]@%s failed; dead-lettered, the agent goes on",
        agent,
        event.message.topic,
        event.message.partition,
        event.message.offset,
        exc_info=exc,
    )
    await send_dead_letter(agent, event, "processing_error", f"{type(exc).__name__}: {exc}")


def oversized_output(
    topic: str, key: bytes | None, value: bytes | None, partition: int | None, limit: int
) -> bytes:
    """The dead letter that takes the place of an output message over the producer's limit
    (app/transport.py): a failed send would stop the worker."""
    payload = value or b""
    reason = f"{len(payload):,} bytes to {topic}, over the {limit:,}-byte message limit"
    log.error("dead letter instead of an output message: %s", reason)
    return letter("output", "oversized_output", reason, topic, partition, key, payload)
