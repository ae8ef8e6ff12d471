"""Shared fixtures: paths to the real data beside the project, and generated files."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()
ESM4_MBO = SHARED_DATA / "glbx-mdp3" / "esm4-2024-05-08T00-00-00_00-00-02.mbo.dbn.zst"
ARL_MBO_CSV = SHARED_DATA / "xnas-itch" / "arl-2025-07-17.mbo.csv"
ARL_MBP10_CSV = SHARED_DATA / "xnas-itch" / "arl-2025-07-17.mbp-10.expected.csv"
ESU4_TRADES = SHARED_DATA / "glbx-mdp3" / "futures-2024-07-01T23-58_2024-07-02T00-02.trades.dbn.zst"
SAMPLE_MBO = sorted((SHARED_DATA / "databento-samples").glob("*.mbo.dbn.zst"))


def require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"real data missing: {path} (../shared/data must sit beside the project)")
    return path


@pytest.fixture(scope="session")
def small_generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60k-record generated file (with its truth) shared by the tests of one session."""
    from load_tests.gen_mbo import GenConfig, write

    out = tmp_path_factory.mktemp("gen") / "small.mbo.dbn.zst"
    write(out, GenConfig(records=60_000, instruments=12, orders_per_instrument=80, seed=11))
    return out
