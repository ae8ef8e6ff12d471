"""Chaos: a whole deployment under at least 20 faults at random moments, then checked record
for record against the file driver's run of the same input. Bounded in time; prints a JSON
report and draws a timeline.

    python -m load_tests.chaos --seed 1                      # exactly_once
    python -m load_tests.chaos --seed 2 --guarantee at_least_once

The deployment: the stand-in Databento gateway serving a generated MBO file at its recorded
pace, the `live` source streaming it to the raw topic, three workers (more join), the lake sink
writing every topic to Parquet, and WebSocket clients following signals and a book on the
workers. Its broker is a local one of its own (`deploy/local/kafka.sh` on `--kafka-port`,
default 9192), so that restarting it disturbs nothing else on the machine.

Faults, each kind at least once and then drawn at random, 4-12 s apart: kill -9 of a worker
(state kept; or its data directory wiped; or again while it restores its tables), a worker
paused (SIGSTOP) past the session timeout and resumed, a new worker joining, kill -9 of the
live source, kill -9 of the lake sink, and a broker restart.

Afterwards, once every record is processed: every output topic equals the file driver's rows
(under exactly_once, read committed, record for record; under at_least_once, once repeats are
dropped: repeats are identical rows); every worker serves the file driver's books and counts;
the lake holds each record of each topic exactly once and no temporary file; the dead-letter
topic is empty; no process exited but those killed; and each WebSocket connection saw its
frames numbered without a hole. The report gives the seed, each fault with its time to recover
(until what it stopped moves on: the output, the raw topic for the source, the lake's files for
the sink) and until the gathered `/instruments/` view answers whole again, the largest stall of
the output and its longest crawl (under 1% of its messages), and the samples behind them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from app.feeds.mbo_files import open_mbo
from app.file_driver import BOOK_TABLE_DEPTH, run_files
from app.lake_files import is_lock_name, parse_name
from app.settings import load_settings
from load_tests.gen_mbo import GenConfig, write
from load_tests.topic_rows import (
    consume_all,
    expected_rows,
    lake_row_counts,
    live_rows,
    topic_row_counts,
)
from load_tests.worker_proc import (
    ROOT,
    ManagedProcess,
    comparable_counts,
    delete_deployment,
    free_port,
    get_json,
)

FAULTS = ("kill", "wipe", "recovering", "pause", "join", "source", "sink", "broker")
# Drawn after each kind has come once: workers' faults most, the broker's least (each restart
# costs the whole deployment some seconds).
WEIGHTS = {"kill": 4, "wipe": 2, "recovering": 2, "pause": 2, "join": 1, "source": 3}
WEIGHTS |= {"sink": 2, "broker": 1}
MAX_WORKERS = 5
LAKE_TOPICS = "mbo.raw,trades,bars,indicators,pressure,signals,deltas"
API_KEY = "db-standin-chaos-key-000000000000"
# Flow windows of a minute, scored from the first session on: signals fire within minutes of
# event time, so the signal path and its WebSocket clients are under the faults too.
SIGNALS_ENV = {
    "TAPESTREAM_PRESSURE_INTERVAL": "1m",
    "TAPESTREAM_SIGNAL_MIN_SESSIONS": "1",
    "TAPESTREAM_SIGNAL_VOLUME_FLOOR": "1",
    "TAPESTREAM_SIGNAL_Z_NET": "1.0",
}
KAFKA_SH = ROOT / "deploy" / "local" / "kafka.sh"


@dataclass
class Fault:
    at: float  # seconds since the deployment started
    kind: str
    target: str
    ended: float = 0.0  # when the fault's own action was over (restarted, resumed, ...)
    recovered: float | None = None  # what the fault stopped moves on again
    whole: float | None = None  # the gathered view answers whole again, and further on
    input_over: bool = False  # the source had sent the whole file by then

    def report(self) -> dict[str, Any]:
        def since(t: float | None) -> float | None:
            return None if t is None else round(t - self.at, 1)

        out = {"at_s": round(self.at, 1), "kind": self.kind, "target": self.target}
        out["seconds_to_recover"] = since(self.recovered)
        out["seconds_to_whole_view"] = since(self.whole)
        if self.input_over:
            out["input_over"] = True  # nothing left to move on with: no recovery time
        return out


@dataclass
class Sample:
    t: float
    raw_end: int | None
    out_end: int | None
    counted: int | None
    lake_files: int


class Broker:
    """The run's own local broker, through the project's script."""

    def __init__(self, port: int, log: Path) -> None:
        # not one named by KAFKA_BROKER: the script would use that instead of starting its own
        env = {k: v for k, v in os.environ.items() if k != "KAFKA_BROKER"}
        self.env = {**env, "KAFKA_PORT": str(port)}
        self.bootstrap = f"127.0.0.1:{port}"
        self.log = log

    def _run(self, action: str) -> None:
        with open(self.log, "ab") as log:
            subprocess.run(
                ["bash", str(KAFKA_SH), action], env=self.env, stdout=log, stderr=log, check=True
            )

    def start(self) -> None:
        self._run("start")

    def stop(self) -> None:
        self._run("stop")


class Monitor(threading.Thread):
    """Every half second: the raw topic's and the output's committed ends, the records the
    workers have counted, and the lake's file count. Its samples time each recovery and the
    output's stalls."""

    def __init__(self, run: ChaosRun) -> None:
        super().__init__(daemon=True)
        self.run_ = run
        self.samples: list[Sample] = []
        self.done = threading.Event()

    def run(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        r = self.run_
        parts = range(r.settings.partitions)
        raw = [TopicPartition(r.settings.topic("mbo.raw"), p) for p in parts]
        out = [TopicPartition(r.settings.topic("book.deltas"), p) for p in parts]
        consumer: AIOKafkaConsumer | None = None
        while not self.done.is_set():
            raw_end = out_end = None
            try:
                if consumer is None:
                    consumer = AIOKafkaConsumer(
                        bootstrap_servers=r.broker.bootstrap, isolation_level="read_committed"
                    )
                    await asyncio.wait_for(consumer.start(), 5)
                ends = await asyncio.wait_for(consumer.end_offsets(raw + out), 2)
                raw_end = sum(ends[tp] for tp in raw)
                out_end = sum(ends[tp] for tp in out)
            except Exception:  # the broker restarting: a new client once it is back
                if consumer is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(consumer.stop(), 5)
                consumer = None
            lake_files = sum(1 for _ in r.lake_root.rglob("*.parquet"))
            counted = await asyncio.to_thread(r.counted)
            r.watch()
            self.samples.append(Sample(r.now(), raw_end, out_end, counted, lake_files))
            await asyncio.sleep(0.5)
        if consumer is not None:
            await consumer.stop()

    def progress_after(self, t: float, what: str, since: float) -> float | None:
        """The first sample's time after `t` at which `what` is beyond its value at `since`."""
        before = [getattr(s, what) for s in self.samples if s.t <= since]
        base = max((v for v in before if v is not None), default=-1)
        for s in self.samples:
            v = getattr(s, what)
            if s.t >= t and v is not None and v > base:
                return s.t
        return None

    def input_end(self) -> float | None:
        """When the raw topic reached its final end: the source had sent everything."""
        ends = [(s.t, s.raw_end) for s in self.samples if s.raw_end is not None]
        if not ends:
            return None
        final = ends[-1][1]
        return next(t for t, v in ends if v == final)

    def longest_crawl(self, until: float, share: float) -> dict[str, Any]:
        """The longest stretch in which the output grew by less than `share` of all it wrote:
        a deployment that dribbles out a message now and then is as stalled as one that
        writes nothing."""
        s = [x for x in self.samples if x.t <= until and x.out_end is not None]
        if not s:
            return {"from_s": 0.0, "seconds": 0.0}
        limit = share * max(x.out_end for x in s)  # type: ignore[type-var]
        best, i = (0.0, 0.0), 0
        for j in range(len(s)):
            while s[j].out_end - s[i].out_end > limit:  # type: ignore[operator]
                i += 1
            if s[j].t - s[i].t > best[1]:
                best = (s[i].t, s[j].t - s[i].t)
        return {"from_s": round(best[0], 1), "seconds": round(best[1], 1), "share": share}

    def largest_stall(self, until: float) -> dict[str, Any]:
        """The longest time the output's end stood still before every record was processed."""
        best = (0.0, 0.0)
        last_t, last_v = None, None
        for s in self.samples:
            if s.t > until or s.out_end is None:
                continue
            if last_v is None or s.out_end > last_v:
                if last_t is not None and last_v is not None and s.t - last_t > best[1]:
                    best = (last_t, s.t - last_t)
                last_t, last_v = s.t, s.out_end
        return {"from_s": round(best[0], 1), "seconds": round(best[1], 1)}


class WsClients(threading.Thread):
    """WebSocket clients on the workers, each subscribed to every signal and to one
    instrument's BBO, reconnecting to the next live worker when theirs goes away. Per
    connection, the frames of each subscription must be numbered without a hole."""

    def __init__(self, run: ChaosRun, clients: int, instrument: int) -> None:
        super().__init__(daemon=True)
        self.run_ = run
        self.clients = clients
        self.instrument = instrument
        self.done = threading.Event()
        self.stats: Counter = Counter()
        self.holes: list[str] = []
        self.signal_ids: set[str] = set()

    def run(self) -> None:
        asyncio.run(self._all())

    async def _all(self) -> None:
        await asyncio.gather(*(self._client(n) for n in range(self.clients)))

    async def _client(self, n: int) -> None:
        import aiohttp

        turn = n
        async with aiohttp.ClientSession() as session:
            while not self.done.is_set():
                live = [w for w in self.run_.workers if w.alive()]
                if not live:
                    await asyncio.sleep(1)
                    continue
                w = live[turn % len(live)]
                turn += 1
                try:
                    await self._follow(session, w.url + "/ws")
                except Exception:
                    self.stats["disconnects"] += 1
                await asyncio.sleep(1)

    async def _follow(self, session: Any, url: str) -> None:
        import aiohttp

        async with session.ws_connect(url, heartbeat=10) as ws:
            self.stats["connections"] += 1
            await ws.send_json({"op": "subscribe", "channel": "signals", "units": "raw"})
            await ws.send_json(
                {"op": "subscribe", "channel": "bbo", "instrument_id": self.instrument}
            )
            seqs: dict[int, int] = {}
            while not self.done.is_set():
                try:
                    msg = await ws.receive(timeout=1)
                except TimeoutError:
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:  # a close or an error ends it
                    return
                frame = orjson.loads(msg.data)
                kind = frame.get("type")
                self.stats[kind] += 1
                sub = frame.get("sub")
                if kind == "subscribed":
                    seqs[sub] = 0
                    for row in frame.get("snapshot") or ():
                        if "id" in row and "kind" in row:
                            self.signal_ids.add(row["id"])
                elif kind in ("update", "gap"):
                    if frame["seq"] != seqs.get(sub, -2) + 1:
                        self.holes.append(f"{url} sub {sub}: {seqs.get(sub)} then {frame['seq']}")
                    seqs[sub] = frame["seq"]
                    data = frame.get("data") or {}
                    if "id" in data and "kind" in data:
                        self.signal_ids.add(data["id"])


@dataclass
class ChaosRun:
    args: argparse.Namespace
    rng: random.Random
    out: Path
    t0: float = field(default_factory=time.monotonic)
    workers: list[ManagedProcess] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    exits: list[dict[str, Any]] = field(default_factory=list)
    others: list[ManagedProcess] = field(default_factory=list)  # source, sink, gateway

    def __post_init__(self) -> None:
        tag = f"chaos{secrets.token_hex(4)}"
        self.broker = Broker(self.args.kafka_port, self.out / "broker.log")
        self.lake_root = self.out / "lake"
        env = {k: v for k, v in os.environ.items() if k != "KAFKA_BROKER"}
        self.env = {
            **env,
            "KAFKA_BROKER": f"kafka://{self.broker.bootstrap}",
            "TAPESTREAM_APP_ID": tag,
            "TAPESTREAM_TOPIC_PREFIX": f"{tag}.",
            "TAPESTREAM_PROCESSING_GUARANTEE": self.args.guarantee,
            "TAPESTREAM_DATA_DIR": str(self.out / "state"),
            "DATABENTO_API_KEY": API_KEY,
            "PYTHONUNBUFFERED": "1",
            **SIGNALS_ENV,
        }
        self.settings = load_settings(self.env)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def faust(self, name: str, *argv: str) -> ManagedProcess:
        """`faust -A app ARGV...` in the deployment's environment."""
        cmd = [sys.executable, "-m", "faust", "-A", "app", *argv]
        return ManagedProcess(name, cmd, self.env, self.out / f"{name}.log")

    def add_worker(self) -> ManagedProcess:
        name = f"w{len(self.workers)}"
        env = {
            **self.env,
            "TAPESTREAM_WEB_PORT": str(free_port()),
            "TAPESTREAM_DATA_DIR": str(self.out / f"state-{name}"),
        }
        w = ManagedProcess.worker(name, env, self.out / f"{name}.log")
        w.start()
        self.workers.append(w)
        return w

    def watch(self) -> None:
        """A process that ended by itself is a finding: noted, with its log's end, and started
        again, as a supervisor would, so that the run goes on."""
        for p in [*self.workers, *self.others]:
            if p.exited_by_itself():
                assert p.proc is not None
                tail = p.log.read_text(errors="replace").splitlines()[-15:]
                self.exits.append(
                    {
                        "name": p.name,
                        "at_s": round(self.now(), 1),
                        "code": p.proc.returncode,
                        "log": tail,
                    }
                )
                print(f"{self.now():6.1f}s {p.name} exited by itself", file=sys.stderr, flush=True)
                p.start()

    def counted(self) -> int | None:
        """Records the deployment has counted, asked of the first worker that answers whole."""
        for w in list(self.workers):
            if not w.alive():
                continue
            try:
                body = get_json(w.url + "/instruments/", timeout=1)
            except Exception:
                continue
            if not body.get("partial"):
                return int(body["records"])
        return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    out = Path(args.out or tempfile.mkdtemp(prefix=f"chaos-{args.seed}-"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "chaos.mbo.dbn"
    # The recorded pace: `records / rate` seconds of event time, served at that pace.
    cfg = GenConfig(
        records=args.records,
        instruments=args.instruments,
        orders_per_instrument=100,
        events_per_second=args.rate,
        seed=args.seed,
    )
    write(path, cfg)
    first_ts = int(np.concatenate(list(open_mbo(path).chunks()))["ts_event"].min())
    t_ref = time.monotonic()
    result = run_files([str(path)], load_settings(SIGNALS_ENV), progress=False)
    want_rows = expected_rows(result)
    books = {r["instrument_id"]: r for r in result.tables["books"]}
    counts = comparable_counts(result.tables["instrument-stats"])
    reference_s = time.monotonic() - t_ref

    r = ChaosRun(args, rng, out)
    r.broker.start()
    gw_port = free_port()
    gateway = r.faust(
        "gateway",
        "gateway",
        str(path),
        "--port",
        str(gw_port),
        "--dataset",
        "GLBX.MDP3",
        "--speed",
        "1",
        "--horizon",
        str(7 * 86400),
    )
    source = r.faust(
        "source",
        "live",
        "--gateway",
        f"127.0.0.1:{gw_port}",
        "--heartbeat",
        "1",
        "--stall-timeout",
        "2.5",
        "--dataset",
        "GLBX.MDP3",
        "--symbols",
        "ALL_SYMBOLS",
        "--start",
        str(first_ts),
    )
    sink = r.faust(
        "sink",
        "lake",
        "--root",
        str(r.lake_root),
        "--topics",
        LAKE_TOPICS,
        "--instance",
        "chaos",
        "--roll-seconds",
        "5",
    )
    r.others += [source, sink, gateway]
    monitor = Monitor(r)
    ws = WsClients(r, args.ws_clients, instrument=min(books))
    report: dict[str, Any] = {"seed": args.seed, "guarantee": args.guarantee, "dir": str(out)}
    report["records"] = result.records
    try:
        for _ in range(3):
            r.add_worker()
        sink.start()
        _wait(lambda: all(_ready(w) for w in r.workers), 90, "the workers ready")
        gateway.start()
        time.sleep(1)  # its port open
        source.start()
        monitor.start()
        ws.start()
        for kind in _schedule(rng, args.faults, args.kinds):
            time.sleep(rng.uniform(4, 12))
            _fault(r, kind, source, sink)
        # Every record of the file through the workers.
        total = result.records
        done = _wait(lambda: r.counted() == total, args.finish_limit, "every record processed")
        processed_at = r.now()
        report["seconds_to_all_processed"] = round(processed_at, 1)
        # The lake behind them: its files roll every 5 s.
        time.sleep(8)
        ws.done.set()
        monitor.done.set()
        ws.join(timeout=10)
        monitor.join(timeout=10)
        input_end = monitor.input_end()
        for f in r.faults:
            what = {"source": "raw_end", "sink": "lake_files"}.get(f.kind, "out_end")
            f.input_over = input_end is not None and f.at >= input_end
            if not f.input_over:
                f.recovered = monitor.progress_after(f.ended, what, since=f.at)
                f.whole = monitor.progress_after(f.ended, "counted", since=f.at)
        report["faults"] = [f.report() for f in r.faults]
        report["fault_kinds"] = dict(Counter(f.kind for f in r.faults))
        recover = [f.recovered - f.at for f in r.faults if f.recovered is not None]
        report["recovery_seconds"] = _spread(recover)
        whole = [f.whole - f.at for f in r.faults if f.whole is not None]
        report["whole_view_seconds"] = _spread(whole)
        report["largest_output_stall"] = monitor.largest_stall(processed_at)
        report["longest_output_crawl"] = monitor.longest_crawl(processed_at, share=0.01)
        (out / "samples.json").write_bytes(orjson.dumps([vars(x) for x in monitor.samples]))
        report["reference_seconds"] = round(reference_s, 1)
        report["exits"] = r.exits
        checks, details = _check(r, want_rows, books, counts, done)
        report["checks"] = checks
        report["differences"] = details
        report["websocket"] = {
            **dict(ws.stats),
            "holes": ws.holes[:10],
            "signals_seen": len(ws.signal_ids),
            "signals_fired": len(want_rows.get("signals", [])),
        }
        checks["websocket_numbered_without_holes"] = not ws.holes
        checks["no_unexpected_exit"] = not report["exits"]
        report["ok"] = all(checks.values())
        _plot(monitor, r.faults, out / "timeline.png", args)
        report["timeline"] = str(out / "timeline.png")
        return report
    finally:
        ws.done.set()
        monitor.done.set()
        for p in [source, sink, gateway, *r.workers]:
            p.stop()
        if not args.keep:
            delete_deployment(r.env)
        if not args.keep_broker:
            r.broker.stop()


def _schedule(rng: random.Random, n: int, allowed: list[str]) -> list[str]:
    """Each kind once, the rest drawn by weight; no more joins than MAX_WORKERS allows."""
    kinds = list(allowed)
    weights = {k: w for k, w in WEIGHTS.items() if k in allowed}
    joins = 1
    while len(kinds) < n:
        kind = rng.choices(list(weights), weights=list(weights.values()))[0]
        if kind == "join":
            if joins >= MAX_WORKERS - 3:
                continue
            joins += 1
        kinds.append(kind)
    rng.shuffle(kinds)
    return kinds


def _fault(r: ChaosRun, kind: str, source: ManagedProcess, sink: ManagedProcess) -> None:
    rng = r.rng
    live = [w for w in r.workers if w.alive()] or r.workers
    w = rng.choice(live)
    target = {"source": "source", "sink": "sink", "broker": "broker"}.get(kind, w.name)
    f = Fault(r.now(), kind, target)
    r.faults.append(f)
    if kind == "join":
        f.target = r.add_worker().name
    elif kind == "pause":
        w.pause(r.settings.session_timeout + rng.uniform(3, 8))
    elif kind in ("kill", "wipe", "recovering"):
        w.kill9()
        if kind != "kill":
            shutil.rmtree(w.env["TAPESTREAM_DATA_DIR"], ignore_errors=True)
        time.sleep(rng.uniform(1, 5))
        w.start()
        if kind == "recovering":
            # again while it restores its tables from the changelogs, from nothing
            _wait(lambda: _in_recovery(w), 30, f"{w.name} restoring", quiet=True)
            time.sleep(rng.uniform(0, 1.5))
            w.kill9()
            time.sleep(rng.uniform(1, 3))
            w.start()
    elif kind == "source":
        source.kill9()
        time.sleep(rng.uniform(1, 4))
        source.start()
    elif kind == "sink":
        sink.kill9()
        time.sleep(rng.uniform(1, 3))
        sink.start()
    elif kind == "broker":
        r.broker.stop()
        time.sleep(rng.uniform(2, 6))
        r.broker.start()
    f.ended = r.now()
    print(f"{f.at:6.1f}s {kind} {f.target} ({f.ended - f.at:.0f}s)", file=sys.stderr, flush=True)


def _ready(w: ManagedProcess) -> bool:
    try:
        with urllib.request.urlopen(w.url + "/ready", timeout=2) as resp:
            return resp.status == 200
    except Exception:
        return False


def _in_recovery(w: ManagedProcess) -> bool:
    """Up, and not yet ready: its partitions assigned or its tables being restored."""
    try:
        get_json(w.url + "/health", timeout=1)
    except Exception:
        return False
    return not _ready(w)


def _wait(check: Any, timeout: float, what: str, quiet: bool = False) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except Exception:
            pass
        time.sleep(0.25)
    if not quiet:
        print(f"timed out after {timeout:.0f}s waiting for {what}", file=sys.stderr, flush=True)
    return False


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.array(values)
    return {"median": round(float(np.median(a)), 1), "max": round(float(a.max()), 1)}


def _check(
    r: ChaosRun,
    want_rows: dict[str, list[bytes]],
    books: dict[int, dict],
    counts: list[dict],
    processed: bool,
) -> tuple[dict[str, bool], dict[str, Any]]:
    """Each check's outcome, and what differed where one failed."""
    checks: dict[str, bool] = {"every_record_processed": processed}
    details: dict[str, Any] = {}
    boot = r.broker.bootstrap
    prefix = r.settings.topic_prefix
    got = live_rows(boot, prefix, list(want_rows))
    differing = {}
    for topic, rows in want_rows.items():
        mine = got[topic]
        same = sorted(set(mine)) == sorted(rows)
        if r.args.guarantee == "exactly_once":
            same = same and len(mine) == len(rows)
        if not same:
            missing, extra = set(rows) - set(mine), set(mine) - set(rows)
            repeated = [row for row, n in Counter(mine).items() if n > 1]
            differing[topic] = {
                "rows": len(mine),
                "want": len(rows),
                "missing": len(missing),
                "extra": len(extra),
                "repeated": len(repeated),
                # the rows themselves, to tell what was lost or made up
                "missing_rows": [orjson.loads(x) for x in sorted(missing)[:5]],
                "extra_rows": [orjson.loads(x) for x in sorted(extra)[:5]],
                "repeated_rows": [orjson.loads(x) for x in sorted(repeated)[:5]],
            }
    checks["outputs_equal_the_file_driver"] = not differing
    details["outputs_differing"] = differing

    wrong = []
    for w in r.workers:
        if not w.alive():
            continue
        try:
            for iid, book in books.items():
                view = get_json(f"{w.url}/books/{iid}/?depth={BOOK_TABLE_DEPTH}&units=raw")
                view.pop("position", None)
                if view != book:
                    wrong.append(f"{w.name} book {iid}")
                    break
            stats = get_json(w.url + "/instruments/?units=raw")["instruments"]
            if comparable_counts(stats) != counts:
                wrong.append(f"{w.name} counts")
        except Exception as exc:
            wrong.append(f"{w.name}: {exc!r}")
    checks["workers_serve_the_file_drivers_books"] = not wrong
    details["workers_differing"] = wrong

    lake: dict[str, str] = {}
    for base in [d.name for d in r.lake_root.iterdir() if d.is_dir()]:
        in_lake = lake_row_counts(r.lake_root, base)
        in_topic = topic_row_counts(boot, prefix, base)
        if in_lake != in_topic:
            lake[base] = f"{len(in_lake - in_topic)} extra, {len(in_topic - in_lake)} missing"
    files = (p for p in r.lake_root.rglob("*") if p.is_file())
    temporary = [str(p) for p in files if parse_name(p.name) is None and not is_lock_name(p.name)]
    checks["lake_holds_each_record_once"] = not lake and not temporary
    details["lake"] = {"differing": lake, "not_lake_files": temporary[:5]}

    dead = consume_all(boot, r.settings.topic("dead.letters"), timeout=10)
    checks["no_dead_letters"] = not dead
    details["dead_letters"] = [orjson.loads(v).get("reason") for _, v, _, _ in dead[:5]]
    return checks, details


def _plot(monitor: Monitor, faults: list[Fault], path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = monitor.samples
    t = [x.t for x in s]
    fig, ax = plt.subplots(figsize=(14, 6))
    ax.plot(t, [x.raw_end if x.raw_end is not None else np.nan for x in s], label="raw topic end")
    ax.plot(t, [x.out_end if x.out_end is not None else np.nan for x in s], label="book.deltas end")
    ax2 = ax.twinx()
    counted = [x.counted if x.counted is not None else np.nan for x in s]
    ax2.plot(t, counted, color="black", lw=1, label="records counted")
    colors = dict(zip(FAULTS, plt.get_cmap("tab10").colors, strict=False))
    for f in faults:
        ax.axvline(f.at, color=colors[f.kind], ls="--", lw=1)
        ax.text(f.at, ax.get_ylim()[1], f" {f.kind} {f.target}", rotation=90, va="top", fontsize=7)
    ax.set_xlabel("seconds")
    ax.set_ylabel("messages (committed end offsets)")
    ax2.set_ylabel("records counted by the workers")
    ax.set_title(f"chaos seed {args.seed}, {args.guarantee}: {len(faults)} faults")
    ax.legend(loc="upper left")
    ax2.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--guarantee", default="exactly_once", choices=["exactly_once", "at_least_once"])
    p.add_argument("--faults", type=int, default=20, help="at least the 8 kinds")
    p.add_argument("--records", type=int, default=450_000)
    p.add_argument("--instruments", type=int, default=16)
    p.add_argument("--rate", type=float, default=1_000, help="records per second, as served")
    p.add_argument("--ws-clients", type=int, default=6)
    p.add_argument("--kafka-port", type=int, default=9192)
    p.add_argument("--finish-limit", type=float, default=600, help="seconds after the faults")
    p.add_argument("--out", help="directory for logs, lake, report and plot")
    p.add_argument("--keep", action="store_true", help="keep the topics (for a post-mortem)")
    p.add_argument("--keep-broker", action="store_true", help="leave the broker running")
    p.add_argument(
        "--kinds",
        nargs="+",
        choices=FAULTS,
        help="fault kinds (default: all; under at_least_once all but pause, which that "
        "guarantee cannot survive exactly: docs/state-and-recovery.md)",
    )
    args = p.parse_args(argv)
    if args.kinds is None:
        skip = {"pause"} if args.guarantee == "at_least_once" else set()
        args.kinds = [k for k in FAULTS if k not in skip]
    if args.faults < len(args.kinds):
        p.error(f"--faults: at least {len(args.kinds)}, one of each kind")
    # A timeout's SIGTERM ends the run through its clean-up: no process or topic left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # The monitor's client retries through each broker restart; its complaints are expected.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    report = run(args)
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    (Path(report["dir"]) / "report.json").write_bytes(orjson.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
