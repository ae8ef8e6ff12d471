"""Failover between real workers: two `faust -A app worker` processes share the partitions, one
is killed with kill -9 mid-replay and comes back with its state, the other is killed and comes
back with its data directory wiped, and a third joins mid-replay. Under both guarantees every
output topic ends equal to backfill's, record for record (read_committed under exactly_once;
repeats, checked identical, dropped under at_least_once), and every worker serves the books
backfill ends with. Before the fixes this tests, a rebalance under exactly_once crashed the
surviving worker's table recovery, and under at_least_once the surviving worker's books agent
failed on every message after it gave up a partition."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import requests

from app.file_driver import BOOK_TABLE_DEPTH, FileRun, run_files
from app.settings import load_settings
from load_tests.gen_mbo import GenConfig, write
from load_tests.topic_rows import consume_all, expected_rows, live_rows
from load_tests.worker_proc import comparable_counts, counts_differing
from tests.integration.conftest import Deployment, Worker, wait_for

pytestmark = pytest.mark.integration

# Five minutes of event time for 16 instruments, replayed at 10x: about 30 s of replay, long
# enough for two kills, two restarts and a join, with 1-minute bars and a pressure window
# closing on the way.
CONFIG = GenConfig(
    records=150_000, instruments=16, orders_per_instrument=100, events_per_second=500, seed=9
)
SPEED = "10"


@pytest.fixture(scope="module")
def failover_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FileRun]:
    path = tmp_path_factory.mktemp("gen") / "failover.mbo.dbn.zst"
    write(path, CONFIG)
    result = run_files([str(path)], load_settings({}), progress=False)
    assert result.records >= CONFIG.records
    return path, result


def _progress(workers: list[Worker]) -> int:
    """Records the deployment has counted, asked of the first worker that answers whole."""
    for w in workers:
        try:
            body = w.get("/instruments/")
        except Exception:
            continue
        if not body.get("partial"):
            return int(body["records"])
    return 0


def _after(workers: list[Worker], share: float) -> Callable[[], bool]:
    return lambda: _progress(workers) >= share * CONFIG.records  # about: the file has a few more


def _books_equal(w: Worker, books: dict[int, dict]) -> bool:
    for iid, want in books.items():
        got = w.get(f"/books/{iid}/", depth=BOOK_TABLE_DEPTH)
        got.pop("position", None)
        if got != want:
            return False
    return True


def two_workers_replaying(
    deployment: Deployment, path: Path, guarantee: str
) -> tuple[Worker, Worker, subprocess.Popen]:
    """Workers a and b sharing the partitions under `guarantee`, and the file replaying."""
    deployment.base_env["TAPESTREAM_PROCESSING_GUARANTEE"] = guarantee
    a = deployment.worker("a")
    b = deployment.worker("b")
    deployment.wait_assigned(a, b)
    return a, b, deployment.replay(path, "--speed", SPEED)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_kill9_wipe_and_join_across_workers_change_no_output(
    deployment: Deployment, failover_file: tuple[Path, FileRun], guarantee: str
) -> None:
    path, result = failover_file
    a, b, replay = two_workers_replaying(deployment, path, guarantee)
    try:
        wait_for(_after([b, a], 0.2), 60, "a fifth of the records processed")
        a.kill9()
        raw = f"{deployment.prefix}mbo.raw"
        wait_for(lambda: len(b.owned(raw)) == 4, 60, "b to take over a's partitions")
        a.restart()  # a comes back (its local state kept under at_least_once) and takes some
        wait_for(_after([b, a], 0.45), 90, "nearly half the records processed")
        c = deployment.worker("c")  # a new worker joins mid-replay
        wait_for(_after([a, c, b], 0.6), 90, "three fifths of the records processed")
        b.kill9()
        shutil.rmtree(b.state_dir, ignore_errors=True)
        time.sleep(2)
        b.restart()  # from nothing: its tables come back from the changelogs
        _assert_partial_while_restoring(a, b)
        _, err = replay.communicate(timeout=180)
        assert replay.returncode == 0, err
    finally:
        if replay.poll() is None:
            replay.kill()
    assert_as_backfill(deployment, [a, b, c], result, guarantee)


def _assert_partial_while_restoring(asker: Worker, restoring: Worker) -> None:
    """While a worker restores its tables, a view gathered from every worker says it is
    partial: never a total that looks whole and is short by that worker's instruments."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        before = restoring.get("/health")["recovery"]["recovering"]
        body = asker.get("/instruments/")
        after = restoring.get("/health")["recovery"]["recovering"]
        if not before:
            return  # restored (or not yet begun, which the next poll shows)
        if after:
            assert body.get("partial"), (body["records"], body.get("errors"))
        time.sleep(0.2)


