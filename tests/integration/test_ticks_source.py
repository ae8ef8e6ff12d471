"""The ticks source against the stand-in vendor, with a real worker: refused logins, a dropped
connection, a frame that is not JSON, a malformed event and a sequence jump, and through them
all the worker's bars from the vendor's trades equal the file driver's over the source's own
recording; odd lots, priced far off, add volume and set no price in any bar."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import orjson
import pytest
import requests

from app.feeds.mbo_files import open_mbo
from app.feeds.tick_capture import instrument_for
from app.feeds.watermarks import WM_HEADER, decode_ns
from app.file_driver import run_files
from app.settings import load_settings
from models.mbo import F_VOLUME_ONLY, MBO_DTYPE, MBO_SIZE
from tests.integration.conftest import Deployment, consume_all, free_port, wait_for
from tests.integration.test_bars_live import assert_same, live_rows
from tests.unit.test_symbology import ONE, OTHER

pytestmark = pytest.mark.integration

KEY = "massive-standin-test-key-0123456789"
INTERVALS = "1s,5s"


def _get(url: str) -> dict | None:
    try:
        return requests.get(url, timeout=5).json()
    except (requests.RequestException, ValueError):
        return None


def _raw_bounds(bootstrap: str, topic: str, partitions: int) -> tuple[int, dict[int, int]]:
    """The latest ts_recv of any record on the raw topic, and per partition the latest
    watermark a marker carried."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run() -> tuple[int, dict[int, int]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        await consumer.start()
        last, marks = 0, {}
        try:
            # up to the end the topic has now: a quiet source goes on sending markers
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            while any([await consumer.position(tp) < ends[tp] for tp in tps]):
                batch = await consumer.getmany(*tps, timeout_ms=1000)
                for m in (m for msgs in batch.values() for m in msgs):
                    if m.value and len(m.value) % MBO_SIZE == 0:
                        recs = np.frombuffer(m.value, dtype=MBO_DTYPE)
                        last = max(last, int(recs["ts_recv"].max()))
                    elif not m.value:
                        wm = decode_ns(dict(m.headers)[WM_HEADER])
                        marks[m.partition] = max(marks.get(m.partition, wm), wm)
        finally:
            await consumer.stop()
        return last, marks

    return asyncio.run(run())


