"""The depth source against the stand-in venue, with real workers: dropped updates, a stale
snapshot, a disconnect and a malformed frame are each detected and resynced, and the workers'
books then equal the venue's, as they do for the real BTCUSDT capture served beside them; what
the sources took, recorded to files and read by the file driver, gives the same records as the
raw topic holds; a connection replaced before the venue's age limit loses and repeats
nothing."""

from __future__ import annotations

import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import orjson
import pytest
import requests

from app.feeds.depth_capture import decimal_units, instrument_for
from app.feeds.mbo_files import open_mbo
from models.mbo import MBO_DTYPE, MBO_SIZE
from tests.integration.conftest import ROOT, Deployment, consume_all, free_port, wait_for

pytestmark = pytest.mark.integration

CAPTURE = ROOT.parent / "shared" / "data" / "binance" / "usdm-btcusdt-2024-08-08.depth-trades.gz"
SYMBOLS = ("AAAUSDT", "BBBUSDT")


def _venue(d: Deployment, *args: str) -> tuple[subprocess.Popen, str]:
    log = open(d.tmp / "venue.log", "ab")  # noqa: SIM115
    proc = d.spawn("depth-venue", *args, stderr=log)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert "stand-in venue" in line, line
    return proc, "127.0.0.1:" + line.rsplit(":", 1)[1].strip()


def _depth(d: Deployment, venue: str, web: int, *args: str) -> subprocess.Popen:
    return d.spawn(
        "depth",
        "--ws-url",
        f"ws://{venue}",
        "--rest-url",
        f"http://{venue}",
        "--web-port",
        str(web),
        *args,
        stdout=subprocess.DEVNULL,
        stderr=open(d.tmp / "depth.log", "ab"),
    )


def _get(url: str) -> dict | None:
    try:
        return requests.get(url, timeout=5).json()
    except (requests.RequestException, ValueError):
        return None


def _raw_records(d: Deployment) -> dict[int, np.ndarray]:
    bootstrap = d.base_env["KAFKA_BROKER"].removeprefix("kafka://")
    out: dict[int, list[np.ndarray]] = defaultdict(list)
    for _key, value, _p, _o in consume_all(bootstrap, f"{d.prefix}mbo.raw", timeout=5):
        if value and len(value) % MBO_SIZE == 0:
            recs = np.frombuffer(value, dtype=MBO_DTYPE)
            out[int(recs["instrument_id"][0])].append(recs)
    return {iid: np.concatenate(rs) for iid, rs in out.items()}


def _venue_book(venue: str, symbol: str) -> dict[str, list[list[int]]]:
    snap = requests.get(
        f"http://{venue}/fapi/v1/depth", params={"symbol": symbol, "limit": 1000}, timeout=5
    ).json()
    return {
        side: [[decimal_units(p, 9, "p"), decimal_units(q, 3, "q")] for p, q in snap[side]]
        for side in ("bids", "asks")
    }


