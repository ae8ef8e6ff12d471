"""The lake sink's cost, printed as JSON.

    python -m load_tests.bench_lake [--records 4000000] [--instruments 100] [--runs 4]
        [--phases offline,pipeline,idle_loop,alone] [--lead 10] [--sink-args '--no-idle']

offline   the sink's own work on a generated file's raw MBO with no broker (4,096-record
          messages into `LakeSink`, files written as the sink writes them): records/s, and the
          lake's bytes per record against the raw topic's 56.
pipeline  per run, two fresh workers, each fed the same file by replay at full speed: one alone,
          one with `faust -A app lake` (default topics, and its defaults: the idle class, and
          waiting while less than a CPU is spare; --sink-args to change them) started --lead
          seconds (10) before the replay and running beside it, in turn which goes first.
          Events/s until the instruments agent applied every record, for each, and their
          ratio (the market path's throughput with the sink over without, taken in the same
          run); the seconds until the lake held every raw record, from the replay's start and
          from when the worker was done, and its bytes per raw record.
idle_loop per run, two fresh workers fed the same file: one alone, one beside a busy loop in
          the idle scheduling class, as the sink runs (not a default phase). What any work on
          the CPU time the market path leaves costs it on this machine.
alone     per run, two fresh workers fed the same file, both alone (not a default phase): the
          ratio's spread when nothing runs beside either, the bench's own resolution.
Medians over runs, with every run's figures. The broker must be running (`make broker-start`);
the sink shares the machine's two cores with the worker, the replay and the broker.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import pyarrow.parquet as pq

from app.feeds.mbo_files import open_mbo
from app.lake_files import Lake
from app.lake_rows import RawLayout
from app.lake_sink import LakeSink, write
from app.settings import load_settings
from load_tests.bench_pipeline import _file, throughput
from load_tests.worker_proc import BENCH_DIR, ROOT, bench_worker
from models.mbo import MBO_SIZE

MESSAGE_RECORDS = 4096


def offline(path: Path) -> dict[str, float]:
    records = np.concatenate(list(open_mbo(path).chunks()))
    root = Path(tempfile.mkdtemp(dir=BENCH_DIR))
    try:
        lake = Lake(str(root))
        sink = LakeSink({"raw": ("mbo.raw", RawLayout())}, roll_s=1e9, file_bytes=64 << 20)
        t0 = time.perf_counter()
        for offset, at in enumerate(range(0, len(records), MESSAGE_RECORDS)):
            piece = records[at : at + MESSAGE_RECORDS]
            for r in sink.add("raw", 0, offset, b"1", piece.tobytes()):
                write(lake, r)
        for r in sink.close():
            write(lake, r)
        seconds = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in root.rglob("*.parquet"))
        return {
            "records_per_s": len(records) / seconds,
            "bytes_per_record": size / len(records),
            "raw_bytes_per_record": MBO_SIZE,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


# One process that wants a core all the time, in the idle class as the sink runs: what any
# work on the CPU time the market path leaves costs it, sink or not.
IDLE_LOOP = (
    "import os\nos.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\nwhile True: pass"
)


def beside(
    broker: str, path: Path, total: int, companion: list[str] | None, companion_first: bool
) -> dict[str, float]:
    """Two fresh workers fed the same file in turn: one alone, one with `companion` (a command;
    None: nothing, the bench's own spread) running beside it."""
    out: dict[bool, float] = {}
    for with_it in (True, False) if companion_first else (False, True):
        with bench_worker(broker) as w:
            proc = subprocess.Popen(companion) if with_it and companion else None
            try:
                out[with_it] = throughput(w, path, total)["events_per_s"]
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"{companion} ended: is the idle class refused here?")
            finally:
                if proc is not None:
                    proc.kill()
                    proc.wait()
    return {
        "events_per_s_alone": out[False],
        "events_per_s_beside": out[True],
        "ratio": out[True] / out[False],
        "companion_first": float(companion_first),
    }


def _lake_rows(root: Path) -> int:
    total = 0
    for f in (root / "mbo.raw").rglob("*.parquet"):
        total += pq.ParquetFile(f).metadata.num_rows
    return total


