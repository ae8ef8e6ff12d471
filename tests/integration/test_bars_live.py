"""Live bars and indicators through the broker and real workers equal backfill's, record for
record: at full speed and at a pace, with different batch sizes and partition counts, and
across a kill -9 of the worker; plus the /bars/ and /indicators/ views."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.file_driver import run_files
from app.settings import load_settings
from load_tests.gen_mbo import GenConfig, write
from models.units import show
from tests.integration.conftest import Deployment, Worker, consume_all, wait_for

TOPICS = ("bars.1m", "bars.5m", "bars.15m", "indicators", "signals")  # signals: patterns


@pytest.fixture(scope="module")
def bars_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[dict]]]:
    """A generated MBO file of about 25 minutes of event time (6 instruments, some quiet),
    with what backfill makes of it."""
    path = tmp_path_factory.mktemp("gen") / "bars.mbo.dbn.zst"
    write(path, GenConfig(records=150_000, instruments=6, events_per_second=100, seed=3))
    result = run_files([str(path)], load_settings({}), progress=False)
    want = {t: result.row_topics[t] for t in TOPICS}
    assert len(want["bars.1m"]) > 50 and len(want["bars.15m"]) >= 6
    assert result.row_topics["trades.late"] == []
    return path, want


def _key(topic: str, row: dict[str, Any]) -> tuple:
    """What identifies a derived row: a repeat under at-least-once has the same key."""
    start, direction = row["start"], row.get("direction", "")
    owner = row["group"] if "group" in row else row["instrument_id"]  # an options group's
    return (topic, owner, row["interval"], start, row.get("kind", ""), direction)


def live_rows(d: Deployment, want: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Every row of the topics `want` names (read_committed), repeats dropped once they are
    checked to be identical; waits until as many as backfill made have arrived."""
    bootstrap = d.base_env["KAFKA_BROKER"].removeprefix("kafka://")
    expected = sum(len(v) for v in want.values())
    deadline = time.monotonic() + 180
    while True:
        seen: dict[tuple, dict] = {}
        for topic in want:
            for _, value, _, _ in consume_all(bootstrap, f"{d.prefix}{topic}", timeout=30):
                row = orjson.loads(value)
                if row.get("kind") == "processing_lag":  # wall-clock: no replay can repeat it
                    continue
                k = _key(topic, row)
                assert seen.setdefault(k, row) == row, f"a repeat that differs: {k}"
        if len(seen) >= expected or time.monotonic() > deadline:
            break
        time.sleep(2)
    out: dict[str, list[dict]] = {t: [] for t in want}
    for (topic, *_), row in sorted(seen.items(), key=lambda kv: kv[0]):
        out[topic].append(row)
    return out


def assert_same(got: dict[str, list[dict]], want: dict[str, list[dict]]) -> None:
    for topic in want:
        w = sorted(want[topic], key=lambda r: _key(topic, r))
        assert len(got[topic]) == len(w), topic
        for g, e in zip(got[topic], w, strict=True):
            assert g == e, topic


def replay_all(d: Deployment, w: Worker, path: Path, pace: list[str]) -> None:
    """Once the worker is up, replay the whole file at `pace` and wait for it to finish."""
    wait_for(w.alive, 30, "the worker up")
    replay = d.replay(path, *pace)
    _, err = replay.communicate(timeout=240)
    assert replay.returncode == 0, err


def start(d: Deployment, partitions: str, batch: str, **extra: str) -> Worker:
    d.base_env["TAPESTREAM_PARTITIONS"] = partitions
    d.base_env["TAPESTREAM_BATCH_RECORDS"] = batch
    return d.worker(**extra)


@pytest.mark.parametrize(
    ("partitions", "batch", "pace"),
    [("4", "1000", ["--max"]), ("1", "4096", ["--max"]), ("2", "300", ["--speed", "200"])],
)
def test_live_bars_equal_backfill_at_any_pace_batch_and_partition_count(
    deployment: Deployment,
    bars_file: tuple[Path, dict[str, list[dict]]],
    partitions: str,
    batch: str,
    pace: list[str],
) -> None:
    path, want = bars_file
    w = start(deployment, partitions, batch)
    replay_all(deployment, w, path, pace)
    assert_same(live_rows(deployment, want), want)

    # The views serve the same bars, newest last, from the worker that owns the instrument.
    last = [r for r in want["bars.1m"] if r["instrument_id"] == want["bars.1m"][0]["instrument_id"]]
    iid = last[0]["instrument_id"]
    view = w.get(f"/bars/{iid}/", interval="1m", limit=3)
    assert view["bars"] == sorted(last, key=lambda r: r["start"])[-3:]
    ind = w.get(f"/indicators/{iid}/", interval="1m")
    newest = max(
        (r for r in want["indicators"] if r["instrument_id"] == iid and r["interval"] == "1m"),
        key=lambda r: r["start"],
    )
    assert ind["bars"] == len(last)
    assert {k: ind[k] for k in newest if k not in ("instrument_id", "interval", "start")} == {
        k: v for k, v in newest.items() if k not in ("instrument_id", "interval", "start")
    }
    # By default, decimal prices and ISO times; `from`/`to` choose bars by their start.
    newest_bars = sorted(last, key=lambda r: r["start"])[-3:]
    shown = w.get(f"/bars/{iid}/", interval="1m", units="decimal")["bars"][-3:]
    assert shown == [show(b) for b in newest_bars]
    assert shown[-1]["close"] == pytest.approx(newest_bars[-1]["close"] / 1e9)
    since, until = shown[0]["start"], newest_bars[-1]["start"]
    ranged = w.get(f"/bars/{iid}/", interval="1m", limit=10, **{"from": since, "to": until})
    assert ranged["bars"] == newest_bars[:2]
    bad = w.get_raw(f"/bars/{iid}/?from=yesterday")
    assert bad.status_code == 400 and bad.json()["parameter"] == "from"
    assert w.get_raw(f"/bars/{iid}/?units=cents").json()["parameter"] == "units"
    assert w.get_raw(f"/bars/{iid}/?interval=7q").status_code == 400
    assert w.get_raw(f"/bars/{iid}/?interval=2m").status_code == 400
    assert w.get_raw(f"/bars/{iid}/?limit=0").status_code == 400
    assert w.get_raw("/bars/999999/").status_code == 404


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_a_kill9_mid_replay_changes_no_bar(
    deployment: Deployment, bars_file: tuple[Path, dict[str, list[dict]]], guarantee: str
) -> None:
    path, want = bars_file
    w = start(deployment, "4", "1000", TAPESTREAM_PROCESSING_GUARANTEE=guarantee)

    def some_bars() -> bool:
        iid = want["bars.1m"][0]["instrument_id"]
        return w.get_raw(f"/bars/{iid}/?interval=1m").status_code == 200

    deployment.kill9_mid_replay(w, path, some_bars, keep_state=False, speed="100")
    assert_same(live_rows(deployment, want), want)