# Under exactly_once only. At-least-once cannot fence a stopped worker's writes: a checkpoint
# the worker was sending as it stopped lands after the new owner has restored and written its
# own (the checkpoint journal makes a checkpoint cut short whole, not one that arrives late),
# and a later restore can take that older state (seen: 2 of 3072 deltas rows, or about 200
# records uncounted on two instruments, in one run of three). docs/state-and-recovery.md says so.
@pytest.mark.parametrize("guarantee", ["exactly_once"])
def test_a_worker_paused_past_its_session_timeout_rejoins_and_changes_no_output(
    deployment: Deployment, failover_file: tuple[Path, FileRun], guarantee: str
) -> None:
    """A worker that stands still (SIGSTOP) until the group gives its partitions away wakes
    up as a zombie: its commit timer is overdue and, under exactly_once, its transactions have
    been fenced by the new owner. It must neither crash nor write what it held, and must come
    back into the group."""
    path, result = failover_file
    a, b, replay = two_workers_replaying(deployment, path, guarantee)
    try:
        wait_for(_after([b, a], 0.25), 60, "a quarter of the records processed")
        a.pause()
        raw = f"{deployment.prefix}mbo.raw"
        try:
            wait_for(lambda: len(b.owned(raw)) == 4, 60, "b to take over a's partitions")
            wait_for(_after([b], 0.45), 60, "b to process on")
        finally:
            a.resume()
        wait_for(lambda: a.alive() and a.owned(raw), 90, "a back in the group")
        _, err = replay.communicate(timeout=180)
        assert replay.returncode == 0, err
    finally:
        if replay.poll() is None:
            replay.kill()
    assert_as_backfill(deployment, [a, b], result, guarantee)
    assert _metric(a, "tapestream_pauses_past_session_timeout_total") >= 1


def _metric(w: Worker, name: str) -> float:
    text = requests.get(w.url + "/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def assert_as_backfill(
    deployment: Deployment, workers: list[Worker], result: FileRun, guarantee: str
) -> None:
    """Every record processed with every worker up; every output topic equal to backfill's,
    record for record (repeats allowed, identical, under at_least_once); every worker serving
    backfill's books and counts; no dead letters."""
    try:
        wait_for(
            lambda: all(w.alive() for w in workers) and _progress(workers) == result.records,
            180,
            "every record processed",
        )
    except AssertionError as exc:
        stands = _where_it_stands(deployment, workers)
        short = _short_instruments(workers, result)
        raise AssertionError(f"{exc}\n{stands}\nrecords differing: {short}") from None

    want = expected_rows(result)
    bootstrap = deployment.base_env["KAFKA_BROKER"].removeprefix("kafka://")
    deadline = time.monotonic() + 120
    while True:
        got = live_rows(bootstrap, deployment.prefix, list(want))
        if all(len(set(got[t])) >= len(set(want[t])) for t in want):
            break
        assert time.monotonic() < deadline, {t: (len(got[t]), len(want[t])) for t in want}
        time.sleep(3)
    for topic, rows in want.items():
        assert len(set(rows)) == len(rows), f"backfill repeats a {topic} row"
        if guarantee == "exactly_once":
            assert len(got[topic]) == len(rows), f"{topic}: repeats under exactly_once"
        assert sorted(set(got[topic])) == sorted(rows), topic

    books = {row["instrument_id"]: row for row in result.tables["books"]}
    counts = comparable_counts(result.tables["instrument-stats"])
    assert len(books) == CONFIG.instruments
    for w in workers:
        wait_for(lambda w=w: w.alive() and _books_equal(w, books), 60, f"{w.name}'s books")
        assert comparable_counts(w.get("/instruments/")["instruments"]) == counts
    dead = consume_all(bootstrap, f"{deployment.prefix}dead.letters", timeout=10)
    assert [orjson.loads(v)["reason"] for _, v, _, _ in dead] == []


def _short_instruments(workers: list[Worker], result: FileRun) -> dict[int, dict]:
    """Where the first worker that answers counts otherwise than backfill."""
    for w in workers:
        try:
            got = w.get("/instruments/")["instruments"]
        except Exception:
            continue
        return counts_differing(got, result.tables["instrument-stats"], partitions=4)
    return {}


def _where_it_stands(d: Deployment, workers: list[Worker]) -> str:
    """What an operator would look at when processing stops: each worker's partitions and
    counts, and the group's committed offsets against the end of each input topic."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition

    lines = []
    for w in workers:
        try:
            local = w.get("/instruments/", scope="local")
            health = w.get("/health")
            lines.append(f"{w.name}: {local['records']} records, {health}")
        except Exception as exc:
            lines.append(f"{w.name}: {exc!r}")
    bootstrap = d.base_env["KAFKA_BROKER"].removeprefix("kafka://")

    async def lag() -> list[str]:
        c = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=d.app_id,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await c.start()
        out = []
        try:
            for topic in ("mbo.raw", "options.parts"):
                tps = [TopicPartition(f"{d.prefix}{topic}", p) for p in range(4)]
                ends = await c.end_offsets(tps)
                for tp in tps:
                    out.append(f"{tp.topic}:{tp.partition} {await c.committed(tp)}/{ends[tp]}")
        finally:
            await c.stop()
        return out

    try:
        lines += asyncio.run(lag())
    except Exception as exc:
        lines.append(f"lag: {exc!r}")
    return "\n".join(lines)
