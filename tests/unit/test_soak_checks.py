"""The soak's verdict on open files: RocksDB's SST files may climb while the databases' levels
fill and must then hold; every other open file must not grow at all."""

from __future__ import annotations

import argparse

from load_tests.soak import Sample, _report

ARGS = argparse.Namespace(
    minutes=60.0,
    warmup_minutes=1.0,
    rss_slope_limit=20.0,
    rate=50_000,
    instruments=4,
    guarantee="at_least_once",
)


def _run(table_files: list[int], other_files: list[int]) -> dict[str, bool]:
    samples = [
        Sample(
            t=60.0 + 5 * i,
            rss_mb=300.0,
            open_fds=tables + others,
            threads=8,
            table_files=tables,
            tasks=46.0,
            lag=0.0,
            applied=None,
            p50_ms=15.0,
            p99_ms=60.0,
        )
        for i, (tables, others) in enumerate(zip(table_files, other_files, strict=True))
    ]
    return _report(ARGS, {}, samples)["checks"]


def test_sst_files_that_climb_then_hold_pass() -> None:
    climb = list(range(20, 60)) + [60, 58, 61, 59] * 20  # levels filling, then compaction's tide
    checks = _run(climb, [150] * len(climb))
    assert checks["table_files_settle"] and checks["open_files_flat"]


def test_sst_files_that_keep_growing_fail() -> None:
    growing = list(range(20, 140))
    assert not _run(growing, [150] * len(growing))["table_files_settle"]


def test_other_files_that_grow_fail_whatever_the_sst_files_do() -> None:
    n = 120
    checks = _run([40] * n, [150 + i // 4 for i in range(n)])
    assert checks["table_files_settle"] and not checks["open_files_flat"]
