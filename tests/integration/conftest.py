"""Integration fixtures: the real local broker and real `faust -A app worker` processes.

Each test gets its own app id, topic prefix, state directory and web port, so tests never see
each other's topics or state. The broker is started once per session by deploy/local/kafka.sh
(which does nothing when KAFKA_BROKER points at a running broker).
"""

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
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from load_tests.topic_rows import consume_all
from load_tests.worker_proc import spawn_worker
from tests.conftest import ROOT

__all__ = ["consume_all"]  # the tests' way to read a topic, from load_tests

pytestmark = pytest.mark.integration

# kill -9 of a single worker: each guarantee once, each with its local state handled the other
# way (kept, or wiped so its tables are rebuilt from their changelogs). test_failover covers the
# other two pairings across two workers.
KILL_CASES = pytest.mark.parametrize(
    ("guarantee", "keep_state"),
    [
        ("at_least_once", False),
        ("exactly_once", True),
    ],
)

BOOTSTRAP = os.environ.get("KAFKA_BROKER", "127.0.0.1:9092").removeprefix("kafka://")


@pytest.fixture(scope="session")
def broker() -> str:
    subprocess.run(["bash", str(ROOT / "deploy/local/kafka.sh"), "start"], check=True)
    return BOOTSTRAP


async def _create_topics(names: list[str], partitions: int) -> None:
    """The topics a worker consumes, made before it starts. A worker creates them itself, but
    one it creates just before it subscribes can still be missing from the broker's metadata at
    its first assignment, and the worker then reads it only after its next metadata refresh,
    minutes later (seen once: a test's worker never read the raw topic)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        missing = [n for n in names if n not in set(await admin.list_topics())]
        if missing:
            await admin.create_topics([NewTopic(n, partitions, 1) for n in missing])
        while not set(names) <= set(await admin.list_topics()):
            await asyncio.sleep(0.05)
    finally:
        await admin.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WorkerExited(AssertionError):
    """A worker's process is gone: no wait for it to answer can end well, so waits stop at once
    and show its log."""


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except WorkerExited:
            raise
        except Exception as exc:  # the service may not be up yet
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})"
    )


@dataclass
class Deployment:
    """One isolated tapestream deployment: its environment, workers and CLI runs."""

    base_env: dict[str, str]
    tmp: Path
    workers: list[Worker] = field(default_factory=list)
    # Every background run, stopped at teardown if the test did not: a test that fails before
    # its own stop must not leave a source running into the next tests.
    spawned: list[subprocess.Popen] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return self.base_env["TAPESTREAM_TOPIC_PREFIX"]

    @property
    def app_id(self) -> str:
        return self.base_env["TAPESTREAM_APP_ID"]

    def env(self, **extra: str) -> dict[str, str]:
        return {**self.base_env, **extra}

    def cli(self, *args: str, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "faust", "-A", "app", *args],
            cwd=ROOT,
            env=self.env(**extra),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def spawn(
        self, *args: str, stdout: Any = subprocess.PIPE, stderr: Any = subprocess.PIPE, **extra: str
    ) -> subprocess.Popen:
        """`faust -A app ARGS...` in the background."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "app", *args],
            cwd=ROOT,
            env=self.env(**extra),
            stdout=stdout,
            stderr=stderr,
        )
        self.spawned.append(proc)
        return proc

    def replay(self, path: Path, *args: str) -> subprocess.Popen:
        """`faust -A app replay PATH ARGS...` in the background."""
        return self.spawn("replay", str(path), "--no-progress", *args)

    def kill9_mid_replay(
        self,
        w: Worker,
        path: Path,
        progressed: Callable[[], bool],
        keep_state: bool,
        speed: str = "1",
        also: Sequence[Path] = (),
    ) -> None:
        """Replay PATH (and the files `also` names) at `speed` times its recorded pace; once
        `progressed()`, kill -9 the worker, wipe its local state unless `keep_state`, restart
        it, and wait for the replay to finish."""
        replay = self.replay(path, *map(str, also), "--speed", speed)
        try:
            wait_for(lambda: w.alive() and progressed(), 60, "the replay under way")
            w.kill9()
            if not keep_state:
                shutil.rmtree(w.state_dir, ignore_errors=True)
            w.restart()
            _, err = replay.communicate(timeout=120)
            assert replay.returncode == 0, err
        finally:
            if replay.poll() is None:
                replay.kill()

    def worker(self, name: str = "w1", **extra: str) -> Worker:
        port = free_port()
        w = Worker(
            name=name,
            port=port,
            env=self.env(
                TAPESTREAM_WEB_PORT=str(port),
                TAPESTREAM_DATA_DIR=str(self.tmp / f"state-{name}"),
                **extra,
            ),
            log_path=self.tmp / f"{name}.log",
        )
        asyncio.run(
            _create_topics(
                [f"{self.prefix}mbo.raw", f"{self.prefix}options.parts"],
                int(w.env["TAPESTREAM_PARTITIONS"]),
            )
        )
        w.start()
        self.workers.append(w)
        return w

    def wait_assigned(self, *workers: Worker, partitions: int = 4) -> None:
        """Until the workers share all raw-topic partitions, each owning some."""
        raw = f"{self.prefix}mbo.raw"

        def ready() -> bool:
            owned = [w.owned(raw) for w in workers]
            return all(owned) and len(set().union(*owned)) == partitions

        wait_for(ready, 90, f"{len(workers)} worker(s) to own the raw partitions")


