"""The live source against the stand-in gateway, through the real `databento.Live` client:
every record of the source reaches the raw topic exactly once, in order per instrument, across
resets, clean closes, stalls, refused logins, bad bytes and kill -9 of `live` itself; a worker's
books built from it equal the generator's truth; the real CME file comes through byte for byte."""

from __future__ import annotations

import subprocess
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import orjson
import pytest
import requests

from app.feeds.mbo_files import open_mbo
from app.live.resume import SOURCE_HEADER
from load_tests.gen_mbo import GenConfig, write
from models.mbo import MBO_DTYPE, MBO_SIZE, by_instrument
from tests.integration.conftest import ROOT, Deployment, consume_all, free_port, wait_for

pytestmark = pytest.mark.integration

DATA = ROOT.parent / "shared" / "data"
ESM4 = DATA / "glbx-mdp3" / "esm4-2024-05-08T00-00-00_00-00-02.mbo.dbn.zst"
ESM4_DEF = DATA / "glbx-mdp3" / "esm4-2024-05-08.definition.dbn.zst"
ARL = DATA / "xnas-itch" / "arl-2025-07-17.mbo.csv"
WEEK_S = 7 * 86400


def _gateway(d: Deployment, port: int, *args: str) -> subprocess.Popen:
    log = open(d.tmp / "gateway.log", "ab")  # noqa: SIM115
    proc = d.spawn("gateway", *args, "--port", str(port), stderr=log)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert "stand-in gateway" in line, line
    return proc


def _live(d: Deployment, port: int, *args: str, log: str = "live.log") -> subprocess.Popen:
    gateway = ("--gateway", f"127.0.0.1:{port}", "--heartbeat", "1", "--stall-timeout", "2.5")
    return d.spawn(
        "live",
        *gateway,
        *args,
        stdout=subprocess.DEVNULL,
        stderr=open(d.tmp / log, "ab"),
        DATABENTO_API_KEY="db-standin-test-key-0000000000000",
    )


def _raw_by_instrument(d: Deployment, expect: int) -> dict[int, np.ndarray]:
    """Every MBO record the live source put on the raw topic, per instrument, in order."""
    bootstrap = d.base_env["KAFKA_BROKER"].removeprefix("kafka://")
    out: dict[int, list[np.ndarray]] = defaultdict(list)

    def done() -> bool:
        out.clear()
        msgs = consume_all(bootstrap, f"{d.prefix}mbo.raw", timeout=20, headers=True)
        for _key, value, _p, _o, headers in msgs:
            if value and len(value) % MBO_SIZE == 0 and SOURCE_HEADER in headers:
                recs = np.frombuffer(value, dtype=MBO_DTYPE)
                out[int(recs["instrument_id"][0])].append(recs)
        return sum(len(r) for rs in out.values() for r in rs) >= expect

    try:
        wait_for(done, 60, f"{expect:,} records on the raw topic", interval=2)
    except AssertionError as exc:
        have = {iid: sum(len(r) for r in rs) for iid, rs in sorted(out.items())}
        raise AssertionError(f"{exc}; records per instrument: {have}") from None
    return {iid: np.concatenate(rs) for iid, rs in out.items()}


def _trade_letters(d: Deployment) -> list[str]:
    """The dead letters' reasons that name the stand-in's wrong-schema record (a TradeMsg)."""
    letters = consume_all(
        d.base_env["KAFKA_BROKER"].removeprefix("kafka://"),
        f"{d.prefix}dead.letters",
        timeout=5,
    )
    return [r for _, v, _, _ in letters if "TradeMsg" in (r := orjson.loads(v)["reason"])]


def _status(web: int) -> dict | str:
    try:
        return requests.get(f"http://127.0.0.1:{web}/status", timeout=5).json()
    except requests.RequestException as exc:
        return f"unanswered ({exc})"


def _replayed(status: dict | str) -> bool:
    return isinstance(status, dict) and status["status"] == "streaming" and status["duplicates"] > 0


def _delivered(status: dict | str, instruments: int) -> bool:
    return (
        isinstance(status, dict)
        and status["instruments"] == instruments
        and status["acknowledged_records"] > 0
    )


def _acked(status: dict) -> dict | None:
    """The status once every record sent is acknowledged and nothing waits."""
    return (
        status
        if status["records"] and status["acknowledged_records"] == status["records"]
        else None
    )


