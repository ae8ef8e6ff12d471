"""The live path against replay of the same file, in the same run; JSON on stdout.

    python -m load_tests.bench_live [--records 400000] [--instruments 50] [--runs 3]
                                    [--paced-records 100000] [--rate 10000]

Needs the local broker (`make broker-start`). Per run, over one generated file:
  replay   `replay_files` as fast as the broker takes it: records/s
  live     the stand-in gateway (its own process, everything published at once) through the
           real `databento.Live` client and the live source, from `start=` the first record
           to every record acknowledged by the broker: records/s
  paced    a second file served at its recorded pace (--rate events/s): per raw-topic message,
           the time from the gateway publishing its last record (the gateway's clock) to the
           producer sending it (the message's timestamp, ms): p50 / p99 / max in ms, over the
           records published from 1 s after the source's first send (before that, its
           start-up replay)
The live source runs in this process, as `faust -A app live` would run it; its topics get a
prefix of their own and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer

from app.commands.replay import delete_topics, ensure_topic, replay_files
from app.feeds.mbo_files import open_mbo
from app.live.source import LiveConfig, LiveSource
from app.settings import Settings, load_settings
from load_tests.gen_mbo import GenConfig, write
from models.mbo import MBO_DTYPE

ROOT = Path(__file__).resolve().parents[1]
KEY = "db-bench-key-000000000000000bench"


def _gateway(path: Path, *args: str) -> tuple[subprocess.Popen, int, float]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "faust",
            "-A",
            "app",
            "gateway",
            str(path),
            "--dataset",
            "GLBX.MDP3",
            "--port",
            str(port),
            *args,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if "stand-in gateway" not in line:
        proc.kill()
        raise RuntimeError(f"the gateway did not start: {line!r}")
    return proc, port, float(line.rsplit(" ", 1)[1])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _live(settings: Settings, port: int, start: int, total: int) -> float:
    """Seconds from the live source's start until `total` records are acknowledged."""
    topic = settings.topic("mbo.raw")
    partitions = await ensure_topic(settings, topic, settings.partitions)
    cfg = LiveConfig(
        dataset="GLBX.MDP3",
        symbols=["ALL_SYMBOLS"],
        start=start,
        gateway="127.0.0.1",
        port=port,
        heartbeat_s=5,
        definitions=False,
    )
    source = LiveSource(cfg, settings, KEY, topic)
    stop = asyncio.Event()
    t0 = time.perf_counter()
    task = asyncio.create_task(source.run(stop, partitions))
    while source.stats.delivered.records < total:
        if task.done():
            task.result()
            raise RuntimeError("the live source stopped early")
        await asyncio.sleep(0.01)
    secs = time.perf_counter() - t0
    stop.set()
    await task
    return secs


async def _send_latencies(
    settings: Settings, t0_epoch: float, recv0: int, total: int
) -> np.ndarray:
    """Per message: producer timestamp minus the gateway's publish time of its last record."""
    consumer = AIOKafkaConsumer(
        settings.topic("mbo.raw"),
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    out: list[float] = []
    seen = 0
    try:
        deadline = time.monotonic() + 120
        while seen < total and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                for m in msgs:
                    if not m.value:  # a watermark marker
                        continue
                    recs = np.frombuffer(m.value, dtype=MBO_DTYPE)
                    seen += len(recs)
                    published = t0_epoch + (int(recs["ts_recv"][-1]) - recv0) / 1e9
                    out.append((published, m.timestamp / 1000))
    finally:
        await consumer.stop()
    pairs = np.array(out)
    # Records published before the source was streaming come through its start-up replay;
    # the live path's latency is that of records published after.
    streaming = pairs[:, 1].min() + 1.0
    pairs = pairs[pairs[:, 0] > streaming]
    return (pairs[:, 1] - pairs[:, 0]) * 1000


def _one_run(path: Path, paced: Path, total: int, paced_total: int) -> dict:
    tag = f"bench-live-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "TAPESTREAM_TOPIC_PREFIX": f"{tag}-r.", "TAPESTREAM_APP_ID": tag}
    r: dict = {}
    s_replay = load_settings(env)
    t0 = time.perf_counter()
    asyncio.run(replay_files([str(path)], s_replay, progress=False))
    r["replay"] = total / (time.perf_counter() - t0)

    first = int(np.concatenate(list(open_mbo(path).chunks()))["ts_event"].min())
    gw, port, _ = _gateway(path, "--all-at-once", "--horizon", str(10 * 86400))
    try:
        s_live = load_settings({**env, "TAPESTREAM_TOPIC_PREFIX": f"{tag}-l."})
        r["live"] = total / asyncio.run(_live(s_live, port, first, total))
    finally:
        gw.terminate()
        gw.wait(timeout=10)
    r["live_vs_replay"] = r["live"] / r["replay"]

    recs = np.concatenate(list(open_mbo(paced).chunks()))
    gw, port, t0_epoch = _gateway(paced, "--speed", "1", "--horizon", str(10 * 86400))
    try:
        s_paced = load_settings({**env, "TAPESTREAM_TOPIC_PREFIX": f"{tag}-p."})
        asyncio.run(_live(s_paced, port, int(recs["ts_event"].min()), paced_total))
        lat = asyncio.run(_send_latencies(s_paced, t0_epoch, int(recs["ts_recv"][0]), paced_total))
    finally:
        gw.terminate()
        gw.wait(timeout=10)
    r["paced_send_ms_p50"] = float(np.percentile(lat, 50))
    r["paced_send_ms_p99"] = float(np.percentile(lat, 99))
    r["paced_send_ms_max"] = float(lat.max())
    asyncio.run(delete_topics(s_replay.bootstrap_servers, [f"{tag}-"]))
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=400_000)
    ap.add_argument("--instruments", type=int, default=50)
    ap.add_argument("--paced-records", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=10_000.0, help="paced file: events/s")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)

    bench_dir = ROOT / "var" / "bench"
    bench_dir.mkdir(parents=True, exist_ok=True)
    path = bench_dir / f"live-{args.records}-{args.instruments}.mbo.dbn.zst"
    if not path.exists():
        write(path, GenConfig(records=args.records, instruments=args.instruments))
    paced = bench_dir / f"live-paced-{args.paced_records}-{int(args.rate)}.mbo.dbn.zst"
    if not paced.exists():
        write(
            paced,
            GenConfig(
                records=args.paced_records,
                instruments=args.instruments,
                events_per_second=args.rate,
            ),
        )
    total = sum(len(c) for c in open_mbo(path).chunks())
    paced_total = sum(len(c) for c in open_mbo(paced).chunks())
    runs = [_one_run(path, paced, total, paced_total) for _ in range(args.runs)]
    med = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
    print(
        orjson.dumps(
            {
                "records": total,
                "paced_records": paced_total,
                "paced_rate_events_per_s": args.rate,
                "runs": args.runs,
                "median": {k: round(v, 3) for k, v in med.items()},
                "per_run": [{k: round(v, 3) for k, v in r.items()} for r in runs],
            },
            option=orjson.OPT_INDENT_2,
        ).decode()
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