# The first line of a crash in a worker's log.
FIRST_ERROR = re.compile(r"\[(ERROR|CRITICAL)\]|^Traceback")


@dataclass
class Worker:
    name: str
    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = spawn_worker(self.env, self.log_path)
        wait_for(lambda: self.alive() and self.get("/health"), 60, f"worker {self.name} web")

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise WorkerExited(f"worker {self.name} exited ({code}); log:\n{self.log_tail()}")
        return True

    def get(self, path: str, **params: Any) -> Any:
        """A view's JSON in the topics' units (`units=raw`), to compare with backfill's rows;
        pass `units="decimal"` for what a client gets by default."""
        r = requests.get(self.url + path, params={"units": "raw", **params}, timeout=10)
        r.raise_for_status()
        return r.json()

    def owned(self, topic: str) -> set[int]:
        """Partitions of topic this worker owns, once it is out of a rebalance."""
        h = self.get("/health")
        if h["rebalancing"]:
            return set()
        return {
            int(p.rsplit(":", 1)[1]) for p in h["active_partitions"] if p.rsplit(":", 1)[0] == topic
        }

    def get_raw(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=10)

    @property
    def state_dir(self) -> Path:
        return Path(self.env["TAPESTREAM_DATA_DIR"])

    def restart(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "stop or kill it first"
        self.start()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def pause(self) -> None:
        """SIGSTOP: the whole process stands still, heartbeats included."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # a second one, after the teardown's, is harmless
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_tail(self, n: int = 60) -> str:
        """The log's last n lines, after its first error and what followed it: a crash is
        logged where it happened, and the shutdown that follows fills the tail."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        first = next((i for i, line in enumerate(lines) if FIRST_ERROR.search(line)), None)
        if first is None or first >= len(lines) - n:
            return "\n".join(lines[-n:])
        cause = lines[max(0, first - 5) : first + n]
        return "\n".join([*cause, "[...]", *lines[-n:]])


@pytest.fixture
def deployment(broker: str, tmp_path: Path) -> Iterator[Deployment]:
    tag = f"t{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "KAFKA_BROKER": f"kafka://{broker}",
        "TAPESTREAM_APP_ID": tag,
        "TAPESTREAM_TOPIC_PREFIX": f"{tag}.",
        "TAPESTREAM_PARTITIONS": "4",
        "TAPESTREAM_DATA_DIR": str(tmp_path / "state"),
        "TAPESTREAM_COMMIT_INTERVAL": "0.5",
        # Smaller messages than the default: more message and checkpoint boundaries for a
        # kill or a rebalance to fall between.
        "TAPESTREAM_BATCH_RECORDS": "1000",
        "PYTHONUNBUFFERED": "1",
    }
    d = Deployment(base_env=env, tmp=tmp_path)
    yield d
    # All asked to stop at once: each takes seconds to leave its group, and they need not wait
    # for one another.
    for w in d.workers:
        if w.proc is not None and w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    for w in d.workers:
        w.stop()
    for proc in d.spawned:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    if os.environ.get("TAPESTREAM_TEST_KEEP_TOPICS"):  # to look into a failure afterwards
        print(f"topics kept: {tag}.*, {tag}-*", file=sys.stderr)
        return
    # Each test's topics hold up to hundreds of MB; a broker kept across runs would fill up.
    from app.commands.replay import delete_topics

    asyncio.run(delete_topics(broker, [f"{tag}.", f"{tag}-"]))


def read_jsonl(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]
