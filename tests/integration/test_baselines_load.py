"""`faust -A app baselines --load`: baselines built from history with no broker, loaded into a
fresh deployment's table, score the first live windows exactly as that history says."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from app.file_driver import run_files
from app.settings import load_settings
from load_tests.gen_mbo import GenConfig, option_definitions, write, write_definitions
from tables.baselines import window_values
from tests.integration.conftest import Deployment, consume_all, wait_for
from tests.integration.test_bars_live import start
from tests.integration.test_ifd_live import IFD_ENV

DAY = 86_400_000_000_000
T0 = 1_700_000_000_000_000_000


def test_loaded_baselines_score_the_first_live_windows(
    deployment: Deployment, tmp_path: Path
) -> None:
    history, later = tmp_path / "history.mbo.dbn.zst", tmp_path / "later.mbo.dbn.zst"
    write(history, GenConfig(records=60_000, instruments=4, events_per_second=0.4, seed=21))
    write(
        later,
        GenConfig(
            records=15_000, instruments=4, events_per_second=0.4, seed=22, start_ns=T0 + 3 * DAY
        ),
    )
    # two of the instruments are a call and a put on SYN: their groups get baselines too
    defs = write_definitions(
        tmp_path / "chain.definition.dbn", option_definitions([1000, 1001], ("SYN",), ts=T0)
    )
    settings = load_settings(IFD_ENV)
    built = run_files([str(defs), str(history)], settings, progress=False)
    past, past_groups = built.ifd, built.options
    assert past is not None and past_groups is not None
    fresh = run_files([str(later)], settings, progress=False).row_topics["pressure"]

    deployment.base_env.update(IFD_ENV)
    out = tmp_path / "baselines.jsonl"
    run = deployment.cli(
        "baselines", str(defs), str(history), "--load", "--out", str(out), "--no-progress"
    )
    assert run.returncode == 0, run.stderr
    summary = orjson.loads(run.stdout.strip().splitlines()[-1])
    assert summary["instruments"] == 4 and summary["groups"] == 4
    assert summary["loaded_records"] > summary["buckets"] + summary["group_buckets"]
    lines = out.read_bytes().splitlines()
    assert len(lines) == summary["buckets"] + summary["group_buckets"]
    again = deployment.cli("baselines", str(history), "--load", "--no-progress")
    assert again.returncode == 1 and "already holds" in again.stderr

    w = start(deployment, "4", "1000")
    wait_for(w.alive, 30, "the worker up")
    replay = deployment.replay(defs, str(later), "--max")
    _, err = replay.communicate(timeout=240)
    assert replay.returncode == 0, err
    bootstrap = deployment.base_env["KAFKA_BROKER"].removeprefix("kafka://")

    def live() -> list[dict]:
        rows = consume_all(bootstrap, f"{deployment.prefix}pressure", timeout=20)
        return [orjson.loads(v) for _, v, _, _ in rows]

    got = wait_for(lambda: (r := live()) and len(r) >= len(fresh) and r, 120, "pressure rows")
    assert len(got) == len(fresh)
    scored = 0
    for row in got:
        stats = past.signals.baselines.stats(row["instrument_id"], row["bucket"], row["session"])
        if stats is None:
            assert "z_vol" not in row
            continue
        values = window_values(row["volume"], row["tfi"], row["ofi"], row["net_score"])
        assert row["baseline_sessions"] == stats["log_volume"].n
        assert row["z_vol"] == pytest.approx(stats["log_volume"].z(values["log_volume"]), rel=1e-12)
        assert row["z_flow"] == pytest.approx(stats["tfi"].z(values["tfi"]), rel=1e-12, abs=1e-12)
        assert row["z_net"] == pytest.approx(
            stats["net_score"].z(values["net_score"]), rel=1e-12, abs=1e-12
        )
        scored += 1
    assert scored > 20

    # The option groups' first live windows are scored against the groups' loaded history.
    groups = wait_for(
        lambda: [
            orjson.loads(v)
            for _, v, _, _ in consume_all(
                bootstrap, f"{deployment.prefix}options.pressure", timeout=20
            )
        ],
        60,
        "options.pressure rows",
    )
    scored = 0
    for row in groups:
        stats = past_groups.signals.baselines.stats(row["group"], row["bucket"], row["session"])
        if stats is None:
            continue
        assert row["baseline_sessions"] == stats["log_volume"].n
        values = window_values(row["volume"], row["tfi"], row["ofi"], row["net_score"])
        assert row["z_vol"] == pytest.approx(stats["log_volume"].z(values["log_volume"]), rel=1e-12)
        scored += 1
    assert scored > 10
