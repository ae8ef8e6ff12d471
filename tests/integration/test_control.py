"""Runtime configuration through the control topic, with a real worker: a change reaches the
running worker without a restart and is logged, a bad value is refused before anything is
written, and the thresholds and instrument filter change what is published."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.integration.conftest import Deployment, consume_all, wait_for
from tests.integration.test_bars_live import replay_all, start
from tests.integration.test_ifd_live import IFD_ENV, ifd_file  # noqa: F401  (a fixture)


def _show(d: Deployment) -> dict:
    run = d.cli("config", "show")
    assert run.returncode == 0, run.stderr
    return {k: v["value"] for k, v in orjson.loads(run.stdout).items()}


def test_config_changes_reach_a_running_worker(
    deployment: Deployment,
    ifd_file: tuple[Path, dict[str, list[dict]]],  # noqa: F811
) -> None:
    path, want = ifd_file
    deployment.base_env.update(IFD_ENV)
    w = start(deployment, "4", "1000")
    wait_for(lambda: w.alive() and w.get("/config/")["caught_up"], 60, "the worker up")

    bad = deployment.cli("config", "set", "signal.z_net", "0")
    assert bad.returncode == 2 and "signal.z_net must be a number > 0" in bad.stderr
    bad = deployment.cli("config", "set", "signal.nope", "1")
    assert bad.returncode == 2 and "unknown setting" in bad.stderr
    # nothing was written: still the value the environment gave
    assert _show(deployment)["signal.z_net"] == float(IFD_ENV["TAPESTREAM_SIGNAL_Z_NET"])

    # Publish one instrument's signals only, and no volume spikes at all.
    iid = max({s["instrument_id"] for s in want["signals"] if s["kind"] == "ifd"})
    for key, value in (("filter.instruments", str(iid)), ("pattern.volume_factor", "1000")):
        run = deployment.cli("config", "set", key, value)
        assert run.returncode == 0, run.stderr
    wait_for(
        lambda: w.get("/config/")["settings"]["pattern.volume_factor"]["value"] == 1000.0,
        30,
        "the worker to apply the change",
    )
    assert "control: pattern.volume_factor changed from 3.0 to 1000.0" in w.log_tail(400)
    assert _show(deployment)["filter.instruments"] == str(iid)

    replay_all(deployment, w, path, ["--max"])
    expected = [s for s in want["signals"] if s["kind"] == "ifd" and s["instrument_id"] == iid]
    bootstrap = deployment.base_env["KAFKA_BROKER"].removeprefix("kafka://")

    def published() -> list[dict]:
        rows = consume_all(bootstrap, f"{deployment.prefix}signals", timeout=20)
        got = [orjson.loads(v) for _, v, _, _ in rows]
        return [s for s in got if s["kind"] != "processing_lag"]

    got = wait_for(lambda: (r := published()) and len(r) >= len(expected) and r, 120, "signals")
    assert sorted(got, key=lambda s: s["id"]) == sorted(expected, key=lambda s: s["id"])
