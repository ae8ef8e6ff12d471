"""Where a million events' CPU goes, printed as JSON: core-seconds per million events of each
part of bench_pipeline's throughput phase, medians of --runs runs.

    python -m load_tests.bench_budget [--runs 3]

Over bench_pipeline's throughput file (2M generated records, 100 instruments), broker running:
  stages        the instruments agent's stages alone, no broker: the file driver's run less
                decoding and cutting the file into messages (which replay pays instead)
  encode        turning the stages' outputs into the bytes their topics carry
  client        aiokafka alone carrying the same bytes: consume the raw topic, produce the
                outputs' encoded bytes (acks=all, as the worker's producer); no stages, no Faust
  client_in     the consuming part of `client` alone
  worker        a real `faust -A app worker`, both its threads, draining the raw topic
  faust         what the worker spends beyond stages + encode + client: the stream and
                consumer thread, parsing, checkpoints and changelogs, commits, metrics
  replay        replaying the file to the broker (decode, cut, produce)
  broker_in     the local broker while replay fills the raw topic
  broker_drain  the local broker while the worker drains it
The throughput phase runs replay, the broker and the worker at once, so on this machine's
cores it cannot pass `ceiling_events_per_s` (cores / all the parts' core-seconds), and one
worker cannot pass `worker_ceiling_events_per_s` (one core for its core-seconds: the stages
and the Kafka client share one event loop). The broker parts need the local broker started by
deploy/local/kafka.sh (its process is found by its main class); without it they are left out.
A broker just started is still warming its JVM, and its parts then cost several times more.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.commands.replay import replay_files
from app.file_driver import run_files
from app.file_outputs import DiscardOutputs
from app.settings import Settings, load_settings
from app.topics import RAW_MBO_BASE
from app.transport import OUTPUT_MARGIN
from load_tests.bench_pipeline import _file
from load_tests.bench_replay import _batch
from load_tests.worker_proc import bench_worker, delete_deployment
from models import book_events
from models.mbo import MBO_SIZE

TICK = os.sysconf("SC_CLK_TCK")


class EncodedOutputs(DiscardOutputs):
    """Every output encoded as its topic carries it, and kept (bytes, in order)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoded: list[bytes] = []

    def message(self, topic: str, message: dict[str, Any]) -> None:
        super().message(topic, message)
        self.encoded.append(book_events.encode(message))

    def row(self, topic: str, row: dict[str, Any]) -> None:
        super().row(topic, row)
        self.encoded.append(orjson.dumps(row))


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread) a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _broker_pid() -> int | None:
    found = subprocess.run(["pgrep", "-f", "kafka.Kafka"], capture_output=True, text=True)
    pids = found.stdout.split()
    return int(pids[0]) if pids else None


class Meter:
    """CPU seconds of this process and of the broker over a `with` block."""

    def __init__(self, broker_pid: int | None) -> None:
        self.broker_pid = broker_pid
        self.own = self.broker = 0.0

    def __enter__(self) -> Meter:
        self._own0 = time.process_time()
        self._broker0 = _proc_cpu(self.broker_pid) if self.broker_pid else 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.own = time.process_time() - self._own0
        if self.broker_pid:
            self.broker = _proc_cpu(self.broker_pid) - self._broker0


def _offline(path: Path) -> tuple[dict[str, float], list[bytes]]:
    """Seconds of the stages and of encoding their outputs, and the encoded outputs."""
    settings = load_settings()
    t0 = time.process_time()
    _batch(path)
    cut = time.process_time() - t0
    t0 = time.process_time()
    run_files([str(path)], settings, progress=False, outputs=DiscardOutputs())
    stages = time.process_time() - t0
    encoded = EncodedOutputs()
    t0 = time.process_time()
    run_files([str(path)], settings, progress=False, outputs=encoded)
    with_encoding = time.process_time() - t0
    return {"stages": stages - cut, "encode": with_encoding - stages}, encoded.encoded


