"""A real worker counts what replay sends, serves it through routed web views, and the
broker-less backfill gives the same answer."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from load_tests.gen_mbo import GenConfig, truth_path, write
from tests.integration.conftest import Deployment, Worker, read_jsonl, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("gen") / "it.mbo.dbn.zst"
    truth = write(out, GenConfig(records=200_000, instruments=24, orders_per_instrument=150))
    return out, truth


def _expected(truth: dict) -> dict[int, tuple[int, dict]]:
    return {int(k): (v["records"], v["actions"]) for k, v in truth["instruments"].items()}


def _served(w: Worker) -> dict[int, tuple[int, dict]]:
    body = w.get("/instruments/")
    assert not body.get("partial"), body
    return {d["instrument_id"]: (d["records"], d["actions"]) for d in body["instruments"]}


def _wait_total(w: Worker, total: int, timeout: float = 120) -> None:
    wait_for(
        lambda: w.alive() and w.get("/instruments/")["records"] == total,
        timeout,
        f"{total} records counted by {w.name}",
    )


def test_counts_through_a_real_worker_equal_the_file(
    deployment: Deployment, generated: tuple[Path, dict]
) -> None:
    path, truth = generated
    w = deployment.worker()
    run = deployment.cli("replay", str(path), "--max", "--no-progress")
    assert run.returncode == 0, run.stderr
    summary = orjson.loads(run.stdout.strip().splitlines()[-1])
    assert summary["records"] == truth["records"]
    assert summary["instruments"] == len(truth["instruments"])

    _wait_total(w, truth["records"])
    assert _served(w) == _expected(truth)
    one = next(iter(truth["instruments"]))
    detail = w.get(f"/instruments/{one}/")
    assert detail["records"] == truth["instruments"][one]["records"]
    assert detail["last_sequence"] == truth["instruments"][one]["last_sequence"]
    assert w.get_raw("/instruments/999999/").status_code == 404

    # backfill: the same logic with no broker gives the same table, field for field
    out = deployment.tmp / "backfill"
    run = deployment.cli("backfill", str(path), "--out", str(out), "--no-progress")
    assert run.returncode == 0, run.stderr
    assert read_jsonl(out / "instrument-stats.table.jsonl") == w.get("/instruments/")["instruments"]

    metrics = w.get_raw("/metrics").text
    records = float(truth["records"])
    assert f'tapestream_records_processed_total{{agent="instruments"}} {records}' in metrics


def test_two_workers_split_partitions_and_route_reads(
    deployment: Deployment, generated: tuple[Path, dict]
) -> None:
    path, truth = generated
    w1 = deployment.worker("w1")
    w2 = deployment.worker("w2")
    deployment.wait_assigned(w1, w2)
    run = deployment.cli("replay", str(path), "--max", "--no-progress")
    assert run.returncode == 0, run.stderr
    _wait_total(w1, truth["records"], timeout=180)
    local1 = w1.get("/instruments/", scope="local")["instruments"]
    local2 = w2.get("/instruments/", scope="local")["instruments"]
    assert local1 and local2, "both workers should own some instruments"
    assert {d["instrument_id"] for d in local1}.isdisjoint(d["instrument_id"] for d in local2)
    assert _served(w1) == _served(w2) == _expected(truth)
    for iid, t in truth["instruments"].items():
        for w in (w1, w2):  # each answers every key, routing to the owner where needed
            assert w.get(f"/instruments/{iid}/")["records"] == t["records"]


def test_truth_file_sits_beside_the_data(generated: tuple[Path, dict]) -> None:
    path, truth = generated
    assert orjson.loads(truth_path(path).read_bytes()) == truth
