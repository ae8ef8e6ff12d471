"""The books under kill -9: a real worker killed in the middle of a replay and restarted
(local state kept or wiped) ends with books and per-instrument counts equal to the generator's
ground truth, nothing lost and nothing doubled, and
`book.deltas`, read with read_committed from the start and applied as an L2 feed, reproduces
them exactly: nothing lost, nothing doubled (under at-least-once, repeats carry an event number
already seen and are dropped by it, as docs/topics.md tells consumers to)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from load_tests.gen_mbo import GenConfig, write
from models import book_events
from tests.integration.conftest import (
    KILL_CASES,
    Deployment,
    Worker,
    consume_all,
    read_jsonl,
    wait_for,
)

pytestmark = pytest.mark.integration
DEEP = 1000


@pytest.fixture(scope="module")
def book_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("gen") / "books.mbo.dbn.zst"
    # About 8 s of event time at 20k events/s; a few thousand adds per instrument, so each
    # book spans several checkpoint pages.
    truth = write(out, GenConfig(records=160_000, instruments=12, orders_per_instrument=150))
    return out, truth


def _books_done(w: Worker, truth: dict) -> bool:
    for iid, t in truth["instruments"].items():
        view = w.get(f"/books/{iid}/", depth=1)
        if view["books"][0]["last_sequence"] != t["last_sequence"]:
            return False
    return True


def _apply_deltas(messages: list[tuple[bytes, bytes, int, int]]) -> tuple[dict, int, int]:
    """L2 books from book.deltas messages in log order; returns (books, rows, repeats)."""
    books: dict[tuple[int, int], dict[int, dict[int, tuple[int, int]]]] = {}
    last_event: dict[tuple[int, int], int] = {}
    rows = repeats = 0
    for _, value, _, _ in messages:
        m = orjson.loads(value)
        iid = m["instrument_id"]
        seen = dict(last_event)  # an event's rows all travel in one message
        for i, event in enumerate(m["event"]):
            key = (m["publisher_id"][i], iid)
            rows += 1
            if event <= seen.get(key, -1):
                repeats += 1
                continue
            last_event[key] = event
            levels = books.setdefault(key, {ord("B"): {}, ord("A"): {}})
            side = ord(m["side"][i])
            if side == ord("R"):
                levels[ord("B")].clear()
                levels[ord("A")].clear()
            elif m["size"][i] == 0 and m["count"][i] == 0:
                levels[side].pop(m["price"][i], None)
            else:
                levels[side][m["price"][i]] = (m["size"][i], m["count"][i])
    return books, rows, repeats


@KILL_CASES
def test_books_survive_kill9_and_deltas_reproduce_them(
    deployment: Deployment, book_file: tuple[Path, dict], guarantee: str, keep_state: bool
) -> None:
    path, truth = book_file
    w = deployment.worker(TAPESTREAM_PROCESSING_GUARANTEE=guarantee)
    deployment.kill9_mid_replay(
        w, path, lambda: w.get("/instruments/")["records"] > truth["records"] // 4, keep_state
    )
    # (the counts view reads the table, written at each commit: it can be a second behind)
    wait_for(
        lambda: (
            w.alive()
            and _books_done(w, truth)
            and w.get("/instruments/")["records"] == truth["records"]
        ),
        120,
        "every book up to date and every record counted",
    )

    for iid, t in truth["instruments"].items():
        book = w.get(f"/books/{iid}/", depth=DEEP)["books"][0]
        assert book["bids"] == t["bids"], iid
        assert book["asks"] == t["asks"], iid
        assert book["orders"] == t["orders"], iid
        assert book["counters"]["unknown_orders"] == 0
        assert not book["suspect"]
    served = {d["instrument_id"]: d for d in w.get("/instruments/")["instruments"]}
    for iid, t in truth["instruments"].items():
        got = served[int(iid)]
        assert (got["records"], got["actions"]) == (t["records"], t["actions"]), iid
        assert got["last_sequence"] == t["last_sequence"]
    assert w.get("/instruments/")["records"] == truth["records"]

    deltas = consume_all(
        deployment.base_env["KAFKA_BROKER"].removeprefix("kafka://"),
        f"{deployment.prefix}book.deltas",
        timeout=60,
    )
    books, rows, repeats = _apply_deltas(deltas)
    assert rows > 10_000
    if guarantee == "exactly_once":
        assert repeats == 0
    for iid, t in truth["instruments"].items():
        levels = books[(1, int(iid))]
        bids = sorted(([p, *v] for p, v in levels[ord("B")].items()), reverse=True)
        asks = sorted([p, *v] for p, v in levels[ord("A")].items())
        assert bids == t["bids"], iid
        assert asks == t["asks"], iid


def _rows_by_instrument(rows: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in rows:
        out.setdefault(r["instrument_id"], []).append(r)
    return out


def test_books_views_backfill_and_bad_requests(
    deployment: Deployment, book_file: tuple[Path, dict]
) -> None:
    path, truth = book_file
    w = deployment.worker()
    replay = deployment.replay(path, "--max")
    _, err = replay.communicate(timeout=120)
    assert replay.returncode == 0, err
    wait_for(lambda: _books_done(w, truth), 60, "every book up to date")
    listing = w.get("/books/")
    assert listing["count"] == len(truth["instruments"])
    first = listing["instruments"][0]
    t = truth["instruments"][str(first["instrument_id"])]
    assert first["books"][0]["bid"] == t["bids"][0]
    assert first["books"][0]["ask"] == t["asks"][0]
    top = w.get(f"/books/{first['instrument_id']}/", depth=2)["books"][0]
    assert len(top["bids"]) == 2 and top["bid_levels"] == len(t["bids"])
    assert w.get_raw("/books/abc/").status_code == 400
    assert w.get_raw(f"/books/{first['instrument_id']}/?depth=0").status_code == 400
    assert w.get_raw("/books/999999/").status_code == 404
    trades = consume_all(
        deployment.base_env["KAFKA_BROKER"].removeprefix("kafka://"),
        f"{deployment.prefix}trades",
        timeout=30,
    )
    # (an empty message with no key is a source watermark marker, not trades)
    assert all(k is not None for k, v, _, _ in trades if v)
    n_trades = sum(len(orjson.loads(v)["event"]) for _, v, _, _ in trades if v)
    assert n_trades == sum(t["actions"].get("T", 0) for t in truth["instruments"].values())

    # backfill, with no broker, publishes the same rows and ends with the same books
    out = deployment.tmp / "backfill"
    run = deployment.cli("backfill", str(path), "--out", str(out), "--no-progress")
    assert run.returncode == 0, run.stderr
    for iid in truth["instruments"]:
        live = w.get(f"/books/{iid}/")
        del live["position"]
        assert live in read_jsonl(out / "books.table.jsonl")
    broker = deployment.base_env["KAFKA_BROKER"].removeprefix("kafka://")
    live_rows = [
        row
        for _, v, _, _ in consume_all(broker, f"{deployment.prefix}book.deltas", timeout=30)
        for row in book_events.rows(orjson.loads(v))
    ]
    assert _rows_by_instrument(live_rows) == _rows_by_instrument(
        read_jsonl(out / "book.deltas.jsonl")
    )
