"""Prometheus metrics of tapestream's own; Faust's sensor metrics share the registry.

Base units (seconds, bytes; records where a count is of records); counters are exposed with
`_total`. docs/operations.md lists them with their labels, and deploy/grafana/tapestream.json
charts them (tests/unit/test_grafana.py holds the two together).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app import build

Samples = Iterable[tuple[Sequence[str], float]]  # (label values, value)


class Polled(Collector):
    """A counter or gauge read when scraped, from numbers its sources keep (`add_source`):
    what the hot path counts stays a plain integer addition, where prometheus_client's
    Counter takes a lock and a label lookup on every increment."""

    def __init__(
        self, name: str, documentation: str, labels: Sequence[str] = (), counter: bool = True
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = list(labels)
        self.counter = counter
        self.sources: list[Callable[[], Samples]] = []
        REGISTRY.register(self)

    def add_source(self, source: Callable[[], Samples]) -> None:
        self.sources.append(source)

    def _family(self) -> Metric:
        kind = CounterMetricFamily if self.counter else GaugeMetricFamily
        return kind(self.name, self.documentation, labels=self.labels)

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for source in self.sources:
            for labels, value in source():
                family.add_metric(list(labels), value)
        yield family


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
outputs_undelivered = Counter(
    "tapestream_outputs_undelivered",
    "output messages the broker did not take (the Kafka client gave up on them), by topic",
    ["topic"],
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
heap_trimmed = Counter(
    "tapestream_heap_trimmed_bytes",
    "resident memory the C heap's timed trim gave back to the system (TAPESTREAM_HEAP_TRIM_S)",
)
heap_trim_seconds = Histogram(
    "tapestream_heap_trim_seconds",
    "time one trim of the C heap took (in a thread beside the event loop)",
    buckets=(0.001, 0.005, 0.02, 0.1, 0.5),
)
rocksdb_memory = Polled(
    "tapestream_rocksdb_memory_bytes",
    "memory RocksDB holds against the worker's one budget: part=cache is the block cache's use, "
    "memtables included (they are charged to it; at most TAPESTREAM_ROCKSDB_CACHE_MB), "
    "part=memtables the memtables' alone (at most TAPESTREAM_ROCKSDB_MEMTABLES_MB)",
    ["part"],
    counter=False,
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
consumer_lag = Gauge(
    "tapestream_consumer_lag",
    "records in the partition not yet processed by this worker: the partition's high-water "
    "mark (last stable offset under exactly_once) minus the offset it processes next "
    "(agents/lag.py)",
    ["topic", "partition"],
)
stage_records_in = Polled(
    "tapestream_stage_records_in",
    "items a stage of the graph took in: MBO records (books, instrument-stats), trades "
    "(bars), trades and BBO updates (flow), delta parts (deltas), option parts "
    "(option-groups)",
    ["stage"],
)
stage_records_out = Polled(
    "tapestream_stage_records_out",
    "rows a stage of the graph made: level changes, BBO updates and trades (books); bars, "
    "indicators, late trades and pattern signals (bars); pressure windows, signals and option "
    "parts (flow); deltas; group windows and signals (option-groups)",
    ["stage"],
)
late_trades = Counter(
    "tapestream_late_trades",
    "trades that came after the watermark had closed their bar (trades.late rows), by the "
    "bar interval they were late for",
    ["interval"],
)
sequence_gaps = Polled(
    "tapestream_sequence_gaps",
    "sequence gaps this worker's books met in their venue's feed (each marks its book suspect)",
)
suspect_books = Polled(
    "tapestream_suspect_books",
    "books held by this worker that are suspect (a sequence gap, F_MAYBE_BAD_BOOK or a "
    "failed apply) until their next clear",
    counter=False,
)
signals = Counter(
    "tapestream_signals",
    "signals published, by kind (ifd, options_flow, processing_lag and the bar patterns)",
    ["kind"],
)
build_info = Polled(
    "tapestream_build_info",
    "always 1: the tapestream version and commit and the Python this process runs",
    ["version", "commit", "python"],
    counter=False,
)
# Asked for when first scraped: the commit can take a `git` run to find.
build_info.add_source(lambda: [((build.version(), build.commit(), build.python()), 1)])


def _loop_tasks() -> Samples:
    try:
        return [((), len(asyncio.all_tasks()))]
    except RuntimeError:  # scraped outside the worker's event loop: nothing to count
        return []


event_loop_tasks = Polled(
    "tapestream_event_loop_tasks",
    "asyncio tasks alive in the worker's event loop: growth under steady load is a leak",
    counter=False,
)
event_loop_tasks.add_source(_loop_tasks)
ws_clients = Gauge("tapestream_ws_clients", "WebSocket clients connected to this worker")
ws_frames_sent = Counter("tapestream_ws_frames_sent_total", "WebSocket frames sent to clients")
ws_events_dropped = Counter(
    "tapestream_ws_events_dropped_total",
    "Signals a slow WebSocket client's full queue dropped (each announced by a gap frame)",
)
ws_gap_notices = Counter(
    "tapestream_ws_gap_notices_total", "gap frames sent to slow WebSocket clients"
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
lake_files_superseded = Counter(
    "tapestream_lake_files_superseded",
    "files dropped because another sink wrote part of their span first (docs/lake.md)",
    ["topic"],
)
lake_behind = Gauge(
    "tapestream_lake_behind_records",
    "records on the broker the lake sink has not yet taken, by topic (as of its last fetch)",
    ["topic"],
)
lake_waiting = Gauge(
    "tapestream_lake_waiting",
    "1 while the lake sink waits for the workers to leave CPU spare (--spare-cpus), else 0",
)
lake_waited = Counter(
    "tapestream_lake_waited_seconds",
    "seconds the lake sink waited for the workers to leave CPU spare (--spare-cpus)",
)
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