def _stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def test_gaps_resync_and_the_workers_books_equal_the_venues(
    deployment: Deployment, tmp_path: Path
) -> None:
    venue_proc, venue = _venue(
        deployment,
        "--symbols",
        ",".join(SYMBOLS),
        "--rate",
        "400",
        "--updates",
        "3000",
        "--fault",
        "stale@1",  # the first snapshot is too old to join the stream
        "--fault",
        "drop@600",
        "--fault",
        "drop@1400",
        "--fault",
        "disconnect@2000",
        "--fault",
        "garbage@2400",
    )
    # Beside it, BTCUSDT from the real capture, served as fast as it goes.
    btc_proc, btc_venue = _venue(deployment, "--capture", str(CAPTURE), "--speed", "0")
    w1, w2 = deployment.worker("w1"), deployment.worker("w2")
    deployment.wait_assigned(w1, w2)
    web, btc_web = free_port(), free_port()
    record, btc_record = tmp_path / "taken.jsonl", tmp_path / "btc.jsonl"
    source = _depth(deployment, venue, web, "--symbols", ",".join(SYMBOLS), "--record", str(record))
    btc_source = _depth(
        deployment,
        btc_venue,
        btc_web,
        "--symbols",
        "BTCUSDT",
        "--depth-stream",
        "depth@0ms",
        "--record",
        str(btc_record),
    )
    status_url = f"http://127.0.0.1:{web}/status"
    try:
        wait_for(
            lambda: (_get(f"http://{venue}/status") or {}).get("finished"), 60, "the feed to end"
        )

        def settled() -> dict | None:
            s = _get(status_url)
            books = (s or {}).get("books", {})
            ok = (
                s
                and s["records"] == s["acknowledged_records"]
                and len(books) == len(SYMBOLS)
                and all(b["synced"] for b in books.values())
            )
            return s if ok else None

        status = wait_for(settled, 30, "every book synced and every record acknowledged")
        # Each dropped update broke the pu chain; the disconnect did too if the venue made
        # an update before the source was back (it reconnects at once the first time).
        assert status["depth_gaps"] >= 2, status
        assert status["snapshots_refused"] >= 1, status
        assert status["snapshots"] >= len(SYMBOLS) + status["depth_gaps"], status
        assert status["reconnects"] == 1 and status["trade_gaps"] == len(SYMBOLS), status
        assert status["dead_letters"] == 1, status

        for symbol in SYMBOLS:
            iid, truth = instrument_for(symbol), _venue_book(venue, symbol)

            def caught_up(iid: int = iid, truth: dict = truth) -> bool:
                view = w1.get(f"/books/{iid}/", depth=1000)["books"][0]
                got = {s: [lv[:2] for lv in view[s]] for s in ("bids", "asks")}
                assert all(lv[2] == 0 for lv in view["bids"] + view["asks"])  # no counts: L2
                return got == truth and not view["suspect"]

            wait_for(caught_up, 60, f"the workers' book of {symbol} to equal the venue's")

        wait_for(lambda: (_get(f"http://{btc_venue}/status") or {}).get("finished"), 120, "BTC")
        # The top 100 levels: deeper ones the venue learned of after the source's snapshot
        # (which goes 1000 deep) are not in it, as with the real venue.
        btc = instrument_for("BTCUSDT")
        truth = {side: lv[:100] for side, lv in _venue_book(btc_venue, "BTCUSDT").items()}

        def btc_caught_up() -> bool:
            r = w2.get_raw(f"/books/{btc}/?depth=100&units=raw")
            view = r.json()["books"][0] if r.status_code == 200 else {}
            return {s: [lv[:2] for lv in view.get(s, [])] for s in ("bids", "asks")} == truth

        wait_for(btc_caught_up, 120, "the workers' BTCUSDT book to equal the venue's")
        btc_status = _get(f"http://127.0.0.1:{btc_web}/status")
        assert btc_status is not None and btc_status["depth_gaps"] == 0, btc_status
        # it joined early: nearly every one of the capture's 6,547 updates went through
        assert btc_status["books"]["BTCUSDT"]["updates"] > 6_000, btc_status
    finally:
        _stop(source, venue_proc, btc_source, btc_proc)

    bootstrap = deployment.base_env["KAFKA_BROKER"].removeprefix("kafka://")
    gaps = consume_all(bootstrap, f"{deployment.prefix}live.gaps", expect_messages=2, timeout=20)
    assert sorted(orjson.loads(v)["symbol"] for _, v, _, _ in gaps) == sorted(SYMBOLS)
    letters = consume_all(
        bootstrap, f"{deployment.prefix}dead.letters", expect_messages=1, timeout=20
    )
    assert orjson.loads(letters[0][1])["reason"].startswith("not JSON"), letters

    # Live equals the file driver: the recording, read back, is the raw topic record for record.
    raw = _raw_records(deployment)
    from_file = np.concatenate(
        [np.concatenate(list(open_mbo(f).chunks())) for f in (record, btc_record)]
    )
    for symbol in (*SYMBOLS, "BTCUSDT"):
        iid = instrument_for(symbol)
        mine = from_file[from_file["instrument_id"] == iid]
        assert raw[iid].tobytes() == mine.tobytes(), symbol


def test_a_connection_is_replaced_before_the_age_limit_without_a_gap(
    deployment: Deployment,
) -> None:
    venue_proc, venue = _venue(
        deployment, "--symbols", "AAAUSDT", "--rate", "300", "--updates", "2400", "--max-age", "4"
    )
    web = free_port()
    source = _depth(deployment, venue, web, "--symbols", "AAAUSDT", "--max-connection-age", "2")
    status_url = f"http://127.0.0.1:{web}/status"
    try:
        wait_for(
            lambda: (_get(f"http://{venue}/status") or {}).get("finished"), 60, "the feed to end"
        )
        status = wait_for(
            lambda: (s := _get(status_url)) and s["records"] == s["acknowledged_records"] and s,
            30,
            "every record acknowledged",
        )
        assert status["replacements"] >= 2, status
        assert status["depth_gaps"] == 0 and status["reconnects"] == 0, status
        assert status["trade_gaps"] == 0 and status["snapshots"] == 1, status
        assert status["duplicates"] > 0, status  # both connections sent them; one counted
        venue_status = _get(f"http://{venue}/status")
        assert venue_status is not None
    finally:
        _stop(source, venue_proc)
    raw = _raw_records(deployment)[instrument_for("AAAUSDT")]
    trades = raw[raw["action"] == ord("T")]
    assert len(trades) == venue_status["trades"]["AAAUSDT"]
