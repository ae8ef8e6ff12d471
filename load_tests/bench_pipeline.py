"""The books pipeline through the broker and one real worker, printed as JSON.

    python -m load_tests.bench_pipeline [--records 2000000] [--instruments 100]
        [--rate 50000] [--paced-seconds 20] [--signal-seconds 60] [--paced-instruments 4]
        [--runs 3]
        [--guarantees at_least_once,exactly_once]
        [--phases throughput,backlog,latency,signals,options]

For each processing guarantee, each run starts a fresh worker (its own topics and state) and:
  throughput  replays a generated file at full speed (--max) and measures events/s from the
              start of the replay until the instruments agent has applied every record (the replay
              shares the machine's two cores with the broker and the worker);
  backlog     the same file, already in the topic when a fresh worker starts: events/s from
              the first record the instruments agent applied to the last;
  latency     replays a second file paced at --rate records/s and, with a read_committed
              consumer of book.deltas in the same process, measures for every published level
              change the time from when replay sent its event until the consumer had it;
              p50/p99/p999 over all rows after a 2 s warm-up (sent_*: until the worker sent
              it, by the message's broker timestamp). Replay sends, at the start of each 20 ms
              tick of its pace clock, what falls due within the tick; the start of the tick is
              taken as the send time, which can only overstate a latency.
  signals     replays a longer file (--signal-seconds) paced the same way, to a worker
              whose flow detection (baselines loaded from two earlier days) and patterns on
              one-second bars fire often (SIGNAL_ENV), timing every flow and pattern signal
              and every one-second delta from the tick at which the event time that
              made it final came due (a window's end plus the allowed lateness; the end of a
              delta's second) until a read_committed consumer had it (*_sent_p99_ms:
              until the worker sent it, by the message's broker timestamp).
  options     the throughput phase twice with one-second pressure windows, so that every
              instrument closes a window each second of event time: without definitions, then
              with every instrument defined as an option (two underlyings, calls and puts, two
              expiries: 12 groups by default), until the instruments agent has applied every record
              and the options agent has published every group window backfill makes of the
              same files; events/s of each and their ratio, taken in the same run.
The worker runs every agent as a deployment does (the instruments agent with every stage:
books, counts, bars with indicators and patterns, flow detection, deltas; and option groups).
The broker must be running (`make broker-start`). Medians over runs are printed, with every
run's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer

from app.commands import baselines
from app.commands.replay import PACE_TICK_S, ensure_topic, replay_files
from app.feeds.mbo_files import open_mbo
from app.file_driver import run_files
from app.settings import Settings, load_settings
from app.transport import freeze_heap
from load_tests.gen_mbo import GenConfig, option_definitions, write, write_definitions
from load_tests.worker_proc import BENCH_DIR, ROOT, BenchWorker, bench_worker
from tables.options import OPTIONS_PRESSURE, OPTIONS_SIGNALS

WARMUP_S = 2.0


def _file(records: int, instruments: int, rate: float, days_before: int = 0) -> Path:
    """A generated file; `days_before`: the same time of day, that many days earlier."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    tag = f"-{days_before}d" if days_before else ""
    path = BENCH_DIR / f"pipe-{records}-{instruments}-{int(rate)}{tag}.mbo.dbn.zst"
    if not path.exists():
        cfg = GenConfig(
            records=records,
            instruments=instruments,
            events_per_second=rate,
            seed=GenConfig.seed + days_before,
            start_ns=GenConfig.start_ns - days_before * 86_400_000_000_000,
        )
        write(path, cfg)
    return path


def throughput(
    w: BenchWorker, path: Path, total: int, before: tuple[Path, ...] = (), groups: int = 0
) -> dict[str, float]:
    """Replay `before` (definitions) and the file at full speed: events/s until the instruments
    agent has applied every record and the options agent has published `groups` rows."""
    settings = load_settings(w.env)
    t0 = time.monotonic()
    inputs = [str(p) for p in (*before, path)]
    summary = asyncio.run(replay_files(inputs, settings, progress=False))
    replay_s = time.monotonic() - t0
    done = w.wait_processed("instruments", total)
    if groups:
        done = max(done, w.wait_processed("options", groups))
    return {
        "events_per_s": total / (done - t0),
        "replay_events_per_s": total / replay_s,
        "messages": summary.messages,
    }


OPTIONS_ENV = {"TAPESTREAM_PRESSURE_INTERVAL": "1s"}