def test_ten_faults_and_two_kills_lose_and_repeat_nothing(
    deployment: Deployment, tmp_path: Path
) -> None:
    src = tmp_path / "live.mbo.dbn"
    # About 24 s of event time, served at the recorded pace: long enough for both kills.
    truth = write(
        src,
        GenConfig(records=48_000, instruments=8, events_per_second=2_000, orders_per_instrument=60),
    )
    file_records = np.concatenate(list(open_mbo(src).chunks()))
    faults = [
        "reset@3000",
        "close@7000",
        "garbage@11000",
        "stall@15000:4",
        "refuse@19000:2",
        "wrong_schema@23000",  # a clean close next: a reset would drop it unread with the rest
        "close@27000",
        "reset@31000",
        "unknown_rtype@35000",
        "torn@40000",
    ]
    w = deployment.worker()  # before the gateway, whose clock starts with it: kills mid-stream
    port = free_port()
    gw = _gateway(
        deployment,
        port,
        str(src),
        "--dataset",
        "GLBX.MDP3",
        "--speed",
        "1",
        "--horizon",
        str(WEEK_S),
        *[a for f in faults for a in ("--fault", f)],
    )
    start = str(int(file_records["ts_event"].min()))
    args = (
        "--dataset",
        "GLBX.MDP3",
        "--symbols",
        "ALL_SYMBOLS",
        "--stype-in",
        "raw_symbol",
        "--start",
        start,
    )
    try:
        live = _live(deployment, port, *args)
        for kill in range(2):  # kill -9 the source twice while the session runs
            time.sleep(5.5)
            if kill == 1:
                # The stand-in serves each fault once, to the session current then, where a
                # real gateway would replay a stray record from the resume point: a kill
                # landing while the wrong-schema record is in flight would take it along. So
                # the second kill waits until a live process has dead-lettered it.
                wait_for(lambda: _trade_letters(deployment), 60, "the wrong-schema record's letter")
            live.kill()
            live.wait(timeout=10)
            time.sleep(1.0)  # the gateway moves on meanwhile: the restart must replay
            web = free_port()
            live = _live(deployment, port, *args, "--web-port", str(web))
        # the last source is streaming, its replay's repeats dropped, before it is stopped
        wait_for(lambda: _replayed(_status(web)), 60, "the restarted source to replay")
        raw = _raw_by_instrument(deployment, len(file_records))
    finally:
        live.terminate()
        live.wait(timeout=30)
        gw.terminate()
        gw.wait(timeout=10)

    want = dict(by_instrument(file_records))
    assert set(raw) == set(want)
    for iid, recs in want.items():
        got = raw[iid]
        assert len(got) == len(recs), (iid, len(got), len(recs))
        assert got.tobytes() == recs.tobytes(), iid

    summaries = [
        orjson.loads(line)
        for line in (deployment.tmp / "live.log").read_text().splitlines()
        if line.startswith("{")
    ]
    assert (
        summaries and summaries[-1]["duplicates"] > 0
    )  # the resubscriptions did send repeats, and they were dropped
    assert len(_trade_letters(deployment)) == 1  # and no restart sent it again

    def books_done() -> bool:
        for iid, t in truth["instruments"].items():
            view = w.get(f"/books/{iid}/", depth=1)
            if view["books"][0]["last_sequence"] != t["last_sequence"]:
                return False
        return True

    wait_for(lambda: w.alive() and books_done(), 90, "the worker's books up to date")
    for iid, t in truth["instruments"].items():
        book = w.get(f"/books/{iid}/", depth=1000)["books"][0]
        assert book["bids"] == t["bids"], iid
        assert book["asks"] == t["asks"], iid
        assert book["orders"] == t["orders"], iid


