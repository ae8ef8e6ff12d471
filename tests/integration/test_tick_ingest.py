"""POST /ingest/ticks on real workers (two, sharing the partitions): requests without the token,
too large, not JSON or with a bad record are refused with the reason and nothing of them
reaches the raw topic; good requests become the books' BBO and bars on whichever worker owns
each instrument, an odd lot adds volume and sets no price, an official close is in no bar, and a
retried request adds nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import orjson
import pytest
import requests

from app.feeds.tick_capture import instrument_for
from models.mbo import MBO_DTYPE, MBO_SIZE
from tests.integration.conftest import Deployment, Worker, consume_all, wait_for
from tests.unit.test_symbology import ONE, OTHER

pytestmark = pytest.mark.integration

TOKEN = "ingest-test-token-0123456789abcdef"
PX = 1_000_000_000  # one dollar in the MBO fixed point


def _post(w: Worker, body: object, token: str | None = TOKEN) -> requests.Response:
    data = orjson.dumps(body) if isinstance(body, list | dict) else body
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.post(f"{w.url}/ingest/ticks", data=data, headers=headers, timeout=30)


def _chunks(body: bytes, n: int = 1000) -> Iterator[bytes]:
    """A body sent chunked, a piece at a time: no Content-Length to go by."""
    for i in range(0, len(body), n):
        time.sleep(0.01)
        yield body[i : i + n]


def _quote(sym: str, seq: int, bid: int, ask: int) -> dict:
    return {"kind": "quote", "symbol": sym, "ts_event": time.time_ns(), "sequence": seq,
            "bid_px": bid * PX // 100, "bid_sz": 300,
            "ask_px": ask * PX // 100, "ask_sz": 200}  # fmt: skip


def _trade(sym: str, seq: int, cents: int, size: int, **more: object) -> dict:
    return {"kind": "trade", "symbol": sym, "ts_event": time.time_ns(), "sequence": seq,
            "price": cents * PX // 100, "size": size, "venue": 4, **more}  # fmt: skip


def test_refused_requests_send_nothing_and_good_ones_make_books_and_bars(
    deployment: Deployment,
) -> None:
    deployment.base_env.update(
        TAPESTREAM_INGEST_TOKEN=TOKEN,
        TAPESTREAM_INGEST_MAX_BYTES="8192",
        TAPESTREAM_BAR_INTERVALS="1s",
        TAPESTREAM_ALLOWED_LATENESS="0.2",
        TAPESTREAM_PARTITIONS="4",
    )
    w1, w2 = deployment.worker("w1"), deployment.worker("w2")
    wait_for(lambda: w1.alive() and w2.alive(), 60, "two workers up")
    wait_for(lambda: w1.get("/ready")["ready"] and w2.get("/ready")["ready"], 90, "both ready")

    # Refused: nothing of these may reach the topic (all carry the symbol BAD).
    bad = [_quote("BAD", 1, 100, 101), _trade("BAD", 2, 100, 5)]
    r = _post(w1, bad, token=None)
    assert r.status_code == 401 and "bearer token" in r.json()["error"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = _post(w1, bad, token="not-" + TOKEN)
    assert r.status_code == 401 and TOKEN not in r.text
    r = _post(w1, [*bad] * 60)
    assert r.status_code == 413 and "8192" in r.json()["error"]

    r = _post(w1, _chunks(orjson.dumps([*bad] * 60)))
    assert r.status_code == 413, r.text
    r = _post(w1, b'[{"kind": "trade", ')
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    r = _post(w1, [*bad, _trade("BAD", 3, 100, "5"), {**_trade("BAD", 4, 100, 1), "kind": "tick"}])
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert errors[0] == {"index": 2, "field": "size", "reason": "Input should be a valid integer"}
    assert errors[1]["index"] == 3 and "kind" in errors[1]["reason"]
    r = _post(w1, [{**bad[1], "instrument_id": 7}])
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "instrument_id"
    r = _post(w1, {"kind": "trade"})  # not an array
    assert r.status_code == 422

    # Good requests, to one worker; the instruments' partitions are spread over both.
    syms = ["AAPL", "MSFT", "NVDA", "AMZN"]
    quotes = [_quote(s, 1, 10_000 + i, 10_002 + i) for i, s in enumerate(syms)]
    r = _post(w1, _chunks(orjson.dumps(quotes), 100))  # read whole
    assert r.status_code == 200, r.text
    assert r.json() == {"ticks": 4, "records": 8, "instruments": 4, "excluded_trades": 0,
                        "duplicates": 0}  # fmt: skip
    trades = []
    for i, s in enumerate(syms):
        trades += [
            _trade(s, 2, 10_002 + i, 100),  # at the offer: a buyer (quote rule)
            _trade(s, 3, 10_000 + i, 40, aggressor="B"),  # at the bid, but the vendor says B
            _trade(s, 4, 30_000, 7, conditions=[37]),  # an odd lot far off: volume, no price
            _trade(s, 5, 10_000 + i, 60),  # at the bid: a seller
            _trade(s, 6, 20_000, 9, conditions=[15]),  # an official close: not a trade at all
        ]
    r = _post(w1, trades)
    assert r.status_code == 200, r.text
    assert r.json()["excluded_trades"] == 8 and r.json()["records"] == 16
    again = _post(w1, trades)  # a client's retry: every tick a repeat of its sequence number
    assert again.status_code == 200 and again.json()["duplicates"] == 20
    assert again.json()["records"] == 0
    # Two tickers with one id: the second is refused, naming the first (tables/symbology.py).
    assert _post(w1, [_quote(ONE, 1, 500, 501)]).status_code == 200
    r = _post(w2, [_trade(OTHER, 1, 500, 10)])
    assert r.status_code == 422 and ONE in r.json()["errors"][0]["reason"], r.text
    time.sleep(1.5)
    # Later quotes: the books' BBO, and the watermark that closes the trades' 1 s bars.
    final = [_quote(s, 6, 9_990 + i, 9_995 + i) for i, s in enumerate(syms)]
    assert _post(w2, final).status_code == 200

    for s, q in zip(syms, final, strict=True):
        iid = instrument_for(s)
        for w in (w1, w2):  # either worker answers, routed to the owner
            book = wait_for(
                lambda w=w, iid=iid, q=q: (
                    (b := w.get(f"/books/{iid}/", depth=1)["books"][0])["bids"][0][0] == q["bid_px"]
                    and b
                ),
                30,
                f"{s}'s book at its last quote",
            )
            assert book["asks"] == [[q["ask_px"], q["ask_sz"], 0]]  # L1: no order counts
            assert book["bids"] == [[q["bid_px"], q["bid_sz"], 0]]

    bootstrap = deployment.base_env["KAFKA_BROKER"].removeprefix("kafka://")
    bars = wait_for(
        lambda: (
            len(b := consume_all(bootstrap, f"{deployment.prefix}bars.1s", timeout=5)) >= 4 and b
        ),
        60,
        "a 1 s bar per instrument",
    )
    got = {}
    for _, v, _, _ in bars:
        row = orjson.loads(v)
        got.setdefault(row["instrument_id"], []).append(row)
    for i, s in enumerate(syms):
        rows = got[instrument_for(s)]
        assert sum(r["volume"] for r in rows) == 207, s  # the odd lot's 7; the retry: none
        assert sum(r["trades"] for r in rows) == 4
        assert sum(r["buy_volume"] for r in rows) == 147  # the odd lot, above the midpoint
        assert sum(r["sell_volume"] for r in rows) == 60
        assert max(r["high"] for r in rows) == (10_002 + i) * PX // 100
        assert min(r["low"] for r in rows) == (10_000 + i) * PX // 100

    raw = np.concatenate(
        [
            np.frombuffer(v, dtype=MBO_DTYPE)
            for _, v, _, _ in consume_all(bootstrap, f"{deployment.prefix}mbo.raw", timeout=5)
            if v and len(v) % MBO_SIZE == 0
        ]
    )
    assert not (raw["instrument_id"] == instrument_for("BAD")).any()
    assert len(raw) == 8 + 16 + 2 + 8
    symbols = consume_all(bootstrap, f"{deployment.prefix}symbols", timeout=5)
    named = {orjson.loads(v)["symbol"]: orjson.loads(v) for _, v, _, _ in symbols}
    assert sorted(named) == sorted([*syms, ONE])  # a refused request names nothing
    assert named["AAPL"]["instrument_id"] == instrument_for("AAPL")
    metrics = requests.get(f"{w1.url}/metrics", timeout=10).text
    assert 'tapestream_ingest_requests_total{status="401"} 2.0' in metrics
    assert 'tapestream_ingest_requests_total{status="422"} 3.0' in metrics
    assert 'tapestream_ingest_requests_total{status="413"} 2.0' in metrics
    assert "tapestream_ingest_ticks_total 25.0" in metrics  # the retry's repeats: not again
    for w in (w1, w2):
        assert TOKEN not in w.log_path.read_text()