def _chain(instruments: int) -> Path:
    """Every generated instrument (ids from 1000) as an option: gen_mbo.option_definitions."""
    path = BENCH_DIR / f"chain-{instruments}.definition.dbn.zst"
    if not path.exists():
        ids = [1000 + i for i in range(instruments)]
        write_definitions(path, option_definitions(ids, ts=GenConfig.start_ns))
    return path


def _options(broker: str, guarantee: str, fast: Path, total: int, chain: Path) -> dict:
    files = [str(chain), str(fast)]
    made = run_files(files, load_settings(OPTIONS_ENV), progress=False).row_topics
    groups = len(made[OPTIONS_PRESSURE]) + len(made[OPTIONS_SIGNALS])
    env = {"TAPESTREAM_PROCESSING_GUARANTEE": guarantee, **OPTIONS_ENV}
    with bench_worker(broker, **env) as w:
        without = throughput(w, fast, total)["events_per_s"]
    with bench_worker(broker, **env) as w:
        with_options = throughput(w, fast, total, (chain,), groups)["events_per_s"]
    return {
        "without_events_per_s": without,
        "with_events_per_s": with_options,
        "ratio": with_options / without,
        "group_windows": float(groups),
    }


def _backlog(path: Path, total: int, broker: str, guarantee: str) -> dict[str, float]:
    """The file is in the raw topic before the worker starts: events/s from the first record
    applied to the last, with nothing else running but the broker."""

    def fill(env: dict[str, str]) -> None:
        asyncio.run(replay_files([str(path)], load_settings(env), progress=False))

    with bench_worker(broker, fill, TAPESTREAM_PROCESSING_GUARANTEE=guarantee) as w:
        while (first := w.processed("instruments")) == 0:
            time.sleep(0.01)
        t0 = time.monotonic()
        done = w.wait_processed("instruments", total)
    return {"events_per_s": (total - first) / (done - t0)}


def _speed_for(path: Path, rate: float) -> float:
    """The replay speed that sends the file's records at `rate` records/s."""
    ts = np.concatenate([c["ts_recv"] for c in open_mbo(path).chunks()])
    span_s = (int(ts.max()) - int(ts.min())) / 1e9
    return rate * span_s / len(ts)


async def _reader(settings: Settings, topics: list[str]) -> AIOKafkaConsumer:
    """A started read_committed consumer of `topics` from their start, polling eagerly."""
    # The worker declares them at start, perhaps not yet: a consumer subscribed to a missing
    # topic would not see it until its next metadata refresh.
    for topic in topics:
        await ensure_topic(settings, topic, settings.partitions)
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.bootstrap_servers,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        fetch_max_wait_ms=5,
    )
    await consumer.start()
    return consumer


async def time_rows(
    consumer: AIOKafkaConsumer,
    stop: asyncio.Event,
    clock: dict[str, float],
    speed: float,
    take: Callable[[float, np.ndarray, Any], None],
) -> None:
    """Read output rows until `stop`; for each message, `take(read_at, due, message)` with the
    monotonic time it was read and, per row, when replay sent the event that made it: the
    start of the pace tick its ts_recv fell due in (`clock`: replay's `on_pace_start`)."""
    while not stop.is_set():
        batch = await consumer.getmany(timeout_ms=50)
        now = time.monotonic()
        for msgs in batch.values():
            for m in msgs:
                ts = np.asarray(orjson.loads(m.value)["ts_recv"], dtype=np.float64)
                if not len(ts) or not clock:
                    continue
                due_s = (ts - clock["event"]) / (speed * 1e9)
                take(now, clock["wall"] + np.floor(due_s / PACE_TICK_S) * PACE_TICK_S, m)


async def _paced(w: BenchWorker, path: Path, rate: float) -> dict[str, float]:
    settings = load_settings(w.env)
    clock: dict[str, float] = {}

    def started(t0_wall: float, t0_event: int) -> None:
        clock["wall"], clock["event"] = t0_wall, float(t0_event)

    consumer = await _reader(settings, [settings.topic("book.deltas")])
    latencies: list[np.ndarray] = []
    # When the worker sent each row's message (its broker timestamp, wall clock ms): how much
    # of the latency is the worker's, and how much the broker's and this reader's.
    send_lags: list[np.ndarray] = []
    wall_minus_mono = time.time() - time.monotonic()
    stop = asyncio.Event()

    def take(now: float, due: np.ndarray, m: Any) -> None:
        keep = due - clock["wall"] >= WARMUP_S
        latencies.append(now - due[keep])
        sent = m.timestamp / 1e3 - wall_minus_mono
        send_lags.append(sent - due[keep])

    speed = _speed_for(path, rate)
    freeze_heap()  # this process is the consumer being timed; a full GC here is not latency
    task = asyncio.create_task(time_rows(consumer, stop, clock, speed, take))
    try:
        summary = await replay_files(
            [str(path)], settings, speed=speed, progress=False, on_pace_start=started
        )
        await asyncio.sleep(3.0)  # the last events' deltas
    finally:
        stop.set()
        await task
        await consumer.stop()
    lat = np.concatenate(latencies) if latencies else np.zeros(0)
    if not len(lat):
        raise RuntimeError(f"no book deltas were read; see {w.log_path}")
    sent = np.concatenate(send_lags)
    return {
        "rate_events_per_s": summary.records / summary.seconds,
        "rows": float(len(lat)),
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
        "p999_ms": float(np.percentile(lat, 99.9) * 1e3),
        "max_ms": float(lat.max() * 1e3),
        "sent_p50_ms": float(np.percentile(sent, 50) * 1e3),
        "sent_p99_ms": float(np.percentile(sent, 99) * 1e3),
    }


