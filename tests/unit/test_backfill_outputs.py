"""Backfill's outputs: the command streams every topic to its file as rows are made, the same
rows the in-memory result holds; a run that fails on bad input leaves no file behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from app.file_driver import run_files
from app.file_outputs import FileOutputs
from app.settings import load_settings
from load_tests.gen_mbo import GenConfig, write

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mbo_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gen") / "out.mbo.dbn.zst"
    write(path, GenConfig(records=60_000, instruments=4, events_per_second=100, seed=6))
    return path


def _lines(path: Path) -> list[bytes]:
    return sorted(path.read_bytes().splitlines())


def test_files_hold_the_rows_the_result_holds(mbo_file: Path, tmp_path: Path) -> None:
    settings = load_settings({})
    kept = run_files([str(mbo_file)], settings, progress=False)
    outputs = FileOutputs(tmp_path / "out")
    streamed = run_files([str(mbo_file)], settings, progress=False, outputs=outputs)
    paths = {p.name for p in outputs.commit()}
    assert streamed.counts == kept.counts and kept.counts["book.deltas"] > 10_000
    assert kept.counts["bars.1m"] > 0 and kept.counts["deltas"] > 0
    for topic in kept.topics:
        want = sorted(orjson.dumps(r) for r in kept.topic_rows(topic))
        assert _lines(tmp_path / "out" / f"{topic}.jsonl") == want, topic
    for topic, rows in kept.row_topics.items():
        assert _lines(tmp_path / "out" / f"{topic}.jsonl") == sorted(map(orjson.dumps, rows))
    assert paths == {f"{t}.jsonl" for t in (*kept.topics, *kept.row_topics)}
    assert not list((tmp_path / "out").glob("*.part"))


def test_a_bad_input_leaves_no_output(mbo_file: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.mbo.dbn.zst"
    cut.write_bytes(mbo_file.read_bytes()[: mbo_file.stat().st_size // 2])
    out = tmp_path / "out"
    backfill = [sys.executable, "-m", "faust", "-A", "app", "backfill"]
    done = subprocess.run(
        [*backfill, str(mbo_file), str(cut), "--out", str(out), "--no-progress"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert "truncated" in done.stderr and "no output was written" in done.stderr
    assert not out.exists() or not list(out.iterdir())


def test_parquet_holds_the_rows_the_jsonl_holds(
    mbo_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`backfill --format parquet`: every topic and table, the same rows, typed; written in
    parts (small here) whose schemas differ, joined into one file per topic."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from app import parquet_out
    from app.file_outputs import ParquetOutputs

    monkeypatch.setattr(parquet_out, "PART_ROWS", 500)
    monkeypatch.setattr(ParquetOutputs, "BATCH_ROWS", 100)
    settings = load_settings({})
    kept = run_files([str(mbo_file)], settings, progress=False)
    outputs = ParquetOutputs(tmp_path / "out")
    run_files([str(mbo_file)], settings, progress=False, outputs=outputs)
    for table, rows in kept.tables.items():
        outputs.table(table, rows)
    paths = {p.name for p in outputs.commit()}
    assert paths == {
        *(f"{t}.parquet" for t in (*kept.topics, *kept.row_topics)),
        *(f"{t}.table.parquet" for t in kept.tables),
    }
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
    for topic in (*kept.topics, *kept.row_topics):
        want = list(kept.topic_rows(topic)) if topic in kept.topics else kept.row_topics[topic]
        table = pq.read_table(tmp_path / "out" / f"{topic}.parquet")
        assert table.num_rows == len(want), topic
        if "ts_recv" in table.column_names:
            assert table["ts_recv"].type == pa.timestamp("ns", tz="UTC")
        plain = table.select(
            [n for n in table.column_names if not pa.types.is_nested(table[n].type)]
        )
        plain = pa.table(
            {
                n: c.cast(pa.int64()) if pa.types.is_timestamp(c.type) else c
                for n, c in zip(plain.column_names, plain.columns, strict=True)
            }
        )
        for got, row in zip(plain.to_pylist(), want, strict=True):
            assert {k: v for k, v in got.items() if k in row} == {
                k: v for k, v in row.items() if k in got
            }, topic
            assert all(v is None for k, v in got.items() if k not in row), topic