def pipeline(
    broker: str, path: Path, total: int, sink_args: list[str], lead_s: float, sink_first: bool
) -> dict[str, float]:
    """`sink_first`: the run with the sink goes first, so that alternating runs cancel what
    the order alone does (a warmer broker page cache for the second, say)."""
    out: dict[str, float] = {}
    for with_sink in (True, False) if sink_first else (False, True):
        if with_sink:
            out |= _with_sink(broker, path, total, sink_args, lead_s)
        else:
            with bench_worker(broker) as w:
                out["events_per_s_alone"] = throughput(w, path, total)["events_per_s"]
    return {
        "events_per_s_alone": out["events_per_s_alone"],
        "events_per_s_with_sink": out["events_per_s_with_sink"],
        "ratio": out["events_per_s_with_sink"] / out["events_per_s_alone"],
        "lake_caught_up_s": out["lake_caught_up_s"],
        "lake_after_market_s": out["lake_caught_up_s"] - total / out["events_per_s_with_sink"],
        "lake_raw_bytes_per_record": out["lake_raw_bytes_per_record"],
        "sink_waited_s": out["sink_waited_s"],
        "sink_first": float(sink_first),
    }


def _with_sink(
    broker: str, path: Path, total: int, sink_args: list[str], lead_s: float
) -> dict[str, float]:
    with bench_worker(broker) as w:
        root = Path(tempfile.mkdtemp(dir=BENCH_DIR))
        log = open(root.with_suffix(".log"), "ab")  # noqa: SIM115 - the process keeps it
        command = ["lake", "--root", str(root), "--roll-seconds", "5", *sink_args]
        sink = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "app", *command],
            cwd=ROOT,
            env=w.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            # Up and in its group before the clock starts: its start (importing the app takes
            # a few seconds of CPU) is not what a running deployment pays.
            time.sleep(lead_s)
            if sink.poll() is not None:
                raise RuntimeError(f"the sink did not start; see {log.name}")
            t0 = time.monotonic()
            with_sink = throughput(w, path, total)["events_per_s"]
            while _lake_rows(root) < total:
                if sink.poll() is not None or time.monotonic() - t0 > 600:
                    raise RuntimeError(f"the sink stopped or stalled; see {log.name}")
                time.sleep(0.5)
            lake_s = time.monotonic() - t0
            raw_bytes = sum(p.stat().st_size for p in (root / "mbo.raw").rglob("*.parquet"))
        finally:
            sink.terminate()
            sink.wait(timeout=60)
            shutil.rmtree(root, ignore_errors=True)
            log.close()
    summary = orjson.loads(Path(log.name).read_bytes().splitlines()[-1])
    return {
        "events_per_s_with_sink": with_sink,
        "lake_caught_up_s": lake_s,
        "lake_raw_bytes_per_record": raw_bytes / total,
        "sink_waited_s": summary["waited_s"],
    }


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=4_000_000)
    ap.add_argument("--instruments", type=int, default=100)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--phases", default="offline,pipeline")
    ap.add_argument("--lead", type=float, default=10.0, help="seconds the sink starts first")
    ap.add_argument(
        "--sink-args", default="", help="more `faust -A app lake` options, e.g. '--topics all'"
    )
    args = ap.parse_args(argv)
    path = _file(args.records, args.instruments, 50_000)
    total = sum(len(c) for c in open_mbo(path).chunks())
    broker = load_settings().broker
    out: dict[str, object] = {"records": total}
    phases = args.phases.split(",")
    for name, run in (
        ("offline", lambda _i: offline(path)),
        (
            "pipeline",
            lambda i: pipeline(
                broker, path, total, args.sink_args.split(), args.lead, sink_first=i % 2 == 1
            ),
        ),
        (
            "idle_loop",
            lambda i: beside(broker, path, total, [sys.executable, "-c", IDLE_LOOP], i % 2 == 1),
        ),
        ("alone", lambda i: beside(broker, path, total, None, i % 2 == 1)),
    ):
        if name not in phases:
            continue
        runs = []
        for i in range(args.runs):
            runs.append(run(i))
            print(f"{name} run {i + 1}: {runs[-1]}", file=sys.stderr)
        out[name] = {"median": _medians(runs), "runs": runs}
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