async def _carry(settings: Settings, total: int, outputs: list[bytes]) -> float:
    """CPU seconds aiokafka takes to consume the raw topic and produce `outputs`, spread
    evenly over the input messages (none: consume only)."""
    out_topic = settings.topic(book_events.DELTAS)  # the deployment's, partitioned as the input
    consumer = AIOKafkaConsumer(
        settings.topic(RAW_MBO_BASE),
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=settings.worker_fetch_bytes,  # as the worker fetches
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        max_request_size=settings.max_message_bytes + OUTPUT_MARGIN,
    )
    await consumer.start()
    await producer.start()
    try:
        records = sent = 0
        t0 = time.process_time()
        while records < total:
            for tp, batch in (await consumer.getmany(timeout_ms=1000)).items():
                for m in batch:
                    if m.key is None or not m.value:  # watermark markers
                        continue
                    records += len(m.value) // MBO_SIZE
                    share = len(outputs) * records // total
                    for value in outputs[sent:share]:
                        await producer.send(out_topic, value, key=m.key, partition=tp.partition)
                    sent = share
        await producer.flush()
        return time.process_time() - t0
    finally:
        await consumer.stop()
        await producer.stop()


def _online(path: Path, total: int, outputs: list[bytes]) -> dict[str, float]:
    """CPU seconds of replay, the broker, a worker draining the raw topic, and the client."""
    broker_pid = _broker_pid()
    parts: dict[str, float] = {}
    env: dict[str, str] = {}

    def fill(worker_env: dict[str, str]) -> None:
        env.update(worker_env)
        with Meter(broker_pid) as m:
            asyncio.run(replay_files([str(path)], load_settings(env), progress=False))
        parts["replay"], parts["broker_in"] = m.own, m.broker

    try:  # the worker's topics stay for the client, and go at the end however it ends
        with bench_worker(load_settings().broker, fill, keep=True) as w:
            while w.processed("instruments") == 0:
                time.sleep(0.01)
            # The few records applied before this are within the scrape's resolution.
            with Meter(broker_pid) as m:
                worker0 = _proc_cpu(w.proc.pid)
                w.wait_processed("instruments", total)
                parts["worker"] = _proc_cpu(w.proc.pid) - worker0
            parts["broker_drain"] = m.broker
        parts["client_in"] = asyncio.run(_carry(load_settings(env), total, []))
        parts["client"] = asyncio.run(_carry(load_settings(env), total, outputs))
    finally:
        if env:
            delete_deployment(env)
    if broker_pid is None:
        del parts["broker_in"], parts["broker_drain"]
    return parts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    path = _file(2_000_000, 100, 20_000)
    total = orjson.loads(path.with_name(path.name + ".truth.json").read_bytes())["records"]
    # The first run in a process loads the book kernels from numba's cache: not a stage cost.
    run_files([str(path)], load_settings(), progress=False, limit=100_000, outputs=DiscardOutputs())
    runs: list[dict[str, float]] = []
    for i in range(args.runs):
        offline, outputs = _offline(path)
        run = {**offline, **_online(path, total, outputs)}
        per_million = {k: v * 1e6 / total for k, v in run.items()}
        per_million["faust"] = per_million["worker"] - sum(
            per_million[k] for k in ("stages", "encode", "client")
        )
        runs.append(per_million)
        print(f"run {i + 1}/{args.runs}: {orjson.dumps(per_million).decode()}", file=sys.stderr)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    pipeline = sum(med.get(k, 0.0) for k in ("replay", "broker_in", "worker", "broker_drain"))
    cores = os.cpu_count() or 1
    report = {
        "file": str(path),
        "records": total,
        "runs": args.runs,
        "cores": cores,
        "median_core_s_per_million_events": {k: round(v, 3) for k, v in med.items()},
        "throughput_phase_core_s_per_million_events": round(pipeline, 3),
        "ceiling_events_per_s": round(cores * 1e6 / pipeline),
        "worker_ceiling_events_per_s": round(1e6 / med["worker"]),
        "per_run": [{k: round(v, 3) for k, v in r.items()} for r in runs],
    }
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
