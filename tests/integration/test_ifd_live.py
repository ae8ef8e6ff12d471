"""Live pressure windows and signals, and option groups' windows and signals, through the
broker and real workers equal backfill's, record for record, at full speed and at a pace, with
different batch sizes and partition counts, and across a kill -9 of the worker; plus the
/signals/ and /options/ views."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.file_driver import run_files
from app.settings import load_settings
from load_tests.gen_mbo import GenConfig, option_definitions, write, write_definitions
from tables.options import OPTIONS_PRESSURE, OPTIONS_SIGNALS
from tests.integration.conftest import Deployment
from tests.integration.test_bars_live import assert_same, live_rows, replay_all, start

# Three days of generated trading, so windows have baselines from earlier sessions; one session
# of history is enough to score, any volume counts and the net-flow threshold is low, so that
# signals fire.
IFD_ENV = {
    "TAPESTREAM_PRESSURE_INTERVAL": "15m",
    "TAPESTREAM_SIGNAL_MIN_SESSIONS": "1",
    "TAPESTREAM_SIGNAL_VOLUME_FLOOR": "1",
    "TAPESTREAM_SIGNAL_Z_NET": "1.0",
}
TOPICS = ("pressure", "signals")
OPTION_TOPICS = (OPTIONS_PRESSURE, OPTIONS_SIGNALS)
CONFIG = GenConfig(records=100_000, instruments=6, events_per_second=0.4, seed=4)


@pytest.fixture(scope="module")
def ifd_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[dict]]]:
    path = tmp_path_factory.mktemp("gen") / "ifd.mbo.dbn.zst"
    write(path, CONFIG)
    result = run_files([str(path)], load_settings(IFD_ENV), progress=False)
    want = {t: result.row_topics[t] for t in TOPICS}
    assert len(want["pressure"]) > 1000
    assert sum(s["kind"] == "ifd" for s in want["signals"]) > 20
    return path, want


@pytest.fixture(scope="module")
def chain(
    ifd_file: tuple[Path, dict[str, list[dict]]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, list[dict]]]:
    """Five of the six instruments as options on two underlyings (SYN's calls span two
    expiries), and what backfill makes of the option groups (the default groups)."""
    path, want = ifd_file
    defs = write_definitions(
        tmp_path_factory.mktemp("chain") / "chain.definition.dbn.zst",
        option_definitions([1000, 1001, 1002, 1003, 1004], ts=CONFIG.start_ns),
    )
    result = run_files([str(defs), str(path)], load_settings(IFD_ENV), progress=False)
    assert all(result.row_topics[t] == want[t] for t in TOPICS)  # definitions change neither
    groups = {t: result.row_topics[t] for t in OPTION_TOPICS}
    assert len(groups[OPTIONS_PRESSURE]) > 1000 and len(groups[OPTIONS_SIGNALS]) > 20
    return defs, {**want, **groups}


@pytest.mark.parametrize(
    ("partitions", "batch", "pace"),
    [("4", "1000", ["--max"]), ("2", "300", ["--speed", "20000"])],
)
def test_live_pressure_signals_and_option_groups_equal_backfill(
    deployment: Deployment,
    ifd_file: tuple[Path, dict[str, list[dict]]],
    chain: tuple[Path, dict[str, list[dict]]],
    partitions: str,
    batch: str,
    pace: list[str],
) -> None:
    path, _ = ifd_file
    defs, want = chain
    deployment.base_env.update(IFD_ENV)
    w = start(deployment, partitions, batch)
    replay_all(deployment, w, defs, [str(path), *pace])
    assert_same(live_rows(deployment, want), want)

    order = lambda s: (s["start"], s["instrument_id"], s["kind"], s["direction"])  # noqa: E731
    newest = sorted(want["signals"], key=order, reverse=True)
    view = [s for s in w.get("/signals/", limit=1000)["signals"] if s["kind"] != "processing_lag"]
    assert [s["id"] for s in view[:5]] == [s["id"] for s in newest[:5]]
    iid = newest[0]["instrument_id"]
    mine = w.get("/signals/", instrument_id=iid, limit=1000)["signals"]
    mine = [s for s in mine if s["kind"] != "processing_lag"]
    assert mine == [s for s in newest if s["instrument_id"] == iid]
    assert w.get_raw("/signals/?instrument_id=x").status_code == 400
    assert w.get_raw("/signals/?limit=0").status_code == 400
    # Filters: kind, direction, confidence and a range of window starts [from, to).
    ifd = [s for s in newest if s["kind"] == "ifd"]
    since, until = ifd[-1]["start"], ifd[0]["start"]
    side = ifd[len(ifd) // 2]["direction"]
    conf = sorted(s["confidence"] for s in ifd if s["direction"] == side)[-3]
    chosen = [
        s
        for s in ifd
        if s["direction"] == side and s["confidence"] >= conf and since <= s["start"] < until
    ]
    query = {"kind": "ifd", "direction": side, "min_confidence": conf, "limit": 1000}
    got = w.get("/signals/", **query, **{"from": since, "to": until})["signals"]
    assert [s["id"] for s in got] == [s["id"] for s in chosen] and chosen
    for bad in ("direction=UP", "min_confidence=2", "to=soon"):
        r = w.get_raw(f"/signals/?{bad}")
        assert r.status_code == 400 and r.json()["parameter"] == bad.split("=")[0]

    by_group = lambda s: (s["start"], s["group"], s["direction"])  # noqa: E731
    newest = sorted(want[OPTIONS_SIGNALS], key=by_group, reverse=True)
    view = w.get("/options/", limit=1000)["signals"]
    assert [s["id"] for s in view] == [s["id"] for s in newest[:1000]]
    group = newest[0]["group"]
    mine = w.get("/options/", group=group, limit=3)["signals"]
    assert mine == [s for s in newest if s["group"] == group][:3]
    assert w.get_raw("/options/?group=ES").status_code == 400
    assert w.get_raw("/options/?limit=0").status_code == 400


def test_a_kill9_mid_replay_changes_no_window_or_signal(
    deployment: Deployment,
    ifd_file: tuple[Path, dict[str, list[dict]]],
    chain: tuple[Path, dict[str, list[dict]]],
) -> None:
    path, _ = ifd_file
    defs, want = chain
    deployment.base_env.update(IFD_ENV)
    w = start(deployment, "4", "1000", TAPESTREAM_PROCESSING_GUARANTEE="exactly_once")
    deployment.kill9_mid_replay(
        w,
        defs,
        lambda: w.get("/signals/")["count"] > 5 and w.get("/options/")["count"] > 5,
        keep_state=False,
        speed="20000",
        also=[path],
    )
    assert_same(live_rows(deployment, want), want)
