"""The one faust.App, configured from `app.settings`."""

from __future__ import annotations

import sys

import app.codecs  # registers the orjson codec before any topic uses it
from app.kafka import faust_credentials, wait_for_broker
from app.rocksdb_store import store_url
from app.settings import SettingsError, load_settings
from app.transport import OUTPUT_MARGIN, App, TableManager, Worker

try:
    settings = load_settings()
except SettingsError as exc:
    # One line naming the variable and the rule, for every command, instead of a traceback.
    print(f"tapestream: {exc}", file=sys.stderr)
    raise SystemExit(2) from None

app = App(
    settings.app_id,
    broker=settings.broker,
    broker_credentials=faust_credentials(settings),
    store=store_url(settings.store),
    datadir=str(settings.data_dir),
    processing_guarantee=settings.processing_guarantee,
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication,
    topic_allow_declare=True,
    key_serializer="raw",
    value_serializer="raw",
    web_bind=settings.web_host,
    web_host=settings.web_host,
    web_port=settings.web_port,
    broker_commit_interval=settings.commit_interval,
    # A worker killed without leaving the group holds its partitions until this expires;
    # Faust's 60 s default would stall those instruments for a minute.
    broker_session_timeout=settings.session_timeout,
    broker_heartbeat_interval=min(3.0, settings.session_timeout / 3),
    producer_max_request_size=settings.max_message_bytes + OUTPUT_MARGIN,
    # Bytes fetched per partition per request. Each fetch is a round trip through Faust's
    # consumer thread; with 1,000-record messages, 32 MiB instead of 4 MiB took one worker from
    # about 250k to 466k records/s (load_tests/bench_replay.py).
    consumer_max_fetch_size=settings.worker_fetch_bytes,
    # Table writes are batched per message; a larger buffer lets a busy partition keep up.
    stream_buffer_maxsize=4096,
    # On stop and rebalance, do not wait for every fetched message to be acked: agents ack at
    # their checkpoints, and a message fetched but never handed to an agent kept Faust waiting
    # for good. What is not committed is simply processed again (and recognised as such).
    stream_wait_empty=False,
    Worker=Worker,
    TableManager=TableManager,
    autodiscover=False,
    web_enabled=True,
)
app.fetch_wait_s = settings.fetch_wait
app.wait_for_broker = lambda: wait_for_broker(settings, settings.broker_wait)
