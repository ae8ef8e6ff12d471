"""The one-second delta topic through the broker and real workers: the same records as
backfill's, at full speed and at a pace, with different batch sizes and partition counts, and
across a kill -9 of the worker; and the example consumer (load_tests/delta_consumer.py),
applying it from the start, ends with the books and latest bars the workers computed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from app.feeds.mbo_files import open_mbo
from app.file_driver import FileRun, run_files
from app.settings import load_settings
from load_tests.delta_consumer import consume
from load_tests.gen_mbo import GenConfig, write
from tables.book_state import BookSet
from tables.deltas import SECOND_NS
from tests.integration.conftest import Deployment, consume_all
from tests.integration.test_bars_live import replay_all, start

DEPTH = 10


@pytest.fixture(scope="module")
def deltas_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FileRun]:
    """About 6 minutes of event time for 6 instruments, with what backfill makes of it."""
    path = tmp_path_factory.mktemp("gen") / "deltas.mbo.dbn.zst"
    write(path, GenConfig(records=60_000, instruments=6, events_per_second=100, seed=5))
    result = run_files([str(path)], load_settings({}), progress=False)
    deltas = result.row_topics["deltas"]
    assert len(deltas) > 2000 and sum("bars" in d for d in deltas) > 30
    assert sum("pressure" in d for d in deltas) >= 6
    return path, result


def live_deltas(d: Deployment, expected: int) -> tuple[list[dict], dict[int, list[tuple]]]:
    """Every delta (read_committed), repeats dropped once checked identical, by (instrument,
    start); and each partition's (start, instrument) sequence, repeats left out."""
    bootstrap = d.base_env["KAFKA_BROKER"].removeprefix("kafka://")
    deadline = time.monotonic() + 180
    while True:
        seen: dict[tuple, dict] = {}
        order: dict[int, list[tuple]] = {}
        for _, value, partition, _ in consume_all(bootstrap, f"{d.prefix}deltas", timeout=30):
            row = orjson.loads(value)
            key = (row["instrument_id"], row["start"])
            if key in seen:
                assert seen[key] == row, f"a repeat that differs: {key}"
                continue
            seen[key] = row
            order.setdefault(partition, []).append((row["start"], row["instrument_id"]))
        if len(seen) >= expected or time.monotonic() > deadline:
            return [seen[k] for k in sorted(seen)], order
        time.sleep(2)


def assert_same_deltas(d: Deployment, want: list[dict]) -> None:
    got, order = live_deltas(d, len(want))
    keys = {(r["instrument_id"], r["start"]) for r in got}
    wanted = {(r["instrument_id"], r["start"]) for r in want}
    assert len(got) == len(want), f"missing {sorted(wanted - keys)}, extra {sorted(keys - wanted)}"
    for g, e in zip(got, sorted(want, key=lambda r: (r["instrument_id"], r["start"])), strict=True):
        assert g == e
    for sequence in order.values():  # seconds in order, instruments in order within one
        assert sequence == sorted(sequence)


def _books_before(path: Path, end_ns: int) -> dict[tuple[int, int], tuple[list, list]]:
    """Every book as of the last event received before `end_ns`."""
    records = np.concatenate(list(open_mbo(path).chunks()))
    records = records[records["ts_recv"] < end_ns]
    books = BookSet()
    out = {}
    for iid in np.unique(records["instrument_id"]).tolist():
        books.load(iid, 0, {}.get)
        books.process(iid, records[records["instrument_id"] == iid], 0)
        for pub, sides in books.tops(iid, DEPTH).items():
            out[(iid, pub)] = sides
    return out


