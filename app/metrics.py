"""Prometheus metrics of tapestream's own; Faust's sensor metrics share the registry."""

from __future__ import annotations

from prometheus_client import Counter

records_processed = Counter(
    "tapestream_records_processed",
    "MBO records applied by an agent",
    ["agent"],
)
messages_processed = Counter(
    "tapestream_messages_processed",
    "raw-topic messages applied by an agent",
    ["agent"],
)
messages_duplicate = Counter(
    "tapestream_messages_duplicate",
    "messages skipped because table state already covers them (redelivery after a restart)",
    ["agent"],
)
dead_letters = Counter(
    "tapestream_dead_letters",
    "input records or messages sent to the dead-letter topic",
    ["agent", "kind"],
)
