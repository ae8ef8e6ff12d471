"""One real `faust -A app worker` for a benchmark: its own app id, topics, state and port, on
the broker the settings name (start it with `make broker-start`)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson

from app.commands.replay import delete_topics
from app.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "var" / "bench"


def worker_argv(level: str = "info") -> list[str]:
    return [sys.executable, "-m", "faust", "-A", "app", "worker", "-l", level]


def spawn_worker(env: dict[str, str], log_path: Path, level: str = "info") -> subprocess.Popen:
    """`faust -A app worker` with `env`, its output appended to `log_path`."""
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            worker_argv(level),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def comparable_counts(stats: list[dict]) -> list[dict]:
    """Per-instrument counts as `/instruments/` serves them, less `messages`: a paced replay
    batches records into messages otherwise than backfill does."""
    return [{k: v for k, v in s.items() if k != "messages"} for s in stats]


def counts_differing(got: list[dict], want: list[dict], partitions: int) -> dict[int, dict]:
    """Instrument -> its partition and records counted less `want`'s, where they differ:
    which partitions lost or repeated work."""
    from app.feeds.watermarks import partitioner

    partition_of = partitioner(partitions)
    have = {s["instrument_id"]: s.get("records", 0) for s in got}
    out = {}
    for s in want:
        iid = s["instrument_id"]
        diff = have.get(iid, 0) - s.get("records", 0)
        if diff:
            out[iid] = {"partition": partition_of(iid), "records_diff": diff}
    return out


def get_json(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return orjson.loads(r.read())


def free_port() -> int:
    """A port free on 127.0.0.1 now (another process may take it before it is used)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ManagedProcess:
    """A process of a deployment that faults kill, pause and restart: a worker, a source, a
    sink. It knows whether its end was asked for, so one that ends by itself is told apart."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    url: str = ""  # its web server, if it has one
    proc: subprocess.Popen | None = None
    ended_on_purpose: bool = False

    @classmethod
    def worker(cls, name: str, env: dict[str, str], log: Path) -> ManagedProcess:
        """`faust -A app worker` on the web port its environment gives."""
        url = f"http://127.0.0.1:{env['TAPESTREAM_WEB_PORT']}"
        return cls(name, worker_argv(), env, log, url)

    def get(self, path: str, timeout: float = 5) -> dict:
        return get_json(self.url + path, timeout)

    def start(self) -> None:
        with open(self.log, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self.ended_on_purpose = False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exited_by_itself(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None and not self.ended_on_purpose

    def kill9(self) -> None:
        self.ended_on_purpose = True
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def pause(self, seconds: float) -> None:
        """SIGSTOP, then SIGCONT: a worker unresponsive past its session timeout comes back
        to find its partitions given away (under exactly_once, its transactions fenced)."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)
            time.sleep(seconds)
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.ended_on_purpose = True
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@dataclass
class BenchWorker:
    tag: str
    url: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen

    def processed(self, agent: str) -> int:
        """Records the agent has applied, from the worker's Prometheus metrics."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as r:
            text = r.read().decode()
        m = re.search(
            rf'^tapestream_records_processed_total{{agent="{agent}"}} (\S+)$', text, re.MULTILINE
        )
        return int(float(m.group(1))) if m else 0

    def wait_processed(self, agent: str, total: int, limit_s: float = 600) -> float:
        """Wait until the agent applied `total` records; returns the monotonic time it did."""
        t0 = time.monotonic()
        last = 0.0
        while (done := self.processed(agent)) < total:
            now = time.monotonic()
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited; see {self.log_path}")
            if now - t0 > limit_s:
                raise RuntimeError(f"{agent}: {done:,} of {total:,} in {limit_s} s; see log")
            if now - last > 5:
                print(f"{agent}: {done:,}/{total:,} records", file=sys.stderr)
                last = now
            # Each scrape costs the worker about 3 ms of CPU, 6% of its time at one every 50 ms
            # (py-spy): rarely while the end is far, every 20 ms as it nears.
            rate = done / max(now - t0, 1e-9)
            left_s = (total - done) / rate if rate else float("inf")
            time.sleep(min(0.5, max(0.02, left_s / 4)))
        return time.monotonic()


@contextmanager
def bench_worker(
    broker: str,
    before_start: Callable[[dict[str, str]], None] | None = None,
    keep: bool = False,
    **extra_env: str,
) -> Iterator[BenchWorker]:
    """A worker with its own app id, topics and state; `before_start(env)` runs first (to
    fill its input topic, say). Its topics and state are deleted when it stops, unless
    `keep` (another worker will carry on with them: call `delete_deployment` after)."""
    tag = f"bench{uuid.uuid4().hex[:8]}"
    port = free_port()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "KAFKA_BROKER": broker,
        "TAPESTREAM_APP_ID": tag,
        "TAPESTREAM_TOPIC_PREFIX": f"{tag}.",
        "TAPESTREAM_DATA_DIR": str(BENCH_DIR / tag),
        "TAPESTREAM_WEB_PORT": str(port),
        **extra_env,
    }
    if before_start is not None:
        before_start(env)
    log_path = BENCH_DIR / f"{tag}.log"
    proc = spawn_worker(env, log_path, level="warn")
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                h = get_json(f"{url}/health")
                if not h["rebalancing"] and any(
                    p.startswith(f"{env['TAPESTREAM_TOPIC_PREFIX']}mbo.raw")
                    for p in h["active_partitions"]
                ):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"worker did not become ready; see {log_path}")
            time.sleep(0.3)
        yield BenchWorker(tag, url, env, log_path, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if not keep:
            delete_deployment(env)


def delete_deployment(env: dict[str, str]) -> None:
    """A run leaves hundreds of MB in the broker: its topics and local state go with it."""
    settings = load_settings(env)
    prefixes = [settings.topic_prefix or f"{settings.app_id}.", f"{settings.app_id}-"]
    asyncio.run(delete_topics(settings.bootstrap_servers, prefixes))
    shutil.rmtree(settings.data_dir, ignore_errors=True)