# Signals often enough to time at a real-time pace. Patterns: one-second bars, patterns over
# the last five, a volume spike at 1.2 times their mean, a breakout at any new high or low,
# RSI crossing 55 or 45. Flow: five-second windows scored against baselines loaded before the
# worker starts (`faust -A app baselines --load`) from two earlier days, any volume above the
# baseline with a flow z-score of 0.5, no cooldown.
SIGNAL_ENV = {
    "TAPESTREAM_BAR_INTERVALS": "1s",
    "TAPESTREAM_PATTERN_LOOKBACK": "5",
    "TAPESTREAM_PATTERN_BREAKOUT_PCT": "0",
    "TAPESTREAM_PATTERN_VOLUME_FACTOR": "1.2",
    "TAPESTREAM_PATTERN_RSI_HIGH": "55",
    "TAPESTREAM_PATTERN_RSI_LOW": "45",
    "TAPESTREAM_PRESSURE_INTERVAL": "5s",
    "TAPESTREAM_SIGNAL_MIN_SESSIONS": "1",
    "TAPESTREAM_SIGNAL_VOLUME_FLOOR": "1",
    "TAPESTREAM_SIGNAL_Z_VOLUME": "0.01",
    "TAPESTREAM_SIGNAL_Z_NET": "0.5",
    "TAPESTREAM_SIGNAL_COOLDOWN": "0",
}


def _load_baselines(history: list[Path]) -> Callable[[dict[str, str]], None]:
    def load(env: dict[str, str]) -> None:
        settings = load_settings(env)
        stage = baselines.build([str(p) for p in history], settings, progress=False).ifd
        assert stage is not None
        rows = baselines.table_rows(stage, settings.partitions)
        asyncio.run(baselines.load(settings, {"ifd": rows}, False))

    return load


