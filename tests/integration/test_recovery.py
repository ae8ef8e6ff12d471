"""kill -9 a worker in the middle of a replay and restart it: nothing lost, nothing doubled,
under both processing guarantees, with its local RocksDB state kept or wiped (then the
table is rebuilt from its changelog)."""

from __future__ import annotations

from pathlib import Path

import pytest

from load_tests.gen_mbo import GenConfig, write
from tests.integration.conftest import KILL_CASES, Deployment, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def paced_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("gen") / "paced.mbo.dbn.zst"
    # About 6 s of event time at 20k events/s: long enough to kill the worker mid-way.
    truth = write(out, GenConfig(records=160_000, instruments=16, orders_per_instrument=100))
    return out, truth


@KILL_CASES
def test_kill9_mid_replay_then_restart_counts_exactly(
    deployment: Deployment, paced_file: tuple[Path, dict], guarantee: str, keep_state: bool
) -> None:
    path, truth = paced_file
    total = truth["records"]
    w = deployment.worker(TAPESTREAM_PROCESSING_GUARANTEE=guarantee)
    deployment.kill9_mid_replay(
        w, path, lambda: w.get("/instruments/")["records"] > total // 5, keep_state
    )
    wait_for(
        lambda: w.alive() and w.get("/instruments/")["records"] == total,
        120,
        f"all {total} records counted after restart",
    )
    served = {d["instrument_id"]: d for d in w.get("/instruments/")["instruments"]}
    for iid, t in truth["instruments"].items():
        got = served[int(iid)]
        assert (got["records"], got["actions"]) == (t["records"], t["actions"]), iid
        assert got["last_sequence"] == t["last_sequence"]
    # Stays exact: nothing arrives late and doubles a count once the replay is done.
    assert w.get("/instruments/")["records"] == total