@pytest.mark.parametrize(
    ("files", "dataset", "symbol", "iid"),
    [
        ((ESM4_DEF, ESM4), "GLBX.MDP3", "ESM4", 5602),
        ((ARL,), "XNAS.ITCH", "ARL", 1108),
    ],
    ids=["cme-esm4", "nasdaq-arl"],
)
def test_real_files_come_through_the_live_path_byte_for_byte(
    deployment: Deployment, files: tuple[Path, ...], dataset: str, symbol: str, iid: int
) -> None:
    """The same records, hence the same books and MBP output, as replaying the file."""
    port = free_port()
    paths = [str(f) for f in files]
    gw = _gateway(
        deployment, port, *paths, "--dataset", dataset, "--all-at-once", "--horizon", str(WEEK_S)
    )
    file_records = np.concatenate(list(open_mbo(files[-1]).chunks()))
    web = free_port()
    try:
        live = _live(
            deployment,
            port,
            "--dataset",
            dataset,
            "--symbols",
            symbol,
            "--start",
            str(int(file_records["ts_event"].min())),
            "--web-port",
            str(web),
        )
        try:
            raw = _raw_by_instrument(deployment, len(file_records))
        except AssertionError as exc:  # where the source stood says which side fell short
            raise AssertionError(f"{exc}; the live source's status: {_status(web)}") from None
        status = wait_for(
            lambda: _acked(requests.get(f"http://127.0.0.1:{web}/status", timeout=5).json()),
            30,
            "the status view to show every record acknowledged",
        )
        metrics = requests.get(f"http://127.0.0.1:{web}/metrics", timeout=5).text
        live.terminate()
        live.wait(timeout=30)
    finally:
        gw.terminate()
        gw.wait(timeout=10)
    assert list(raw) == [iid]
    assert raw[iid].tobytes() == file_records.tobytes()
    assert status["status"] == "streaming" and status["duplicates"] == 0
    assert status["instruments"] == 1 and status["resume_from_ts_event"] is not None
    assert f"tapestream_live_records_total {float(len(file_records))}" in metrics
    assert "db-standin-test-key" not in metrics + str(status)  # the key is nowhere
    bootstrap = deployment.base_env["KAFKA_BROKER"].removeprefix("kafka://")
    msgs = consume_all(bootstrap, f"{deployment.prefix}mbo.raw", headers=True)
    defs = [m for m in msgs if m[1] and m[1][1] == 0x13]
    assert [d[0] for d in defs] == ([str(iid).encode()] if len(files) > 1 else [])


def test_a_restart_past_the_replay_horizon_writes_gaps_and_a_snapshot_repairs_the_books(
    deployment: Deployment, tmp_path: Path
) -> None:
    src = tmp_path / "gap.mbo.dbn"
    truth = write(
        src,
        GenConfig(records=60_000, instruments=6, events_per_second=3_000, orders_per_instrument=60),
    )
    first = int(np.concatenate(list(open_mbo(src).chunks()))["ts_event"].min())
    port = free_port()
    w = deployment.worker()
    # About 20 s at the recorded pace; the gateway replays only the last 5 s, and the source
    # is down for 6.
    gw = _gateway(
        deployment, port, str(src), "--dataset", "GLBX.MDP3", "--speed", "1", "--horizon", "5"
    )
    args = (
        "--dataset",
        "GLBX.MDP3",
        "--symbols",
        "ALL_SYMBOLS",
        "--start",
        str(first),
        "--resume-window",
        "0.5",
    )
    bootstrap = deployment.base_env["KAFKA_BROKER"].removeprefix("kafka://")
    try:
        web = free_port()
        live = _live(deployment, port, *args, "--web-port", str(web))
        time.sleep(7)
        # Gaps are written for the instruments the killed source had delivered: all of them,
        # however slowly it started.
        n = len(truth["instruments"])
        wait_for(lambda: _delivered(_status(web), n), 30, "the first source to deliver")
        live.kill()
        live.wait(timeout=10)
        time.sleep(6)
        live = _live(deployment, port, *args)

        def books_done() -> bool:
            for iid, t in truth["instruments"].items():
                view = w.get(f"/books/{iid}/", depth=1)
                if view["books"][0]["last_sequence"] != t["last_sequence"]:
                    return False
            return True

        wait_for(lambda: w.alive() and books_done(), 90, "the worker's books up to date")
    finally:
        live.terminate()
        live.wait(timeout=30)
        gw.terminate()
        gw.wait(timeout=10)
    for iid, t in truth["instruments"].items():
        book = w.get(f"/books/{iid}/", depth=1000)["books"][0]
        assert book["bids"] == t["bids"], iid
        assert book["asks"] == t["asks"], iid
        assert not book["suspect"], iid
    gaps = [
        orjson.loads(v)
        for _, v, _, _ in consume_all(bootstrap, f"{deployment.prefix}live.gaps", timeout=10)
    ]
    assert sorted(g["instrument_id"] for g in gaps) == sorted(map(int, truth["instruments"]))
    assert all(g["from_ts_event"] < g["to_ts_recv"] for g in gaps)
    markers = [
        m
        for m in consume_all(bootstrap, f"{deployment.prefix}mbo.raw", headers=True)
        if "gap" in m[4]
    ]
    assert len(markers) == len(truth["instruments"])
