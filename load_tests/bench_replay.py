"""Throughput of the foundation, printed as JSON: medians of --runs runs, ratios within a run.

    python -m load_tests.bench_replay [--records 2000000] [--instruments 100] [--runs 3]
                                      [--no-broker]

Stages, each over the same generated file:
  decode     read the .dbn.zst into MBO arrays (the floor every path pays)
  batch      decode + cut into raw-topic messages (Batcher)
  backfill   decode + batch + the instruments agent's logic, no broker
  replay     decode + batch + produce to the local broker (acks=all, idempotent)
  worker     replay + one real `faust -A app worker` counting everything; measured from the
             start of the replay until the instruments agent has applied every record
The broker stages need the local broker (`make broker-start`) and are skipped with --no-broker.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import orjson

from app.commands.replay import replay_files
from app.feeds.batching import Batcher
from app.feeds.mbo_files import open_mbo
from app.file_driver import run_files
from app.settings import load_settings
from load_tests.gen_mbo import GenConfig, write
from load_tests.worker_proc import bench_worker

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("decode", "batch", "backfill", "replay", "worker")


def _decode(path: Path) -> int:
    return sum(len(c) for c in open_mbo(path).chunks())


def _batch(path: Path) -> int:
    b = Batcher()
    n = 0
    for c in open_mbo(path).chunks():
        n += sum(len(m.records) for m in b.add(c))
    return n + sum(len(m.records) for m in b.flush_all())


def _timed(fn, *args) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    n = fn(*args)
    return time.perf_counter() - t0, n


def _worker_run(path: Path, total: int, broker: str) -> dict:
    with bench_worker(broker) as w:
        settings = load_settings(w.env)
        t0 = time.monotonic()
        summary = asyncio.run(replay_files([str(path)], settings, progress=False))
        t_replay = time.monotonic() - t0
        done = w.wait_processed("instruments", total, limit_s=300)
        return {"replay_s": t_replay, "worker_s": done - t0, "messages": summary.messages}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--instruments", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-broker", action="store_true")
    args = ap.parse_args(argv)

    bench_dir = ROOT / "var" / "bench"
    bench_dir.mkdir(parents=True, exist_ok=True)
    path = bench_dir / f"synth-{args.records}-{args.instruments}.mbo.dbn.zst"
    if not path.exists():
        write(path, GenConfig(records=args.records, instruments=args.instruments))
    total = _decode(path)
    settings = load_settings()
    broker = settings.broker

    runs: list[dict[str, float]] = []
    for _ in range(args.runs):
        r: dict[str, float] = {}
        for name, fn in (("decode", _decode), ("batch", _batch)):
            secs, n = _timed(fn, path)
            assert n == total
            r[name] = total / secs
        t0 = time.perf_counter()
        res = run_files([str(path)], settings, progress=False)
        r["backfill"] = res.records / (time.perf_counter() - t0)
        if not args.no_broker:
            w = _worker_run(path, total, broker)
            r["replay"] = total / w["replay_s"]
            r["worker"] = total / w["worker_s"]
            r["messages"] = w["messages"]
        r["backfill_vs_decode"] = r["backfill"] / r["decode"]
        if "worker" in r:
            r["worker_vs_replay"] = r["worker"] / r["replay"]
        runs.append(r)

    med = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
    print(
        orjson.dumps(
            {
                "file": str(path.relative_to(ROOT)),
                "records": total,
                "instruments": args.instruments,
                "runs": args.runs,
                "median_records_per_s": {k: round(v) for k, v in med.items() if k in STAGES},
                "median_ratios": {k: round(v, 3) for k, v in med.items() if "_vs_" in k},
                "messages_per_replay": med.get("messages"),
                "per_run": [{k: round(v, 3) for k, v in r.items()} for r in runs],
            },
            option=orjson.OPT_INDENT_2,
        ).decode()
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