async def _final_latency(w: BenchWorker, path: Path, rate: float) -> dict[str, float]:
    """Replay paced at `rate` records/s; for every signal and every delta, the time from the
    start of the replay tick at which the event time that made it final came due (a window's
    end plus the lateness; a delta's second's end) until a read_committed consumer had it."""
    settings = load_settings(w.env)
    clock: dict[str, float] = {}

    def started(t0_wall: float, t0_event: int) -> None:
        clock["wall"], clock["event"] = t0_wall, float(t0_event)

    topics = {settings.topic("signals"): "signals", settings.topic("deltas"): "deltas"}
    consumer = await _reader(settings, list(topics))
    got: dict[str, list[float]] = {"flow_signals": [], "pattern_signals": [], "deltas": []}
    # until the worker sent it (the message's broker timestamp): the worker's share
    sent: dict[str, list[float]] = {kind: [] for kind in got}
    wall_minus_mono = time.time() - time.monotonic()
    last_read = [time.monotonic()]
    stop = asyncio.Event()
    speed = _speed_for(path, rate)

    async def consume() -> None:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=50)
            now = time.monotonic()
            for tp, msgs in batch.items():
                topic = topics[tp.topic]
                last_read[0] = now
                for m in msgs:
                    row = orjson.loads(m.value)
                    if not clock or row.get("kind") == "processing_lag":
                        continue
                    if topic == "signals":
                        final = row["end"] + settings.lateness_ns
                        kind = "flow_signals" if row["kind"] == "ifd" else "pattern_signals"
                    else:
                        final, kind = row["start"] + 1_000_000_000, topic
                    due_s = (final - clock["event"]) / (speed * 1e9)
                    due = clock["wall"] + np.floor(due_s / PACE_TICK_S) * PACE_TICK_S
                    if due - clock["wall"] >= WARMUP_S:
                        got[kind].append(now - due)
                        sent[kind].append(m.timestamp / 1e3 - wall_minus_mono - due)

    freeze_heap()
    task = asyncio.create_task(consume())
    try:
        summary = await replay_files(
            [str(path)], settings, speed=speed, progress=False, on_pace_start=started
        )
        # the last windows and seconds: until nothing has come for 3 s
        while time.monotonic() - last_read[0] < 3.0:
            await asyncio.sleep(0.5)
    finally:
        stop.set()
        await task
        await consumer.stop()
    out: dict[str, float] = {"rate_events_per_s": summary.records / summary.seconds}
    for kind, values in got.items():
        if not values:
            raise RuntimeError(f"no {kind} were read; see {w.log_path}")
        lat = np.asarray(values)
        out[f"{kind}"] = float(len(lat))
        out[f"{kind}_p50_ms"] = float(np.percentile(lat, 50) * 1e3)
        out[f"{kind}_p99_ms"] = float(np.percentile(lat, 99) * 1e3)
        out[f"{kind}_max_ms"] = float(lat.max() * 1e3)
        out[f"{kind}_sent_p99_ms"] = float(np.percentile(sent[kind], 99) * 1e3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--instruments", type=int, default=100)
    ap.add_argument("--rate", type=float, default=50_000)
    ap.add_argument("--paced-seconds", type=float, default=20)
    # long enough for a few dozen pattern signals on one-second bars
    ap.add_argument("--signal-seconds", type=float, default=60)
    # Paced replay sends every 5 ms what came due, one message per instrument: messages/s grow
    # with the instruments that trade in each 5 ms, and Faust pays per message.
    ap.add_argument("--paced-instruments", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--guarantees", default="at_least_once,exactly_once")
    ap.add_argument(
        "--phases",
        default="throughput,backlog,latency,signals,options",
        help="which of throughput, backlog, latency, signals, options to run",
    )
    args = ap.parse_args(argv)
    phases = set(args.phases.split(","))

    fast = _file(args.records, args.instruments, 20_000)
    paced = _file(int(args.rate * args.paced_seconds), args.paced_instruments, args.rate)
    signal_file = _file(int(args.rate * args.signal_seconds), args.paced_instruments, args.rate)
    # history at a tenth of the rate: the paced day's volume stands out against it
    history = [
        _file(int(args.rate * args.signal_seconds / 10), args.paced_instruments, args.rate / 10, d)
        for d in (1, 2)
    ]
    total = orjson.loads(fast.with_name(fast.name + ".truth.json").read_bytes())["records"]
    broker = load_settings().broker
    out: dict[str, dict] = {}
    for guarantee in args.guarantees.split(","):
        runs = []
        for i in range(args.runs):
            print(f"{guarantee}: run {i + 1}/{args.runs}", file=sys.stderr)
            r = {}
            if "throughput" in phases:
                with bench_worker(broker, TAPESTREAM_PROCESSING_GUARANTEE=guarantee) as w:
                    r["throughput"] = throughput(w, fast, total)
            if "backlog" in phases:
                r["backlog"] = _backlog(fast, total, broker, guarantee)
            if "latency" in phases:
                with bench_worker(broker, TAPESTREAM_PROCESSING_GUARANTEE=guarantee) as w:
                    r["latency"] = asyncio.run(_paced(w, paced, args.rate))
            if "options" in phases:
                chain = _chain(args.instruments)
                r["options"] = _options(broker, guarantee, fast, total, chain)
            if "signals" in phases:
                env = {"TAPESTREAM_PROCESSING_GUARANTEE": guarantee, **SIGNAL_ENV}
                with bench_worker(broker, _load_baselines(history), **env) as w:
                    r["signals"] = asyncio.run(_final_latency(w, signal_file, args.rate))
            runs.append(r)
        out[guarantee] = {
            "median": {
                phase: {k: round(statistics.median(r[phase][k] for r in runs), 2) for k in keys}
                for phase, keys in runs[0].items()
            },
            "runs": runs,
        }
    print(
        orjson.dumps(
            {
                "throughput_file": str(fast.relative_to(ROOT)),
                "throughput_events": total,
                "paced_file": str(paced.relative_to(ROOT)),
                "signal_file": str(signal_file.relative_to(ROOT)),
                "paced_rate": args.rate,
                "instruments": args.instruments,
                "paced_instruments": args.paced_instruments,
                "runs": args.runs,
                "results": out,
            },
            option=orjson.OPT_INDENT_2,
        ).decode()
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
