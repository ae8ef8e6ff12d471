"""Readers against real files, checked with databento's own decoder and CSV writer."""

from __future__ import annotations

import shutil
from pathlib import Path

import databento as db
import numpy as np
import pytest

from app.feeds.mbo_files import InputError, open_mbo, parse_price, parse_ts, read_all
from models.mbo import MBO_DTYPE, UNDEF_PRICE
from tests.conftest import (
    ARL_MBO_CSV,
    ARL_MBP10_CSV,
    ESM4_MBO,
    ESU4_TRADES,
    SAMPLE_MBO,
    require,
)


def _databento_records(path: Path) -> np.ndarray:
    ref = db.DBNStore.from_file(require(path)).to_ndarray()
    out = np.zeros(len(ref), dtype=MBO_DTYPE)
    for name in MBO_DTYPE.names:
        col = ref[name]
        out[name] = np.frombuffer(col.tobytes(), dtype="u1") if col.dtype.kind == "S" else col
    return out


@pytest.mark.parametrize("path", [ESM4_MBO, *SAMPLE_MBO], ids=lambda p: p.name)
def test_dbn_records_equal_databento_decoder(path: Path) -> None:
    ours = read_all(require(path))
    assert len(ours) > 0
    np.testing.assert_array_equal(ours, _databento_records(path))


def test_dbn_metadata_gives_dataset_and_symbols() -> None:
    f = open_mbo(require(ESM4_MBO))
    n = sum(len(c) for c in f.chunks(chunk_records=1000))
    assert n == 13_796 and f.records_read == n
    assert f.dataset == "GLBX.MDP3"
    assert f.symbols == {5602: "ESM4"}
    assert f.bytes_read == f.size


def test_small_chunks_give_the_same_records() -> None:
    whole = read_all(ESM4_MBO)
    parts = list(open_mbo(ESM4_MBO).chunks(chunk_records=977))
    assert max(len(p) for p in parts) <= 977 * 2  # bounded: about one chunk at a time
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_csv_written_by_databento_reads_back_identically(tmp_path: Path) -> None:
    csv_path = tmp_path / "esm4.mbo.csv"
    db.DBNStore.from_file(ESM4_MBO).to_csv(csv_path, pretty_px=True, pretty_ts=True)
    ours = read_all(csv_path)
    np.testing.assert_array_equal(ours, _databento_records(ESM4_MBO))


def test_csv_with_raw_prices_and_integer_timestamps(tmp_path: Path) -> None:
    csv_path = tmp_path / "esm4.raw.csv"
    db.DBNStore.from_file(ESM4_MBO).to_csv(csv_path, pretty_px=False, pretty_ts=False)
    np.testing.assert_array_equal(read_all(csv_path), _databento_records(ESM4_MBO))


def test_real_itch_csv() -> None:
    f = open_mbo(require(ARL_MBO_CSV))
    recs = np.concatenate(list(f.chunks()))
    assert len(recs) == 5_886
    assert f.symbols == {1108: "ARL"}
    first, second = recs[0], recs[1]
    assert chr(first["action"]) == "R" and first["price"] == UNDEF_PRICE and first["flags"] == 8
    assert chr(second["action"]) == "A" and chr(second["side"]) == "B"
    assert second["price"] == 5_510_000_000 and second["size"] == 100
    assert second["order_id"] == 817_593 and second["sequence"] == 851_012
    assert second["ts_recv"] == 1_752_739_503_360_842_448


def test_missing_file() -> None:
    with pytest.raises(InputError, match="no such file"):
        open_mbo("/nonexistent/x.dbn.zst")


def test_unsupported_extension(tmp_path: Path) -> None:
    p = tmp_path / "x.txt"
    p.write_bytes(b"PAR1")
    with pytest.raises(InputError, match="unsupported file type"):
        open_mbo(p)


def test_a_parquet_file_that_is_not_the_lakes_raw_mbo_names_itself(tmp_path: Path) -> None:
    p = tmp_path / "x.parquet"
    p.write_bytes(b"PAR1")
    with pytest.raises(InputError, match=r"x\.parquet: after 0 records: not a lake's raw MBO"):
        list(open_mbo(p).chunks())


def test_wrong_schema_names_it() -> None:
    with pytest.raises(InputError, match="schema is trades, expected mbo"):
        read_all(require(ESU4_TRADES))


def test_truncated_zst_names_position_and_yields_whole_records(tmp_path: Path) -> None:
    data = ESM4_MBO.read_bytes()
    cut = tmp_path / "cut.mbo.dbn.zst"
    cut.write_bytes(data[:100_000])
    got = 0
    with pytest.raises(InputError) as err:
        for chunk in open_mbo(cut).chunks():
            got += len(chunk)
    msg = str(err.value)
    assert str(cut) in msg and "truncated" in msg and "compressed byte 100000" in msg
    assert f"after {got} whole records" in msg and got > 0


def test_truncated_dbn_mid_record(tmp_path: Path) -> None:
    import zstandard

    raw = zstandard.ZstdDecompressor().stream_reader(ESM4_MBO.open("rb")).read()
    cut = tmp_path / "cut.mbo.dbn"
    cut.write_bytes(raw[: len(raw) - 30])
    with pytest.raises(InputError, match=r"record 13795\).*26 trailing bytes"):
        read_all(cut)


def test_not_dbn(tmp_path: Path) -> None:
    p = tmp_path / "fake.dbn"
    p.write_bytes(b"hello world, not dbn")
    with pytest.raises(InputError, match="not a DBN stream"):
        read_all(p)


def test_csv_of_another_schema_is_refused() -> None:
    with pytest.raises(InputError, match=r"line 2: bad MBO row \(rtype 10 is not MBO"):
        read_all(require(ARL_MBP10_CSV))


def test_csv_missing_columns(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_text("ts_event,price\n1,2\n")
    with pytest.raises(InputError, match="line 1: not MBO CSV: missing column"):
        read_all(p)


def test_csv_truncated_row_names_line(tmp_path: Path) -> None:
    p = tmp_path / "cut.csv"
    shutil.copy(ARL_MBO_CSV, p)
    text = p.read_text()
    p.write_text(text[: text.index("\n", 5000) + 40])
    with pytest.raises(InputError, match=r"line \d+: (truncated row|bad MBO row)"):
        read_all(p)


def test_csv_bad_action_names_line(tmp_path: Path) -> None:
    lines = ARL_MBO_CSV.read_text().splitlines()
    lines[3] = lines[3].replace(",A,", ",X,", 1)
    p = tmp_path / "bad.csv"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"line 4: bad MBO row \(unknown action 'X'\)"):
        read_all(p)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("5.510000000", 5_510_000_000),
        ("5.51", 5_510_000_000),
        ("-0.25", -250_000_000),
        ("5510000000", 5_510_000_000),
        ("", UNDEF_PRICE),
    ],
)
def test_parse_price(text: str, value: int) -> None:
    assert parse_price(text) == value


def test_parse_ts() -> None:
    assert parse_ts("2025-07-17T08:05:03.360842448Z") == 1_752_739_503_360_842_448
    assert parse_ts("2025-07-17T08:05:03Z") == 1_752_739_503_000_000_000
    assert parse_ts("1752739503360842448") == 1_752_739_503_360_842_448
    with pytest.raises(ValueError):
        parse_ts("yesterday")