@pytest.mark.parametrize(
    ("partitions", "batch", "pace"),
    [("4", "1000", ["--max"]), ("2", "300", ["--speed", "200"])],
)
def test_live_deltas_equal_backfill_and_rebuild_books_and_bars(
    deployment: Deployment,
    deltas_file: tuple[Path, FileRun],
    partitions: str,
    batch: str,
    pace: list[str],
) -> None:
    path, result = deltas_file
    want = result.row_topics["deltas"]
    w = start(deployment, partitions, batch)
    replay_all(deployment, w, path, pace)
    assert_same_deltas(deployment, want)

    # The example consumer, from the start of the topic: every book as of the last second
    # published, and every instrument's latest bar and indicators of each interval.
    bootstrap = deployment.base_env["KAFKA_BROKER"].removeprefix("kafka://")
    state = asyncio.run(consume(bootstrap, f"{deployment.prefix}deltas", 6.0, 1e9))
    assert state.applied == len(want)
    through = (max(d["start"] for d in want) // SECOND_NS + 1) * SECOND_NS
    books = _books_before(path, through)
    assert {k: (b.bids, b.asks) for k, b in state.books.items()} == {
        k: v for k, v in books.items() if k in state.books
    }
    assert set(books) - set(state.books) == set()
    latest: dict[tuple[int, str], dict[str, Any]] = {}
    for topic in ("bars.1m", "bars.5m", "bars.15m"):
        for bar in result.row_topics[topic]:
            latest[(bar["instrument_id"], bar["interval"])] = bar
    assert state.bars == latest and len(latest) >= 12
    assert {k: v["start"] for k, v in state.indicators.items()} == {
        k: v["start"] for k, v in latest.items()
    }


def test_a_kill9_mid_replay_changes_no_delta(
    deployment: Deployment, deltas_file: tuple[Path, FileRun]
) -> None:
    path, result = deltas_file
    w = start(deployment, "4", "1000", TAPESTREAM_PROCESSING_GUARANTEE="exactly_once")
    iid = result.row_topics["bars.1m"][0]["instrument_id"]
    deployment.kill9_mid_replay(
        w,
        path,
        lambda: w.get_raw(f"/bars/{iid}/?interval=1m").status_code == 200,
        keep_state=False,
        speed="50",
    )
    assert_same_deltas(deployment, result.row_topics["deltas"])


def test_a_late_joiner_from_the_snapshots_holds_what_a_reader_from_the_start_holds(
    deployment: Deployment, deltas_file: tuple[Path, FileRun]
) -> None:
    """The warm tier: `faust -A app snapshots` (killed with SIGKILL and restarted once) writes
    each instrument's state; a consumer that joins mid-replay from the snapshots, and one that
    joins after it, end with the books, bars, indicators and pressure of a consumer that read
    the delta topic from its start."""
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.integration.conftest import wait_for

    path, result = deltas_file
    start(deployment, "4", "1000")
    bootstrap = deployment.base_env["KAFKA_BROKER"].removeprefix("kafka://")
    deltas, snaps = f"{deployment.prefix}deltas", f"{deployment.prefix}deltas.snapshots"

    def writer() -> subprocess.Popen:
        log = open(deployment.tmp / "snapshots.log", "ab")  # noqa: SIM115 - the process keeps it
        command = [sys.executable, "-m", "faust", "-A", "app", "snapshots", "--interval", "20s"]
        return subprocess.Popen(
            command, cwd=ROOT, env=deployment.env(), stdout=log, stderr=subprocess.STDOUT
        )

    records = np.concatenate(list(open_mbo(path).chunks()))
    span_s = (int(records["ts_recv"].max()) - int(records["ts_recv"].min())) / 1e9
    snap = writer()
    replay = deployment.replay(path, "--speed", str(span_s / 40))
    try:
        wait_for(lambda: len(consume_all(bootstrap, snaps, timeout=2)) >= 12, 60, "snapshots")
        snap.send_signal(signal.SIGKILL)
        snap.wait(timeout=30)
        snap = writer()
        late = asyncio.run(consume(bootstrap, deltas, None, 1e9, snapshots=snaps, idle=15))
        _, err = replay.communicate(timeout=120)
        assert replay.returncode == 0, err
        full = asyncio.run(consume(bootstrap, deltas, None, 1e9, idle=5))
        assert full.applied == len(result.row_topics["deltas"])
        time.sleep(3)  # the writer's last snapshots
        after = asyncio.run(consume(bootstrap, deltas, None, 1e9, snapshots=snaps, idle=5))
    finally:
        for p in (snap, replay):
            if p.poll() is None:
                p.kill()
    assert late.same_as(full) and after.same_as(full)
    assert late.applied < full.applied and after.applied < late.applied
