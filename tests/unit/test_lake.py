"""The lake's pieces without a broker: its layouts, its file rules, putting a file in place whole,
where a partition resumes, and reading the raw MBO back in order."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiokafka import TopicPartition

from app.feeds.lake_reader import definitions, lake_chunks, to_records
from app.feeds.mbo_files import InputError, open_mbo, read_definitions
from app.lake_files import Lake, Span, Superseded, is_lock_name, parse_name
from app.lake_rows import NS_PER_HOUR, ColumnarLayout, RawLayout, RowLayout
from app.lake_sink import LakeSink, records_behind, write
from models import definitions as defs
from models.mbo import MBO_DTYPE
from tests.conftest import ESM4_MBO, SHARED_DATA, require

HOUR0 = 1_700_000_000 // 3600 * 3600 * 1_000_000_000  # the start of an hour, in ns


def _records(n: int, ts0: int, iid: int = 7, step: int = 1_000) -> np.ndarray:
    r = np.zeros(n, MBO_DTYPE)
    r["length"], r["rtype"], r["publisher_id"], r["instrument_id"] = 14, 0xA0, 1, iid
    r["ts_recv"] = ts0 + np.arange(n) * step
    r["ts_event"] = r["ts_recv"] - 10
    r["action"], r["side"] = ord("A"), ord("B")
    r["price"], r["size"], r["order_id"] = 100_250_000_000, 5, np.arange(n) + 1
    return r


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def _sink(roll_s: float = 60, file_bytes: int = 1 << 20) -> tuple[LakeSink, Clock]:
    clock = Clock()
    layouts = {"t.mbo.raw": ("mbo.raw", RawLayout()), "t.bars.1m": ("bars.1m", RowLayout())}
    return LakeSink(layouts, roll_s, file_bytes, clock=clock), clock


def test_a_file_holds_whole_messages_of_one_hour_and_rolls_on_size_and_age() -> None:
    sink, clock = _sink(roll_s=30, file_bytes=3 * 56 * 10)
    assert sink.add("t.mbo.raw", 2, 10, b"7", _records(10, HOUR0).tobytes()) == []
    assert sink.add("t.mbo.raw", 2, 11, None, b"") == []  # a marker: the range moves on
    assert sink.add("t.mbo.raw", 2, 12, b"7", _records(10, HOUR0 + 5).tobytes()) == []
    # The next hour closes the file, whatever its size.
    (ready,) = sink.add("t.mbo.raw", 2, 13, b"7", _records(10, HOUR0 + NS_PER_HOUR).tobytes())
    assert ready.span == Span(2, 10, 12) and ready.hour == HOUR0 // NS_PER_HOUR
    assert sink.add("t.mbo.raw", 2, 14, b"7", _records(10, HOUR0 + NS_PER_HOUR).tobytes()) == []
    assert sink.add("t.mbo.raw", 2, 15, b"7", _records(10, HOUR0 + NS_PER_HOUR).tobytes()) == []
    # Full: the next message opens another.
    (ready,) = sink.add("t.mbo.raw", 2, 16, b"7", _records(1, HOUR0 + NS_PER_HOUR).tobytes())
    assert ready.span == Span(2, 13, 15)
    clock.now = 29
    assert sink.due() == []
    clock.now = 31
    (ready,) = sink.due()
    assert ready.span == Span(2, 16, 16) and sink.open == {}


def test_a_message_not_of_its_layout_leaves_no_row_and_is_counted() -> None:
    from app import metrics

    sink, _ = _sink()
    before = metrics.lake_bad_messages.labels("bars.1m")._value.get()
    sink.add("t.bars.1m", 0, 3, b"7", b'{"start": 1}')
    sink.add("t.bars.1m", 0, 4, b"7", b"not json")
    sink.add("t.mbo.raw", 0, 9, b"7", b"\x00" * 57)  # not a whole record
    assert metrics.lake_bad_messages.labels("bars.1m")._value.get() == before + 1
    ready = sink.close()
    assert [(r.topic, r.span) for r in ready] == [("bars.1m", Span(0, 3, 4))]


def test_a_file_is_put_in_place_whole_and_says_where_its_partition_resumes(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    sink, _ = _sink()
    records = _records(100, HOUR0)
    for offset in range(5):
        sink.add("t.mbo.raw", 1, offset, b"7", records[offset * 20 : offset * 20 + 20].tobytes())
    (ready,) = sink.close()
    path, size, rows = write(lake, ready)
    assert rows == 100 and size > 0
    assert path.endswith(f"mbo.raw/date=2023-11-14/hour=22/p0001-{0:020d}-{4:020d}.parquet")
    assert parse_name(Path(path).name) == Span(1, 0, 4)
    assert lake.resume_offsets("mbo.raw") == {1: 5}
    assert not list(tmp_path.rglob("*.tmp"))
    back = to_records(pq.read_table(path))
    assert (back == records).all()
    # A crash mid-write leaves a temporary file, never a visible one; the next start removes it.
    (Path(path).parent / f".p0001-x.parquet.{lake.instance}.tmp").write_bytes(b"half")
    (Path(path).parent / ".p0001-y.parquet.another.tmp").write_bytes(b"another sink's")
    assert lake.resume_offsets("mbo.raw") == {1: 5}
    assert lake.remove_leftovers("mbo.raw") == 1


def test_a_file_over_part_of_one_in_place_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    """Two sinks on one root, as when one stood still past the session timeout and the other
    took its partition over from the same offset: the second file to arrive is refused."""
    records = _records(100, HOUR0)

    def ready(first: int, last: int, partition: int = 1) -> object:
        sink, _ = _sink()
        for offset in range(first, last + 1):
            sink.add("t.mbo.raw", partition, offset, b"7", records[offset : offset + 1].tobytes())
        (r,) = sink.close()
        return r

    taker, woken = Lake(str(tmp_path), "taker"), Lake(str(tmp_path), "woken")
    write(taker, ready(0, 9))
    write(taker, ready(10, 19))
    with pytest.raises(Superseded, match="offsets 5-24 overlap 10-19, put in place first"):
        write(woken, ready(5, 24))
    with pytest.raises(Superseded):
        write(woken, ready(19, 19))
    write(woken, ready(20, 29))  # apart: in place
    write(woken, ready(0, 9, partition=2))  # another partition
    assert taker.resume_offsets("mbo.raw") == {1: 30, 2: 10}
    assert not list(tmp_path.rglob("*.tmp"))
    assert len(list(tmp_path.rglob("*.parquet"))) == 4
    # Beside the files, only each partition's lock: no name a reader of the lake could mistake
    others = [p.name for p in tmp_path.rglob("*") if p.is_file() and parse_name(p.name) is None]
    assert sorted(others) == [".p0001.lock", ".p0002.lock"]
    assert all(is_lock_name(n) for n in others)


def test_definitions_travel_whole_through_the_lake(tmp_path: Path) -> None:
    source = require(SHARED_DATA / "definitions" / "glbx-mdp3-es-calls.definition.dbn.zst")
    records = [defs.encode(d) for d in read_definitions(source)[:5]]
    sink, _ = _sink()
    for offset, raw in enumerate(records):
        sink.add("t.mbo.raw", 0, offset, str(offset).encode(), raw)
    for r in sink.close():
        write(Lake(str(tmp_path)), r)
    assert definitions(tmp_path) == records
    # As replay and backfill take them from a lake: decoded, sent before any MBO.
    assert [defs.encode(d) for d in open_mbo(tmp_path).definitions()] == records
    table = pq.read_table(next(tmp_path.rglob("*.parquet")))
    assert set(table["rtype"].to_pylist()) == {0x13}
    assert table["ts_recv"].type == pa.timestamp("ns", tz="UTC")


def test_columnar_and_row_messages_become_typed_columns() -> None:
    message = {
        "instrument_id": 7,
        "publisher_id": [1, 1],
        "event": [4, 5],
        "ts_event": [HOUR0, HOUR0 + 1],
        "ts_recv": [HOUR0 + 2, HOUR0 + 3],
        "side": "BA",
        "price": [100, 101],
    }
    c = ColumnarLayout()
    t = c.table([c.rows(b"7", orjson.dumps(message), 3, 40)])
    assert t["side"].to_pylist() == ["B", "A"] and t["instrument_id"].to_pylist() == [7, 7]
    assert t["ts_recv"].type == pa.timestamp("ns", tz="UTC")
    assert t["kafka_offset"].to_pylist() == [40, 40]
    r = RowLayout()
    bar = {"instrument_id": 7, "start": HOUR0, "open": 100, "vwap": 100.5, "sma_20": None}
    t = r.table([r.rows(b"7", orjson.dumps(bar), 3, 41)])
    assert t["start"].type == pa.timestamp("ns", tz="UTC") and t["vwap"].to_pylist() == [100.5]


def test_the_lake_reads_back_merged_by_ts_recv_keeping_each_partitions_order(
    tmp_path: Path,
) -> None:
    lake = Lake(str(tmp_path))
    a, b = _records(50, HOUR0, iid=1, step=2), _records(50, HOUR0 + 1, iid=2, step=2)
    b["ts_recv"][10] = b["ts_recv"][9] - 100  # a step back in one partition's clock
    sink, _ = _sink()
    ready = []
    for partition, records in ((0, a), (1, b)):
        for offset in range(5):
            piece = records[offset * 10 : offset * 10 + 10].tobytes()
            ready += sink.add("t.mbo.raw", partition, offset, b"1", piece)
    for r in ready + sink.close():
        write(lake, r)
    assert len(lake.files("mbo.raw")) == 4  # partition 1's step back went to the hour before
    merged = np.concatenate(list(lake_chunks(tmp_path, 7)))
    assert len(merged) == 100
    for iid, records in ((1, a), (2, b)):
        assert (merged[merged["instrument_id"] == iid] == records).all()
    keys = np.maximum.accumulate(merged["ts_recv"])
    assert (np.diff(keys.astype(np.int64)) >= 0).all()


def test_a_lake_opens_wherever_an_mbo_file_does(tmp_path: Path) -> None:
    records = np.concatenate(list(open_mbo(require(ESM4_MBO)).chunks()))[:3000]
    sink, _ = _sink()
    for offset in range(3):
        piece = records[offset * 1000 : offset * 1000 + 1000].tobytes()
        sink.add("t.mbo.raw", 0, offset, b"1", piece)
    for r in sink.close():
        write(Lake(str(tmp_path)), r)
    f = open_mbo(tmp_path)
    assert f.format == "lake"
    assert (np.concatenate(list(f.chunks())) == records).all()
    empty = tmp_path / "empty"
    (empty / "mbo.raw").mkdir(parents=True)
    with pytest.raises(InputError, match="no raw MBO"):
        open_mbo(empty)


def test_lake_topics_are_checked_by_name() -> None:
    from app.commands.lake import lake_topics
    from app.settings import load_settings

    settings = load_settings({})
    assert lake_topics(settings, "mbo.raw,bars") == ["mbo.raw", "bars.1m", "bars.5m", "bars.15m"]
    assert "options.signals" in lake_topics(settings, "all")
    with pytest.raises(ValueError, match="unknown topic 'bar'"):
        lake_topics(settings, "bar")


@pytest.mark.parametrize("command", ["mbp", "ohlcv"])
def test_mbp_and_ohlcv_write_parquet_with_the_csv_columns(tmp_path: Path, command: str) -> None:
    """The same rows as the CSV, typed: written back as CSV they are the CSV."""
    import io

    from app.commands.mbp import CsvRows, write_mbp, write_out
    from app.commands.ohlcv import HEADER, write_ohlcv
    from models.intervals import parse_interval
    from models.mbo import UNDEF_PRICE
    from tables.mbp import columns as mbp_columns
    from tests.conftest import ARL_MBO_CSV

    source = [str(require(ARL_MBO_CSV))]
    if command == "mbp":
        columns = mbp_columns(10)

        def run(out: object) -> object:
            return write_mbp(source, 10, out, progress=False)  # type: ignore[arg-type]
    else:
        columns = HEADER

        def run(out: object) -> object:
            return write_ohlcv(source, parse_interval("1m"), 0, out, progress=False)  # type: ignore[arg-type]

    csv_path, parquet_path = tmp_path / "x.csv", tmp_path / "x.parquet"
    write_out(str(csv_path), columns, run)
    write_out(str(parquet_path), columns, run)
    table = pq.read_table(parquet_path)
    assert table.column_names == columns and table.num_rows > 20
    assert table["ts_event"].type == pa.timestamp("ns", tz="UTC")
    again = io.StringIO()
    rows = CsvRows(again, columns)
    ints = pa.table(
        {
            n: c.cast(pa.int64()) if pa.types.is_timestamp(c.type) else c
            for n, c in zip(table.column_names, table.columns, strict=True)
        }
    )
    for r in ints.to_pylist():
        rows.writerow([UNDEF_PRICE if v is None and "px" in k else v for k, v in r.items()])
    assert again.getvalue() == csv_path.read_text()
    assert not list(tmp_path.glob(".*"))


def test_a_message_whose_rows_cannot_be_typed_is_left_out_and_the_rest_written(
    tmp_path: Path,
) -> None:
    sink, _ = _sink()
    sink.add("t.bars.1m", 0, 1, b"7", b'{"start": 1, "x": 1}')
    sink.add("t.bars.1m", 0, 2, b"7", b'{"start": 2, "x": "text"}')  # x was a number
    sink.add("t.bars.1m", 0, 3, b"7", b'{"start": 3, "x": 3}')
    (ready,) = sink.close()
    _, _, rows = write(Lake(str(tmp_path)), ready)
    assert rows == 2
    assert Lake(str(tmp_path)).resume_offsets("bars.1m") == {0: 4}


async def test_how_far_the_sink_is_behind_counts_per_topic_from_its_position() -> None:
    raw0, raw1, trades = (
        TopicPartition("p.mbo.raw", 0),
        TopicPartition("p.mbo.raw", 1),
        TopicPartition("p.trades", 0),
    )
    # Read committed: the end is the last stable offset. Partition 1 is caught up though its
    # last record was at 38: the commit marker after it took offset 39.
    stable = {raw0: 1_000, raw1: 40, trades: None}  # trades not fetched yet: not counted
    positions = {raw0: 900, raw1: 40, trades: 0}

    async def position(tp: TopicPartition) -> int:
        return positions[tp]

    consumer = SimpleNamespace(
        last_stable_offset=stable.get, highwater=lambda tp: None, position=position
    )
    assert await records_behind(consumer, [raw0, raw1, trades]) == {"p.mbo.raw": 100}