def test_faults_leave_the_bars_equal_to_the_file_drivers(
    deployment: Deployment, tmp_path: Path
) -> None:
    deployment.base_env["TAPESTREAM_BAR_INTERVALS"] = INTERVALS
    log = open(tmp_path / "vendor.log", "ab")  # noqa: SIM115
    vendor = deployment.spawn(
        "ticks-vendor",
        *("--symbols", "AAPL,MSFT", "--rate", "400", "--events", "4000", "--refuse", "2"),
        *("--fault", "close@1500", "--fault", "garbage@2500", "--fault", "badevent@3000"),
        *("--fault", "seqgap@3500"),
        stderr=log,
    )
    assert vendor.stdout is not None
    line = vendor.stdout.readline().decode()
    assert "stand-in tick vendor" in line, line
    port = line.rsplit(":", 1)[1].strip()
    w = deployment.worker("w1")
    web = free_port()
    record = tmp_path / "ticks.jsonl"
    source = deployment.spawn(
        "ticks",
        *("--symbols", "AAPL,MSFT", "--url", f"ws://127.0.0.1:{port}/stocks"),
        *("--record", str(record), "--web-port", str(web)),
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "ticks.log", "ab"),  # noqa: SIM115
        MASSIVE_API_KEY=KEY,
    )
    status_url = f"http://127.0.0.1:{web}/status"
    try:
        wait_for(lambda: (_get(f"http://127.0.0.1:{port}/status") or {}).get("finished"), 90,
                 "the feed to end")  # fmt: skip
        made = _get(f"http://127.0.0.1:{port}/status")
        assert made is not None
        status = wait_for(
            lambda: (s := _get(status_url)) and s["records"] == s["acknowledged_records"] and s,
            30,
            "every record acknowledged",
        )
        assert status["logins_refused"] == 2 and status["reconnects"] >= 1, status
        assert status["gaps"] == 2, status  # one per symbol, after the dropped connection
        assert status["dead_letters"] == 2, status
        assert status["excluded_trades"] > 0, status
        assert w.alive()
        # The feed is quiet now, the source still connected: every partition hears time move
        # on past the last record, so windows close without waiting for more ticks.
        bootstrap = deployment.base_env["KAFKA_BROKER"].removeprefix("kafka://")
        partitions = int(deployment.base_env["TAPESTREAM_PARTITIONS"])
        wait_for(
            lambda: (
                (got := _raw_bounds(bootstrap, f"{deployment.prefix}mbo.raw", partitions))[1]
                and len(got[1]) == partitions
                and min(got[1].values()) > got[0] + 4_000_000_000  # the lateness and a 1 s window
            ),
            30,
            "markers past the last record while the feed is quiet",
        )
    finally:
        for p in (source, vendor):
            p.terminate()
        for p in (source, vendor):
            p.wait(timeout=30)
    assert KEY not in (tmp_path / "ticks.log").read_text()

    bootstrap = deployment.base_env["KAFKA_BROKER"].removeprefix("kafka://")
    letters = consume_all(bootstrap, f"{deployment.prefix}dead.letters", expect_messages=2)
    reasons = sorted(orjson.loads(v)["reason"] for _, v, _, _ in letters)
    assert reasons[0].startswith("a malformed event: field 'bp'") or "field 'p'" in reasons[0]
    assert reasons[1].startswith("not JSON"), reasons
    gaps = consume_all(bootstrap, f"{deployment.prefix}live.gaps", expect_messages=2)
    assert sorted(orjson.loads(v)["symbol"] for _, v, _, _ in gaps) == ["AAPL", "MSFT"]

    # Live equals the file driver: the recording gives the raw topic's records, and bars.
    raw = np.concatenate(
        [
            np.frombuffer(v, dtype=MBO_DTYPE)
            for _, v, _, _ in consume_all(bootstrap, f"{deployment.prefix}mbo.raw", timeout=5)
            if v and len(v) % MBO_SIZE == 0
        ]
    )
    from_file = np.concatenate(list(open_mbo(record).chunks()))
    for sym in ("AAPL", "MSFT"):
        iid = instrument_for(sym)
        assert raw[raw["instrument_id"] == iid].tobytes() == (
            from_file[from_file["instrument_id"] == iid].tobytes()
        ), sym
    trades = from_file[from_file["action"] == ord("T")]
    odd_lots = trades[(trades["flags"] & F_VOLUME_ONLY) != 0]  # in volume, setting no price
    assert 0 < len(odd_lots) <= sum(made["excluded"].values())
    assert len(trades) <= sum(made["trades"].values())  # the gap lost some

    settings = load_settings({"TAPESTREAM_BAR_INTERVALS": INTERVALS})
    result = run_files([str(record)], settings, progress=False)
    want = {t: result.row_topics[t] for t in ("bars.1s", "bars.5s")}
    assert len(want["bars.1s"]) >= 10
    # The file driver closes the windows its records prove final: those that ended a lateness
    # before the last arrival. The worker closed those and, as the quiet feed's markers told it
    # that time moved on, the rest too: each holding just the recording's trades in it.
    final = int(from_file["ts_recv"].max()) - settings.lateness_ns
    live = live_rows(deployment, want)
    for topic, iv in zip(want, settings.bar_intervals_ns, strict=True):
        closed_by_quiet = [b for b in live[topic] if b["start"] + iv > final]
        live[topic] = [b for b in live[topic] if b["start"] + iv <= final]
        assert closed_by_quiet or iv > 1_000_000_000, topic
        for bar in closed_by_quiet:
            mine = trades[trades["instrument_id"] == bar["instrument_id"]]
            mine = mine[(mine["ts_event"] >= bar["start"]) & (mine["ts_event"] < bar["start"] + iv)]
            assert (bar["volume"], bar["trades"]) == (int(mine["size"].sum()), len(mine)), bar
    assert_same(live, want)
    for bar in want["bars.1s"] + want["bars.5s"]:
        assert bar["high"] < 150_000_000_000  # the odd lots print at three times the market
        assert bar["vwap"] < 150_000_000_000


def test_two_symbols_with_one_id_are_refused_before_anything_is_sent(
    deployment: Deployment,
) -> None:
    run = deployment.cli(
        "ticks",
        *("--symbols", f"AAPL,{ONE},{OTHER}", "--url", "ws://127.0.0.1:9/stocks"),
        timeout=60,
        MASSIVE_API_KEY=KEY,
    )
    assert run.returncode == 2, run.stderr
    assert ONE in run.stderr and OTHER in run.stderr and KEY not in run.stderr
