"""The WebSocket feed under load: many clients on one worker while it processes a paced replay.

    python -m load_tests.bench_websocket [--clients 1000] [--rate 50000] [--seconds 20]
        [--records 1000000] [--instruments 100] [--runs 3]

Each run, against the running broker (`make broker-start`):
  throughput  the file replayed at full speed to a fresh worker with no client, then to a fresh
              worker with `--clients` clients subscribed (signals, and the BBO of the busiest
              instrument): events/s until the instruments agent applied every record, and
              their ratio, taken in the same run;
  latency     the same clients while a fresh worker processes the file paced at `--rate`
              events/s for `--seconds`: for every update a client receives, the time from the
              worker's send (`sent` in the frame) to the client's receipt (p50/p99/max), frames
              per second delivered to all clients together, and the slowest client's p99;
  slow        in the latency phase one more client subscribes to everything busy and never
              reads: when the worker closes it and the others' p99 while it was connected.
The clients run in this process, on one event loop: on a 2-core machine they share the CPU with
the broker and the worker, so the latency includes their own queueing. Prints JSON: the
median of the runs and every run's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson

from app.commands.replay import replay_files
from app.feeds.mbo_files import open_mbo
from app.settings import load_settings
from load_tests.bench_pipeline import _file, _speed_for
from load_tests.worker_proc import BenchWorker, bench_worker
from load_tests.ws_clients import never_reading_client


def _busiest(path: Path) -> int:
    counts: dict[int, int] = {}
    for chunk in open_mbo(path).chunks():
        ids, n = np.unique(chunk["instrument_id"], return_counts=True)
        for i, c in zip(ids.tolist(), n.tolist(), strict=True):
            counts[i] = counts.get(i, 0) + c
    return max(counts, key=lambda i: counts[i])


class Clients:
    """`n` WebSocket clients on one worker, each subscribed to signals and one instrument's
    BBO, recording the latency of every update."""

    def __init__(self, url: str, n: int, instrument_id: int) -> None:
        self.url, self.n, self.iid = url, n, instrument_id
        self.latency: list[list[float]] = [[] for _ in range(n)]
        self.frames = 0
        self.subscribed = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        conn = aiohttp.TCPConnector(limit=0)
        self._session = aiohttp.ClientSession(connector=conn)
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.n)]
        deadline = time.monotonic() + 120
        while self.subscribed < 2 * self.n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.subscribed} of {2 * self.n} subscriptions answered")
            await asyncio.sleep(0.1)

    async def _client(self, i: int) -> None:
        assert self._session is not None
        async with self._session.ws_connect(self.url, heartbeat=None) as ws:
            await ws.send_str('{"op": "subscribe", "channel": "signals"}')
            await ws.send_str(
                orjson.dumps(
                    {"op": "subscribe", "channel": "bbo", "instrument_id": self.iid}
                ).decode()
            )
            mine = self.latency[i]
            async for msg in ws:
                now = time.time_ns()
                f = orjson.loads(msg.data)
                kind = f["type"]
                if kind == "update":
                    mine.append((now - f["sent"]) / 1e6)
                    self.frames += 1
                elif kind == "subscribed":
                    self.subscribed += 1

    def reset(self) -> None:
        self.latency = [[] for _ in range(self.n)]
        self.frames = 0

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def summary(self, seconds: float) -> dict[str, float]:
        every = [x for per in self.latency for x in per]
        if not every:
            return {"frames": 0.0}
        per_client = [float(np.percentile(p, 99)) for p in self.latency if p]
        a = np.asarray(every)
        return {
            "frames": float(len(a)),
            "frames_per_s": len(a) / seconds,
            "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max()),
            "slowest_client_p99_ms": max(per_client),
        }


def _throughput(w: BenchWorker, path: Path, total: int) -> float:
    t0 = time.monotonic()
    asyncio.run(replay_files([str(path)], load_settings(w.env), progress=False))
    return total / (w.wait_processed("instruments", total) - t0)


def _with_clients(broker: str, path: Path, total: int, n: int, iid: int) -> float:
    with bench_worker(broker) as w:

        async def run() -> float:
            clients = Clients(f"ws://{w.url.removeprefix('http://')}/ws", n, iid)
            await clients.start()
            try:
                return await asyncio.to_thread(_throughput, w, path, total)
            finally:
                await clients.stop()

        return asyncio.run(run())


def _latency(broker: str, path: Path, n: int, iid: int, rate: float) -> dict[str, Any]:
    with bench_worker(broker) as w:

        async def run() -> dict[str, Any]:
            clients = Clients(f"ws://{w.url.removeprefix('http://')}/ws", n, iid)
            await clients.start()
            port = int(w.url.rsplit(":", 1)[1])
            slow = await asyncio.to_thread(never_reading_client, port)
            t0 = time.monotonic()
            closed_after: float | None = None
            settings, speed = load_settings(w.env), _speed_for(path, rate)
            # Its own thread and loop: the clients' work must not hold back its pace.
            replay = asyncio.create_task(
                asyncio.to_thread(
                    lambda: asyncio.run(
                        replay_files([str(path)], settings, speed=speed, progress=False)
                    )
                )
            )
            while not replay.done():
                await asyncio.sleep(0.5)
                if closed_after is None and _closed_slow(w) > 0:
                    closed_after = time.monotonic() - t0
            summary = await replay
            seconds = time.monotonic() - t0
            slow.close()
            await clients.stop()
            out = clients.summary(seconds)
            out["replay_events_per_s"] = summary.records / summary.seconds
            out["slow_client_closed_after_s"] = closed_after
            return out

        return asyncio.run(run())


def _closed_slow(w: BenchWorker) -> float:
    import urllib.request

    with urllib.request.urlopen(f"{w.url}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("tapestream_ws_closed_slow_total "):
                return float(line.split()[1])
    return 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=50_000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--instruments", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    broker = load_settings().broker
    fast = _file(args.records, args.instruments, 20_000)
    paced = _file(int(args.rate * args.seconds), args.instruments, args.rate)
    iid = _busiest(paced)
    runs = []
    for r in range(args.runs):
        with bench_worker(broker) as w:
            alone = _throughput(w, fast, args.records)
        with_clients = _with_clients(broker, fast, args.records, args.clients, iid)
        latency = _latency(broker, paced, args.clients, iid, args.rate)
        run = {
            "throughput_alone_events_per_s": alone,
            "throughput_with_clients_events_per_s": with_clients,
            "throughput_ratio": with_clients / alone,
            **latency,
        }
        runs.append(run)
        print(f"run {r + 1}: {orjson.dumps(run).decode()}", file=sys.stderr)
    keys = [k for k in runs[0] if all(isinstance(x.get(k), int | float) for x in runs)]
    report = {
        "clients": args.clients,
        "rate": args.rate,
        "instrument_id": iid,
        "median": {k: statistics.median(x[k] for x in runs) for k in keys},
        "runs": runs,
    }
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
