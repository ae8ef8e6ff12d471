"""Signal evaluation (tables/evaluation.py, `faust -A app evaluate`) and flow detection power
on generated sessions with planted flows (load_tests/flow_power.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from app.commands.evaluate import EvaluateError, evaluate_files, parse_tick, read_signals
from app.file_driver import run_files
from app.settings import Settings
from load_tests.flow_power import FlowGen, generate, score
from models.trades import empty_trades
from tables.evaluation import Prices, forward_moves, infer_tick, match_truth, summarize

ROOT = Path(__file__).resolve().parents[2]
MIN = 60_000_000_000
TICK = 250_000_000  # 0.25


def _prices(rows: list[tuple[int, int, int]]) -> Prices:
    t = empty_trades(len(rows))
    t["instrument_id"], t["ts_event"], t["price"] = zip(*rows, strict=True)
    p = Prices()
    p.add(t)
    p.freeze()
    return p


def test_the_tick_is_the_step_every_price_is_a_multiple_of() -> None:
    px = 5000 * TICK + np.array([0, 3, 7, 7, 12]) * TICK
    assert infer_tick(px) == TICK
    assert infer_tick(np.array([5, 5])) is None


def test_moves_are_read_in_the_signals_direction_from_its_end() -> None:
    base = 100 * TICK
    p = _prices([(1, 0, base), (1, 10 * MIN, base + 4 * TICK), (1, 14 * MIN, base - 3 * TICK)])
    # Scored from `end`: the last trade at or before it, then at end + each horizon.
    buy = {"kind": "ifd", "direction": "BUY", "instrument_id": 1, "end": 5 * MIN}
    sell = {**buy, "direction": "SELL"}
    late = {**buy, "end": 13 * MIN}  # 13 + 5 runs past the last trade: not known
    odd = [{**buy, "direction": "FLAT"}, {**buy, "instrument_id": None}, {"kind": "x"}]
    out = forward_moves([buy, sell, late, *odd], p, [5 * MIN, 9 * MIN])
    assert [o.moves for o in out] == [
        {5 * MIN: 4.0, 9 * MIN: -3.0},
        {5 * MIN: -4.0, 9 * MIN: 3.0},
        {5 * MIN: None, 9 * MIN: None},
    ]
    summary = summarize(out, {"5m": 5 * MIN, "9m": 9 * MIN})
    assert summary["unpriced"] == {"5m": 1, "9m": 1}
    five = summary["by_kind"]["ifd"]["5m"]
    assert five == {
        "n": 2,
        "hit_rate": 0.5,
        "loss_rate": 0.5,
        "mean_ticks": 0.0,
        "median_ticks": 0.0,
    }
    assert forward_moves([buy], p, [5 * MIN], tick=2 * TICK)[0].moves[5 * MIN] == 2.0


def test_signals_match_the_flows_they_fall_in() -> None:
    flows = [
        {"instrument_id": 1, "start": 0, "direction": "BUY"},
        {"instrument_id": 1, "start": 60, "direction": "SELL", "windows": 2},
        {"instrument_id": 2, "start": 0, "end": 30, "direction": "BUY"},
    ]
    signals = [(1, 0, 10, "BUY"), (1, 70, 10, "BUY"), (1, 10, 10, "BUY"), (2, 20, 10, "BUY")]
    assert match_truth(signals, flows) == {
        "flows": 3,
        "found": 2,
        "recall": 2 / 3,
        "wrong_direction": 1,
        "false_signals": 1,
    }


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], list[dict]]:
    """Twelve sessions, flows in the last four, through the file driver at default settings."""
    path = tmp_path_factory.mktemp("flows") / "flows.mbo.dbn.zst"
    cfg = FlowGen(seed=21, sessions=12, plant_sessions=4, flows=16)
    generate(path, cfg)
    result = run_files([str(path)], Settings(), progress=False)
    return path, result.row_topics["pressure"], result.row_topics["signals"]


def test_default_settings_find_planted_flows_and_little_else(planted) -> None:
    path, pressure, signals = planted
    flows = orjson.loads(Path(str(path) + ".truth.json").read_bytes())["flows"]
    ifd = [(s["instrument_id"], s["start"], s["direction"]) for s in signals if s["kind"] == "ifd"]
    got = score(ifd, pressure, flows, min_sessions=5)
    assert got["recall"] >= 0.9 and got["wrong_direction"] == 0
    assert got["false_signals"] <= 2, got
    # Each signal carries the statistic it fired on, and z_flow for explanation.
    s = next(s for s in signals if s["kind"] == "ifd")
    assert abs(s["z_net"]) >= 3.5 and s["z_vol"] >= 2 and "z_flow" in s
    assert s["baseline"]["net_score"]["n"] >= 5


def test_evaluate_scores_a_backfills_signals_against_the_truth(planted, tmp_path: Path) -> None:
    path, _, signals = planted
    signals_file = tmp_path / "signals.jsonl"
    signals_file.write_bytes(b"".join(orjson.dumps(s) + b"\n" for s in signals))
    horizons = {"1m": MIN, "5m": 5 * MIN}
    report, outcomes = evaluate_files(
        (str(signals_file),), (str(path),), horizons, truth_path=str(path) + ".truth.json"
    )
    assert report["read"] == len(signals) == len(outcomes) + report["left_out"]
    assert report["truth"]["recall"] >= 0.9 and report["truth"]["wrong_direction"] == 0
    assert set(report["ticks"].values()) == {10_000_000}  # the generator's 0.01 grid
    assert {"ifd", "volume_spike"} <= set(report["by_kind"])
    assert set(report["by_strength"]) <= {"ifd/weak", "ifd/moderate", "ifd/strong"}


def test_evaluate_refuses_bad_input_with_where_it_is(tmp_path: Path) -> None:
    bad = tmp_path / "signals.jsonl"
    bad.write_bytes(b'{"kind": "ifd"}\n\n[1, 2]\n')
    with pytest.raises(EvaluateError, match=r"signals.jsonl:3: a signal is a JSON object"):
        list(read_signals((str(bad),)))
    bad.write_bytes(b'{"kind": "ifd"}\n{nope\n')
    with pytest.raises(EvaluateError, match=r"signals.jsonl:2: not JSON"):
        list(read_signals((str(bad),)))
    assert parse_tick("0.25") == TICK
    for text in ("0", "-1", "abc", "0.0000000001"):
        with pytest.raises(EvaluateError, match="--tick"):
            parse_tick(text)


def test_the_evaluate_command_writes_its_report_and_plots(planted, tmp_path: Path) -> None:
    path, _, signals = planted
    signals_file = tmp_path / "signals.jsonl"
    signals_file.write_bytes(b"".join(orjson.dumps(s) + b"\n" for s in signals))

    def evaluate(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "faust", "-A", "app", "evaluate", str(signals_file), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    run = evaluate("--prices", str(path), "--plots", str(tmp_path / "plots"), "--no-progress")
    assert run.returncode == 0, run.stderr
    report = orjson.loads(run.stdout)
    assert report["by_kind"]["ifd"]["15m"]["n"] > 0
    for name in ("hit_rate.png", "moves.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    usage = evaluate("--prices", str(path), "--tick", "x")
    assert usage.returncode == 2 and "--tick" in usage.stderr and "Traceback" not in usage.stderr
