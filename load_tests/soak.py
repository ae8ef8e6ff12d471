"""A soak: one worker with every stage on, fed a steady stream for a long time, sampled every
few seconds. Prints a JSON report and draws each series.

    python -m load_tests.soak [--minutes 30] [--rate 50000] [--instruments 100]
        [--pass-seconds 60] [--sample-every 5] [--warmup-minutes 5]
        [--guarantee at_least_once] [--out var/soak]

The stream is a generated file of `--pass-seconds` of events at `--rate`, sent again and
again, each pass moved on in time (ts_recv, ts_event), order ids and sequence numbers, so the
worker sees one continuous feed: books cleared and rebuilt by each pass's opening snapshot,
bars, indicators, flow windows and deltas closing as event time moves. It is paced at `--rate`
records/s by replay's own clock (`replay_inputs`).

Every `--sample-every` seconds it takes the worker's RSS, open files (and how many of them are
RocksDB's SST files) and threads (from /proc),
its event loop's tasks and consumer lag (from /metrics), and the records it applied. A
read_committed consumer of book.deltas in this process times every level change from the 20 ms
replay tick that sent its event (as bench_pipeline's latency phase), p50/p99 per sample.

After `--warmup-minutes` it checks that:
- RSS is flat: its least-squares slope is under `--rss-slope-limit` MB per hour;
- latency does not drift: the last third's p99 is within 1.5 times the first third's, plus
  20 ms;
- open files other than RocksDB's SST files, and tasks, do not grow: the last sample's are
  within 10% (plus 5) of the warm-up's;
- the SST files settle: RocksDB keeps each open, and their number climbs while each
  database's levels fill, then holds where compaction keeps it, so the last third's median is
  within 10% (plus 5) of the middle third's;
- the worker kept up: lag at the end is under 2 seconds of input.
The broker must be running (`make broker-start`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from app.commands.replay import replay_inputs
from app.feeds.mbo_files import open_mbo
from app.settings import load_settings
from app.transport import freeze_heap
from load_tests.bench_pipeline import _file, _reader, _speed_for, time_rows
from load_tests.worker_proc import ROOT, BenchWorker, bench_worker

# Order ids of each pass move on by this much: far above any the generator makes.
ORDER_ID_STEP = 1 << 40


class LoopedStream:
    """A file's records again and again, each pass moved on in time, order ids and sequence
    numbers until `total` records were given: replay_inputs reads it as it reads a file."""

    def __init__(self, path: Path, total: int) -> None:
        self.path = path
        self.total = total
        self.bytes_read = 0
        self.passes = 0
        base = np.concatenate(list(open_mbo(path).chunks()))
        self.base = base
        ts = base["ts_recv"].astype(np.int64)
        gap = max(1, int((ts.max() - ts.min()) / max(1, len(base))))
        self.time_step = int(ts.max() - ts.min()) + gap
        seq = base["sequence"].astype(np.int64)
        self.seq_step = int(seq.max() - seq.min()) + 1
        self.size = total * base.itemsize  # progress, in the bytes the records take

    def definitions(self) -> list[Any]:
        return []

    def chunks(self, chunk_records: int = 65_536) -> Iterator[np.ndarray]:
        given = 0
        while given < self.total:
            k = self.passes
            self.passes += 1
            for start in range(0, len(self.base), chunk_records):
                piece = self.base[start : start + chunk_records][: self.total - given]
                if not len(piece):
                    return
                # Moved on piece by piece: copying a whole pass at once (168 MB at 50k/s for
                # 60 s) held up the replay loop for long enough to show as latency.
                yield self._moved_on(piece.copy(), k)
                given += len(piece)
                self.bytes_read += piece.nbytes

    def _moved_on(self, piece: np.ndarray, k: int) -> np.ndarray:
        for name in ("ts_recv", "ts_event"):
            piece[name] += np.uint64(k * self.time_step)
        live = piece["order_id"] != 0
        piece["order_id"][live] += np.uint64(k * ORDER_ID_STEP)
        piece["sequence"] += np.uint32((k * self.seq_step) % (1 << 32))
        return piece


@dataclass
class Sample:
    t: float
    rss_mb: float
    open_fds: int
    threads: int
    table_files: int  # of the open files, RocksDB's SST files
    tasks: float | None
    lag: float | None
    applied: float | None
    rocksdb_mb: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    rows: int = 0


def _metric_sum(text: str, name: str, labels: str = "") -> float | None:
    values = [
        float(m.group(1))
        for m in re.finditer(rf"^{name}(?:{{[^}}]*{labels}[^}}]*}})? (\S+)$", text, re.MULTILINE)
    ]
    return sum(values) if values else None


def _mb(value: float | None) -> float | None:
    return None if value is None else value / 2**20


def _proc(pid: int) -> tuple[float, int, int, int]:
    """RSS (MB), open files, of them RocksDB's SST files, threads."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(re.search(r"^VmRSS:\s+(\d+)", status, re.MULTILINE).group(1))  # type: ignore[union-attr]
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE).group(1))  # type: ignore[union-attr]
    fds = os.listdir(f"/proc/{pid}/fd")
    tables = 0
    for fd in fds:
        with contextlib.suppress(OSError):  # closed since it was listed
            tables += os.readlink(f"/proc/{pid}/fd/{fd}").endswith(".sst")
    return rss_kb / 1024, len(fds), tables, threads


