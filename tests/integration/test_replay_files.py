"""`faust -A app replay` on the real files: what reaches the topic is every record, in order per
instrument, in messages that end at F_LAST; a truncated file fails clearly and says what it sent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from app.feeds.mbo_files import read_all
from models.mbo import F_LAST, decode_records
from tests.conftest import ARL_MBO_CSV, ESM4_MBO, SAMPLE_MBO, SHARED_DATA, require
from tests.integration.conftest import Deployment, consume_all

pytestmark = pytest.mark.integration

REAL = [
    *sorted((SHARED_DATA / "glbx-mdp3").glob("*.mbo.dbn.zst")),
    ARL_MBO_CSV,
    *SAMPLE_MBO,
]


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_replay_real_file(deployment: Deployment, broker: str, path: Path) -> None:
    want = read_all(require(path))
    run = deployment.cli("replay", str(path), "--max", "--no-progress")
    assert run.returncode == 0, run.stderr
    summary = orjson.loads(run.stdout.strip().splitlines()[-1])
    assert summary["records"] == len(want)
    total = summary["messages"] + summary["markers"]
    msgs = consume_all(broker, f"{deployment.prefix}mbo.raw", expect_messages=total)
    assert len(msgs) == total
    # Watermark markers (no key, no records): at least the last one of every partition.
    markers = [m for m in msgs if m[0] is None]
    assert all(m[1] == b"" for m in markers)
    assert {m[2] for m in markers} == set(range(4))
    msgs = [m for m in msgs if m[0] is not None]
    assert len(msgs) == summary["messages"]
    by_instrument: dict[int, list[np.ndarray]] = {}
    # one instrument lives on one partition, so partition order is its order
    for key, value, _, _ in sorted(msgs, key=lambda m: (m[2], m[3])):
        recs = decode_records(value)
        assert (recs["instrument_id"] == int(key)).all()
        by_instrument.setdefault(int(key), []).append(recs)
    for iid, parts in by_instrument.items():
        np.testing.assert_array_equal(np.concatenate(parts), want[want["instrument_id"] == iid])
        # every message but an instrument's last ends at an F_LAST boundary
        assert all(p["flags"][-1] & F_LAST for p in parts[:-1])


def test_replay_paced_sends_everything(deployment: Deployment, broker: str) -> None:
    run = deployment.cli("replay", str(ARL_MBO_CSV), "--speed", "1000000", "--no-progress")
    assert run.returncode == 0, run.stderr
    assert orjson.loads(run.stdout.strip().splitlines()[-1])["records"] == 5_886


def test_replay_truncated_file_fails_and_reports(
    deployment: Deployment, broker: str, tmp_path: Path
) -> None:
    cut = tmp_path / "cut.mbo.dbn.zst"
    cut.write_bytes(require(ESM4_MBO).read_bytes()[:150_000])
    run = deployment.cli("replay", str(SAMPLE_MBO[0]), str(cut), "--no-progress")
    assert run.returncode == 1
    err = run.stderr
    assert str(cut) in err and "truncated" in err and "compressed byte 150000" in err
    assert "records of an unfinished event were not sent" in err
    assert f"earlier files were sent whole: {SAMPLE_MBO[0]} (4 records)" in err
    assert "Traceback" not in err


def test_replay_missing_file_sends_nothing(deployment: Deployment, tmp_path: Path) -> None:
    run = deployment.cli("replay", str(SAMPLE_MBO[0]), str(tmp_path / "nope.dbn"))
    assert run.returncode == 1
    assert "nope.dbn: open: no such file" in run.stderr
