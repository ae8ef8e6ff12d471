from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import SettingsError, load_settings


def test_defaults_bind_to_loopback() -> None:
    s = load_settings({})
    assert s.web_host == "127.0.0.1"
    assert s.broker == "kafka://127.0.0.1:9092"
    assert s.processing_guarantee == "at_least_once"
    assert s.bootstrap_servers == "127.0.0.1:9092"


def test_environment_overrides() -> None:
    s = load_settings(
        {
            "KAFKA_BROKER": "redpanda:9092",
            "TAPESTREAM_PARTITIONS": "12",
            "TAPESTREAM_PROCESSING_GUARANTEE": "exactly_once",
            "TAPESTREAM_DATA_DIR": "/data",
            "TAPESTREAM_TOPIC_PREFIX": "t1.",
        }
    )
    assert s.broker == "kafka://redpanda:9092" and s.bootstrap_servers == "redpanda:9092"
    assert s.partitions == 12 and s.processing_guarantee == "exactly_once"
    assert s.data_dir == Path("/data") and s.topic("mbo.raw") == "t1.mbo.raw"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("TAPESTREAM_PARTITIONS", "zero"),
        ("TAPESTREAM_PARTITIONS", "0"),
        ("TAPESTREAM_PROCESSING_GUARANTEE", "maybe_once"),
        ("TAPESTREAM_STORE", "redis://"),
        ("TAPESTREAM_WEB_PORT", "70000"),
        ("TAPESTREAM_SESSION_STARTS", "NOPE=22:00"),
        ("TAPESTREAM_SESSION_STARTS", "GLBX=24:00"),
        ("TAPESTREAM_SESSION_STARTS", "GLBX"),
        ("TAPESTREAM_DELTA_DEPTH", "0"),
        ("TAPESTREAM_HEAP_TRIM_S", "-1"),
    ],
)
def test_invalid_values_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(SettingsError, match=var):
        load_settings({var: value})


def test_session_starts_per_venue() -> None:
    s = load_settings({"TAPESTREAM_SESSION_STARTS": "GLBX=22:00, XNAS=13:30"})
    hour = 3_600_000_000_000
    assert s.ifd_config().venue_starts == (("GLBX", 22 * hour), ("XNAS", 13 * hour + hour // 2))
    assert load_settings({}).ifd_config().venue_starts == ()


def test_a_command_with_a_bad_variable_says_so_in_one_line_and_exits_2() -> None:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TAPESTREAM_PARTITIONS": "zero"}
    done = subprocess.run(
        [sys.executable, "-m", "faust", "-A", "app", "worker"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "tapestream: invalid configuration: TAPESTREAM_PARTITIONS: Input should be a valid "
        "integer, unable to parse string as an integer"
    ]


def test_rocksdb_memtables_fit_in_the_cache_they_are_charged_to() -> None:
    s = load_settings({})
    assert s.rocksdb_memtables_mb < s.rocksdb_cache_mb
    with pytest.raises(SettingsError, match="TAPESTREAM_ROCKSDB_MEMTABLES_MB"):
        load_settings(
            {"TAPESTREAM_ROCKSDB_CACHE_MB": "32", "TAPESTREAM_ROCKSDB_MEMTABLES_MB": "32"}
        )
