"""Prometheus metrics of tapestream's own; Faust's sensor metrics share the registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
messages_stale = Counter(
    "tapestream_messages_stale",
    "messages fetched before a rebalance and dropped unprocessed (redelivered after it)",
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
partitions_fenced = Counter(
    "tapestream_partitions_fenced",
    "partitions given up because the broker fenced their transactions (exactly_once)",
)
pauses_past_session_timeout = Counter(
    "tapestream_pauses_past_session_timeout",
    "times this worker found it had stood still about the group's session timeout and gave "
    "up its partitions",
)
messages_dropped_fenced = Counter(
    "tapestream_messages_dropped_fenced",
    "output messages dropped because their partition's transactions were fenced or lost "
    "(their events are processed again by the partition's owner)",
)
assignment_holes = Counter(
    "tapestream_assignment_holes",
    "partitions given up because a message came past the offset expected next (the messages "
    "between would have been skipped)",
)
checkpoint_writes = Counter(
    "tapestream_checkpoint_writes",
    "table keys written or deleted by checkpoints",
)
checkpoint_journal_bytes = Counter(
    "tapestream_checkpoint_journal_bytes",
    "bytes written to the checkpoint journal (at_least_once: each checkpoint's rows, first)",
)
checkpoint_journal_replays = Counter(
    "tapestream_checkpoint_journal_replays",
    "partitions taken up whose last checkpoint had not fully reached the tables, completed "
    "from its journal",
)
checkpoint_seconds = Histogram(
    "tapestream_checkpoint_seconds",
    "time to compute and write one checkpoint (at each offset commit)",
    buckets=(0.001, 0.005, 0.02, 0.1, 0.5, 2.0, 10.0),
)
book_load_seconds = Histogram(
    "tapestream_book_load_seconds",
    "time to restore one instrument's books from the table",
    buckets=(0.001, 0.01, 0.1, 1.0, 10.0),
)
processing_lag = Gauge(
    "tapestream_processing_lag_seconds",
    "wall-clock time from a message's broker timestamp until the agent applied it (latest)",
    ["agent"],
)
ws_clients = Gauge("tapestream_ws_clients", "WebSocket clients connected to this worker")
ws_frames_sent = Counter("tapestream_ws_frames_sent_total", "WebSocket frames sent to clients")
ws_events_dropped = Counter(
    "tapestream_ws_events_dropped_total",
    "Signals a slow WebSocket client's full queue dropped (each announced by a gap frame)",
)
ws_closed_slow = Counter(
    "tapestream_ws_closed_slow_total", "WebSocket clients closed for reading too slowly"
)
alerts = Counter(
    "tapestream_alerts_total",
    "Alert deliveries by channel and outcome: sent, retry, failed (dead-lettered), repeat "
    "(a signal id the channel already had)",
    ["channel", "outcome"],
)
lake_records = Counter("tapestream_lake_records", "rows written to the lake", ["topic"])
lake_files = Counter("tapestream_lake_files", "files put in place in the lake", ["topic"])
lake_bytes = Counter("tapestream_lake_bytes", "bytes of Parquet written to the lake", ["topic"])
lake_bad_messages = Counter(
    "tapestream_lake_bad_messages",
    "messages not of their topic's layout, left out of the lake (their offsets still count)",
    ["topic"],
)

# The live source (`faust -A app live`, app/live/source.py).
live_records = Counter("tapestream_live_records", "MBO records the live source sent on, new ones")
live_duplicates = Counter(
    "tapestream_live_duplicates",
    "records a resubscription sent again and the live source dropped as already delivered",
)
live_reconnects = Counter("tapestream_live_reconnects", "live gateway connections that ended")
live_gaps = Counter(
    "tapestream_live_gaps", "gap records written: instruments the gateway could not replay"
)
live_bytes = Counter("tapestream_live_bytes", "bytes of MBO records the live source sent on")
live_lag = Gauge(
    "tapestream_live_lag_seconds",
    "wall clock at the send minus ts_recv or ts_event of the last record sent on",
    ["clock"],
)

# The depth source (`faust -A app depth`, app/depth/source.py).
depth_messages = Counter("tapestream_depth_messages", "venue messages that reached the L2 books")
depth_records = Counter("tapestream_depth_records", "MBO records the depth source sent on")
depth_gaps = Counter(
    "tapestream_depth_gaps",
    "depth: pu breaks, each resynced from a snapshot; trades: gap records for a disconnect",
    ["kind"],
)
depth_reconnects = Counter("tapestream_depth_reconnects", "venue connections that dropped")

# The ticks source (`faust -A app ticks`, app/ticks/source.py).
ticks_events = Counter("tapestream_ticks_events", "vendor trades and quotes the ticks source took")
ticks_records = Counter("tapestream_ticks_records", "MBO records the ticks source sent on")
ticks_gaps = Counter("tapestream_ticks_gaps", "gap records: symbols a dropped connection cut")
ticks_reconnects = Counter("tapestream_ticks_reconnects", "vendor connections that ended")
ingest_requests = Counter(
    "tapestream_ingest_requests", "POST /ingest/ticks requests, by the status answered", ["status"]
)
ingest_ticks = Counter("tapestream_ingest_ticks", "ticks taken by POST /ingest/ticks")
web_refused = Counter(
    "tapestream_web_refused", "web requests refused for their token (401) or role (403)", ["status"]
)
config_changes = Counter(
    "tapestream_config_changes", "runtime settings changed through PUT /config/"
)
