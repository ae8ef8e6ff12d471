"""Options aggregated by group through the broker and real workers equal backfill's, record for
record: option definitions replayed ahead of three days of generated trading, the contracts of
each group spread over the partitions, at full speed with 4 partitions, at a pace with 2 and
smaller messages, and across a kill -9 of the worker under exactly-once; plus the /options/
view."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from app.commands.backfill import backfill_files
from app.settings import load_settings
from load_tests.gen_mbo import GenConfig, option_definitions, write, write_definitions
from tables.options import OPTIONS_PRESSURE, OPTIONS_SIGNALS
from tests.integration.conftest import Deployment
from tests.integration.test_bars_live import assert_same, live_rows, start
from tests.integration.test_ifd_live import IFD_ENV

TOPICS = (OPTIONS_PRESSURE, OPTIONS_SIGNALS)
ENV = {**IFD_ENV, "TAPESTREAM_OPTION_GROUPS": "underlying+right,underlying+expiration+right"}


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, list[dict]]]:
    tmp = tmp_path_factory.mktemp("chain")
    cfg = GenConfig(records=100_000, instruments=6, events_per_second=0.4, seed=4)
    mbo = tmp / "flow.mbo.dbn.zst"
    write(mbo, cfg)
    # five options on two underlyings (1006 is no option); SYN's calls span two expiries
    defs = write_definitions(
        tmp / "chain.definition.dbn.zst",
        option_definitions([1000, 1001, 1002, 1003, 1004], ts=cfg.start_ns),
    )
    result = backfill_files([str(defs), str(mbo)], load_settings(ENV), progress=False)
    want = {t: result.row_topics[t] for t in TOPICS}
    assert len(want[OPTIONS_PRESSURE]) > 1000 and len(want[OPTIONS_SIGNALS]) > 20
    return defs, mbo, want


@pytest.mark.parametrize(
    ("partitions", "batch", "pace"),
    [("4", "1000", ["--max"]), ("2", "300", ["--speed", "20000"])],
)
def test_live_option_groups_equal_backfill(
    deployment: Deployment,
    chain: tuple[Path, Path, dict[str, list[dict]]],
    partitions: str,
    batch: str,
    pace: list[str],
) -> None:
    defs, mbo, want = chain
    deployment.base_env.update(ENV)
    w = start(deployment, partitions, batch)
    deployment.wait_assigned(w, partitions=int(partitions))
    replay = deployment.replay(defs, str(mbo), *pace)
    out, err = replay.communicate(timeout=240)
    assert replay.returncode == 0, err
    assert orjson.loads(out)["definitions"] == 5
    assert_same(live_rows(deployment, want), want)

    newest = sorted(
        want[OPTIONS_SIGNALS], key=lambda s: (s["start"], s["group"], s["direction"]), reverse=True
    )
    view = w.get("/options/", limit=1000)["signals"]
    assert [s["id"] for s in view] == [s["id"] for s in newest[: len(view)]]
    assert len(view) == min(len(newest), 1000)
    group = newest[0]["group"]
    mine = w.get("/options/", group=group, limit=3)["signals"]
    assert mine == [s for s in newest if s["group"] == group][:3]
    assert w.get_raw("/options/?group=ES").status_code == 400
    assert w.get_raw("/options/?limit=0").status_code == 400


def test_a_kill9_mid_replay_changes_no_option_group(
    deployment: Deployment, chain: tuple[Path, Path, dict[str, list[dict]]]
) -> None:
    defs, mbo, want = chain
    deployment.base_env.update(ENV)
    w = start(deployment, "4", "1000", TAPESTREAM_PROCESSING_GUARANTEE="exactly_once")
    deployment.kill9_mid_replay(
        w,
        defs,
        lambda: w.get("/options/")["count"] > 5,
        keep_state=False,
        speed="20000",
        also=[mbo],
    )
    assert_same(live_rows(deployment, want), want)
