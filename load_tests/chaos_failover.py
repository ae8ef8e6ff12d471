"""Failover chaos: real workers sharing a deployment are killed (kill -9), wiped, restarted and
joined at random moments while a file is replayed; at the end every worker must serve the books
and counts that `backfill` computes from the same file. Bounded in time; prints one JSON line
per round and a summary.

    python -m load_tests.chaos_failover --records 2000000 --instruments 100 --speed 8 \\
        --rounds 4 --seed 1

Each round picks a guarantee (alternating, or `--guarantees`), starts `--workers` workers, and
while the replay runs repeats: wait 4-15 s, then one of kill -9 and restart after 2-8 s (local
state kept), kill -9 with the data directory wiped, a new worker joining (up to one more than
the partition count), or a worker paused (SIGSTOP) 3-8 s past the session timeout and resumed.
The broker must be running (`make broker-start`).
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from app.file_driver import BOOK_TABLE_DEPTH, run_files
from app.settings import load_settings
from load_tests.gen_mbo import GenConfig, write
from load_tests.worker_proc import (
    ROOT,
    ManagedProcess,
    comparable_counts,
    counts_differing,
    delete_deployment,
    free_port,
)

REPLAY = [sys.executable, "-m", "faust", "-A", "app", "replay"]
SESSION_TIMEOUT_S = load_settings().session_timeout


@dataclass
class Round:
    guarantee: str
    events: list[str] = field(default_factory=list)
    exits: list[str] = field(default_factory=list)


def _counted(workers: list[ManagedProcess]) -> int | None:
    for w in workers:
        if not w.alive():
            continue
        try:
            body = w.get("/instruments/")
        except OSError:
            continue
        if not body.get("partial"):
            return int(body["records"])
    return None


def run_round(
    n: int, path: Path, want: dict[str, Any], args: argparse.Namespace, rng: random.Random
) -> dict[str, Any]:
    guarantee = args.guarantees[n % len(args.guarantees)]
    # Named afresh each run (the seed fixes the faults, not the names): a run stopped before
    # its clean-up leaves its topics behind, and a rerun must not replay into them.
    tag = f"chaos{secrets.token_hex(4)}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{tag}-"))
    base = {
        **os.environ,
        "KAFKA_BROKER": args.broker,
        "TAPESTREAM_APP_ID": tag,
        "TAPESTREAM_TOPIC_PREFIX": f"{tag}.",
        "TAPESTREAM_PARTITIONS": str(args.partitions),
        "TAPESTREAM_PROCESSING_GUARANTEE": guarantee,
        "TAPESTREAM_DATA_DIR": str(tmp / "state"),
        "PYTHONUNBUFFERED": "1",
    }
    rnd = Round(guarantee)
    workers: list[ManagedProcess] = []

    def add_worker() -> ManagedProcess:
        name = f"w{len(workers)}"
        env = {
            **base,
            "TAPESTREAM_WEB_PORT": str(free_port()),
            "TAPESTREAM_DATA_DIR": str(tmp / f"state-{name}"),
        }
        w = ManagedProcess.worker(name, env, tmp / f"{name}.log")
        w.start()
        workers.append(w)
        return w

    t0 = time.monotonic()
    try:
        for _ in range(args.workers):
            add_worker()
        time.sleep(15)  # all up and assigned, as an operator's deployment would be
        replay = subprocess.Popen(
            [*REPLAY, str(path), "--no-progress", "--speed", str(args.speed)],
            cwd=ROOT,
            env=base,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for step in args.script or ():
            # a fixed schedule: wait, then the fault, whether or not the replay has ended
            delay, action, name, *pause = step.split()
            time.sleep(float(delay))
            w = next(w for w in workers if w.name == name)
            rnd.events.append(f"{time.monotonic() - t0:.0f}s {action} {name}")
            if action == "pause":
                w.pause(float(pause[0]) if pause else SESSION_TIMEOUT_S + 5)
                continue
            w.kill9()
            if action == "wipe":
                shutil.rmtree(w.env["TAPESTREAM_DATA_DIR"], ignore_errors=True)
            time.sleep(float(pause[0]) if pause else 4)
            w.start()
        while (
            not args.script
            and replay.poll() is None
            and time.monotonic() - t0 < args.round_limit / 2
        ):
            time.sleep(rng.uniform(4, 15))
            if replay.poll() is not None:
                break
            action = rng.choice(args.faults)
            if action == "join" and len(workers) <= args.partitions:
                w = add_worker()
                rnd.events.append(f"{time.monotonic() - t0:.0f}s join {w.name}")
                continue
            w = rng.choice([w for w in workers if w.alive()] or workers)
            if action == "pause":
                seconds = SESSION_TIMEOUT_S + rng.uniform(3, 8)
                rnd.events.append(f"{time.monotonic() - t0:.0f}s pause {w.name} {seconds:.0f}s")
                w.pause(seconds)
                continue
            w.kill9()
            if action == "wipe":
                shutil.rmtree(w.env["TAPESTREAM_DATA_DIR"], ignore_errors=True)
            pause = rng.uniform(2, 8)
            rnd.events.append(f"{time.monotonic() - t0:.0f}s kill -9 {w.name} ({action})")
            time.sleep(pause)
            w.start()
        replay.wait(timeout=args.round_limit)
        for w in workers:
            if not w.alive():
                rnd.exits.append(w.name)
        deadline = t0 + args.round_limit
        done_at = None
        while time.monotonic() < deadline:
            if _counted(workers) == want["records"]:
                done_at = time.monotonic() - t0
                break
            time.sleep(2)
        wrong_books: dict[str, int] = {}
        wrong_counts: list[str] = []
        short: dict[str, dict[str, Any]] = {}
        for w in workers:
            bad = 0
            for iid, book in want["books"].items():
                try:
                    got = w.get(f"/books/{iid}/?depth={BOOK_TABLE_DEPTH}")
                except OSError:
                    bad += 1
                    continue
                got.pop("position", None)
                bad += got != book
            wrong_books[w.name] = bad
            try:
                got_counts = comparable_counts(w.get("/instruments/")["instruments"])
                if got_counts != want["stats"]:
                    wrong_counts.append(w.name)
                    short.setdefault(
                        w.name, counts_differing(got_counts, want["stats"], args.partitions)
                    )
            except OSError:
                wrong_counts.append(w.name)
        crashed = [w.name for w in workers if not w.alive()]
        ok = done_at is not None and not any(wrong_books.values()) and not wrong_counts
        stands = None if ok and not crashed else where_it_stands(workers, base)
        return {
            "round": n,
            "guarantee": guarantee,
            "ok": ok and not crashed,
            "workers": len(workers),
            "events": rnd.events,
            "seconds_to_all_processed": None if done_at is None else round(done_at, 1),
            "counted": _counted(workers),
            "records": want["records"],
            "books_differing_per_worker": wrong_books,
            "counts_differing_on": wrong_counts,
            "crashed": crashed,
            "logs": str(tmp),
            **({"where_it_stands": stands} if stands else {}),
            **({"counts_differing": short} if short else {}),
        }
    finally:
        for w in workers:
            w.stop()
        delete_deployment(base)


WATCHED_METRICS = (
    "tapestream_messages_stale_total",
    "tapestream_messages_duplicate_total",
    "tapestream_partitions_fenced_total",
    "tapestream_pauses_past_session_timeout_total",
    "tapestream_messages_processed_total",
)


def where_it_stands(workers: list[ManagedProcess], env: dict[str, str]) -> dict[str, Any]:
    """What an operator would look at when processing stops: each worker's partitions and
    local record count, and the group's committed offsets against the end of each input."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition

    settings = load_settings(env)
    out: dict[str, Any] = {}
    for w in workers:
        try:
            health = w.get("/health")
            local = w.get("/instruments/?scope=local")
            metrics = urllib.request.urlopen(w.url + "/metrics", timeout=5).read().decode()
            out[w.name] = {
                "records": local.get("records"),
                "partitions": health.get("active_partitions"),
                "recovery": health.get("recovery"),
                # events dropped as fetched before a rebalance, and partitions given up
                "metrics": {
                    line.split(" ")[0]: float(line.split(" ")[-1])
                    for line in metrics.splitlines()
                    if line.startswith(WATCHED_METRICS)
                },
            }
        except Exception as exc:
            out[w.name] = repr(exc)

    async def offsets() -> dict[str, str]:
        c = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            group_id=settings.app_id,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await c.start()
        try:
            lag = {}
            for topic in ("mbo.raw", "options.parts"):
                tps = [TopicPartition(settings.topic(topic), p) for p in range(settings.partitions)]
                ends = await c.end_offsets(tps)
                for tp in tps:
                    lag[f"{topic}:{tp.partition}"] = f"{await c.committed(tp)}/{ends[tp]}"
            return lag
        finally:
            await c.stop()

    try:
        out["committed/end"] = asyncio.run(offsets())
    except Exception as exc:
        out["committed/end"] = repr(exc)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--file", help="an MBO file to replay (default: generate one)")
    p.add_argument("--records", type=int, default=2_000_000)
    p.add_argument("--instruments", type=int, default=100)
    p.add_argument("--speed", type=float, default=8)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--guarantees", nargs="+", default=["exactly_once", "at_least_once"])
    p.add_argument("--round-limit", type=float, default=900, help="seconds a round may take")
    p.add_argument("--broker", default="kafka://127.0.0.1:9092")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--faults",
        nargs="+",
        default=["kill", "wipe", "join", "pause"],
        choices=["kill", "wipe", "join", "pause"],
        help="faults to draw from: kill -9 (state kept), kill -9 with the data directory "
        "wiped, a worker joining, a worker paused (SIGSTOP) past the session timeout",
    )
    p.add_argument(
        "--script",
        nargs="+",
        metavar="STEP",
        help="a fixed schedule instead of random faults: steps 'DELAY kill|wipe|pause WORKER "
        "[SECONDS]' (wait DELAY s, then kill -9 the worker and restart it SECONDS later, "
        "default 4, wipe its data directory too, or pause it SECONDS, default past the session "
        "timeout). Issue #20's scenario: --workers 2 --speed 8 --script '12 kill w0 6' "
        "'14 wipe w0 4'",
    )
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    if args.file:
        path = Path(args.file)
    else:
        path = Path(tempfile.mkdtemp(prefix="chaos-gen-")) / "chaos.mbo.dbn.zst"
        write(path, GenConfig(records=args.records, instruments=args.instruments, seed=args.seed))
    result = run_files([str(path)], load_settings({}), progress=False)
    want = {
        "records": result.records,
        "books": {r["instrument_id"]: r for r in result.tables["books"]},
        "stats": comparable_counts(result.tables["instrument-stats"]),
    }
    rounds = []
    for n in range(args.rounds):
        r = run_round(n, path, want, args, rng)
        print(orjson.dumps(r).decode(), flush=True)
        rounds.append(r)
    summary = {
        "rounds": len(rounds),
        "ok": sum(r["ok"] for r in rounds),
        "failed": [r["round"] for r in rounds if not r["ok"]],
    }
    print(orjson.dumps(summary).decode())
    return 0 if not summary["failed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