@dataclass(eq=False)
class Sampler(threading.Thread):
    worker: BenchWorker
    every: float
    t0: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)
    stopped: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        threading.Thread.__init__(self, daemon=True)

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            try:
                rss, fds, tables, threads = _proc(self.worker.proc.pid)
            except (FileNotFoundError, ProcessLookupError):
                return  # the worker is gone; the run notices
            try:
                with urllib.request.urlopen(f"{self.worker.url}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                text = ""
            self.samples.append(
                Sample(
                    t=time.monotonic() - self.t0,
                    rss_mb=rss,
                    open_fds=fds,
                    threads=threads,
                    table_files=tables,
                    tasks=_metric_sum(text, "tapestream_event_loop_tasks"),
                    lag=_metric_sum(text, "tapestream_consumer_lag", 'topic="[^"]*mbo.raw"'),
                    applied=_metric_sum(
                        text, "tapestream_records_processed_total", 'agent="instruments"'
                    ),
                    rocksdb_mb=_mb(
                        _metric_sum(text, "tapestream_rocksdb_memory_bytes", 'part="cache"')
                    ),
                )
            )


async def _feed(w: BenchWorker, stream: LoopedStream, speed: float, sampler: Sampler) -> dict:
    """Replay the stream paced, timing book.deltas as they are read; latencies go into the
    samples by the time they were read."""
    settings = load_settings(w.env)
    clock: dict[str, float] = {}

    def started(t0_wall: float, t0_event: int) -> None:
        clock["wall"], clock["event"] = t0_wall, float(t0_event)

    consumer = await _reader(settings, [settings.topic("book.deltas")])
    read_at: list[np.ndarray] = []
    latencies: list[np.ndarray] = []
    stop = asyncio.Event()

    def take(now: float, due: np.ndarray, _: Any) -> None:
        latencies.append(now - due)
        read_at.append(np.full(len(due), now - sampler.t0))

    freeze_heap()
    task = asyncio.create_task(time_rows(consumer, stop, clock, speed, take))
    try:
        summary = await replay_inputs(
            [stream], settings, speed=speed, progress=False, on_pace_start=started
        )
        await asyncio.sleep(5.0)  # the last events' deltas
    finally:
        stop.set()
        await task
        await consumer.stop()
    if latencies:
        lat, at = np.concatenate(latencies), np.concatenate(read_at)
        for i, s in enumerate(sampler.samples):
            lo = sampler.samples[i - 1].t if i else 0.0
            window = lat[(at > lo) & (at <= s.t)]
            if len(window):
                s.rows = len(window)
                s.p50_ms = float(np.percentile(window, 50) * 1e3)
                s.p99_ms = float(np.percentile(window, 99) * 1e3)
    return {
        "records": summary.records,
        "seconds": round(summary.seconds, 1),
        "rate_events_per_s": round(summary.records / summary.seconds),
        "passes": stream.passes,
    }


def _slope_per_hour(t: list[float], v: list[float]) -> float:
    if len(t) < 2:
        return 0.0
    return float(np.polyfit(np.asarray(t) / 3600.0, np.asarray(v), 1)[0])


def _thirds(values: list[float]) -> tuple[list[float], list[float]]:
    n = len(values) // 3
    return values[:n], values[-n:] if n else []


def _middle_third(values: list[float]) -> list[float]:
    n = len(values) // 3
    return values[n:-n] if n else values


def _report(args: argparse.Namespace, fed: dict, samples: list[Sample]) -> dict[str, Any]:
    warm = [s for s in samples if s.t >= args.warmup_minutes * 60]
    if len(warm) < 3:
        raise RuntimeError(f"only {len(warm)} samples after the warm-up; run longer")
    t = [s.t for s in warm]
    rss = [s.rss_mb for s in warm]
    p99 = [s.p99_ms for s in warm if s.p99_ms is not None]
    p50 = [s.p50_ms for s in warm if s.p50_ms is not None]
    first99, last99 = _thirds(p99)
    fds = [s.open_fds for s in warm]
    # RocksDB keeps every SST file open. Their number climbs while each database's levels
    # fill, then holds where compaction keeps it; the other files must not grow at all.
    tables = [s.table_files for s in warm]
    others = [s.open_fds - s.table_files for s in warm]
    _, last_tables = _thirds(tables)
    middle_tables = _middle_third(tables)
    tasks = [s.tasks for s in warm if s.tasks is not None]
    lags = [s.lag for s in warm if s.lag is not None]
    end_lag = lags[-1] if lags else None
    rss_slope = _slope_per_hour(t, rss)
    rocks_t = [s.t for s in warm if s.rocksdb_mb is not None]
    rocks = [s.rocksdb_mb for s in warm if s.rocksdb_mb is not None]
    checks = {
        "rss_flat": rss_slope < args.rss_slope_limit,
        "latency_no_drift": bool(first99 and last99)
        and statistics.median(last99) <= 1.5 * statistics.median(first99) + 20,
        "open_files_flat": others[-1] <= others[0] * 1.1 + 5,
        "table_files_settle": bool(last_tables)
        and statistics.median(last_tables) <= statistics.median(middle_tables) * 1.1 + 5,
        "tasks_flat": bool(tasks) and tasks[-1] <= tasks[0] * 1.1 + 5,
        "kept_up": end_lag is not None and end_lag < 2 * args.rate,
    }

    def spread(v: list[float]) -> dict[str, float] | None:
        if not v:
            return None
        return {"first": v[0], "median": statistics.median(v), "max": max(v), "last": v[-1]}

    return {
        "minutes": args.minutes,
        "rate_target": args.rate,
        "instruments": args.instruments,
        "guarantee": args.guarantee,
        "fed": fed,
        "samples": len(samples),
        "warmup_s": args.warmup_minutes * 60,
        "rss_mb": {**(spread(rss) or {}), "slope_mb_per_hour": round(rss_slope, 2)},
        # RocksDB's share of the RSS (block cache, memtables charged to it): bounded by its
        # budget, so growth here is the cache filling, not a leak.
        "rocksdb_mb": {
            **(spread(rocks) or {}),
            "slope_mb_per_hour": round(_slope_per_hour(rocks_t, rocks), 2),
        },
        "latency_p50_ms": spread(p50),
        "latency_p99_ms": {
            **(spread(p99) or {}),
            "first_third_median": statistics.median(first99) if first99 else None,
            "last_third_median": statistics.median(last99) if last99 else None,
            "slope_ms_per_hour": round(_slope_per_hour(t[: len(p99)], p99), 2),
        },
        "consumer_lag_records": spread(lags),
        "open_files": spread(fds),
        "open_files_not_tables": spread(others),
        "table_files": {
            **(spread(tables) or {}),
            "middle_third_median": statistics.median(middle_tables),
            "last_third_median": statistics.median(last_tables) if last_tables else None,
        },
        "event_loop_tasks": spread(tasks),
        "threads": spread([s.threads for s in warm]),
        "checks": checks,
        "ok": all(checks.values()),
    }


def _plot(samples: list[Sample], path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s.t / 60 for s in samples]
    series = [
        ("RSS (MB)", None),
        ("latency p50 / p99 (ms)", None),
        ("consumer lag (records)", [s.lag if s.lag is not None else np.nan for s in samples]),
        ("open files", None),
        ("event loop tasks", [s.tasks if s.tasks is not None else np.nan for s in samples]),
    ]
    fig, axes = plt.subplots(len(series), 1, figsize=(12, 13), sharex=True)
    for ax, (title, values) in zip(axes, series, strict=True):
        if title.startswith("RSS"):
            ax.plot(minutes, [s.rss_mb for s in samples], label="worker RSS")
            rocks = [s.rocksdb_mb if s.rocksdb_mb is not None else np.nan for s in samples]
            ax.plot(minutes, rocks, label="of it RocksDB (budget)")
            ax.legend(loc="upper left")
        elif title == "open files":
            ax.plot(minutes, [s.open_fds for s in samples], label="all")
            ax.plot(minutes, [s.table_files for s in samples], label="of them RocksDB's SST files")
            ax.legend(loc="upper left")
        elif values is None:
            ax.plot(minutes, [s.p50_ms or np.nan for s in samples], label="p50")
            ax.plot(minutes, [s.p99_ms or np.nan for s in samples], label="p99")
            ax.legend(loc="upper left")
        else:
            ax.plot(minutes, values)
        ax.axvline(args.warmup_minutes, color="grey", ls="--", lw=1)
        ax.set_ylabel(title)
    axes[-1].set_xlabel("minutes")
    axes[0].set_title(
        f"soak: {args.rate:,} records/s, {args.instruments} instruments, {args.guarantee}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--rate", type=int, default=50_000, help="records per second")
    p.add_argument("--instruments", type=int, default=100)
    p.add_argument("--pass-seconds", type=int, default=60, help="the generated file's length")
    p.add_argument("--sample-every", type=float, default=5.0)
    p.add_argument("--warmup-minutes", type=float, default=5.0)
    p.add_argument("--rss-slope-limit", type=float, default=20.0, help="MB per hour")
    p.add_argument(
        "--guarantee", choices=["at_least_once", "exactly_once"], default="at_least_once"
    )
    p.add_argument("--broker", default=os.environ.get("KAFKA_BROKER", "kafka://127.0.0.1:9092"))
    p.add_argument("--out", type=Path, default=ROOT / "var" / "soak")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    path = _file(args.rate * args.pass_seconds, args.instruments, args.rate)
    speed = _speed_for(path, args.rate)
    stream = LoopedStream(path, int(args.rate * args.minutes * 60))
    print(
        f"soak: {stream.total:,} records at {args.rate:,}/s for {args.minutes} min "
        f"({len(stream.base):,} per pass)",
        file=sys.stderr,
    )
    env = {"TAPESTREAM_PROCESSING_GUARANTEE": args.guarantee}
    with bench_worker(args.broker, **env) as w:
        sampler = Sampler(w, args.sample_every)
        sampler.start()
        try:
            fed = asyncio.run(_feed(w, stream, speed, sampler))
        finally:
            sampler.stopped.set()
            sampler.join(timeout=10)
        if w.proc.poll() is not None:
            raise RuntimeError(f"the worker exited ({w.proc.returncode}); see {w.log_path}")
    samples = sampler.samples
    report = _report(args, fed, samples)
    report["plot"] = str(args.out / "soak.png")
    (args.out / "samples.json").write_bytes(
        orjson.dumps([asdict(s) for s in samples], option=orjson.OPT_INDENT_2)
    )
    (args.out / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    _plot(samples, args.out / "soak.png", args)
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
