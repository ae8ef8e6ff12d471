"""Every pure entry point fed random and mutated input (issue #19, item 2), seeded from the real
data beside the project where there is some: raw-topic messages, input files (DBN, CSV,
LOBSTER, depth and tick captures), vendor stream frames, the live gateway's DBN stream, the
WebSocket requests, the webhook's bodies, HTTP parameters and the control topic.

Each one either takes its input or fails the documented way: its own error type with a message
that names what is wrong (InputError, MalformedMessage with its dead-letter kind, BadMessage,
RequestError, ValueError), or a dead letter with its reason and its counter. Never another
exception, never a hang (every property has a deadline), and the good input around a bad piece
is all still taken: the records of a file before a bad record, the frames of a stream around a
bad frame, the control records around a bad one.

The HTTP and WebSocket surface of a real worker is fuzzed in tests/integration/test_fuzz_web.py.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import re
import struct
from datetime import timedelta
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import databento as db
import databento_dbn
import numpy as np
import orjson
import pytest
import zstandard
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from app import control as control_mod
from app.dead_letters import MAX_PAYLOAD_KEPT, letter
from app.depth.source import DepthConfig, DepthSource
from app.depth.venue import Fault as VenueFault
from app.depth.venue import VenueError
from app.feeds.captures import BadMessage, parse_line
from app.feeds.depth_capture import DepthBooks, parse_stream_message
from app.feeds.mbo_files import (
    DEFAULT_CHUNK_RECORDS,
    InputError,
    MboFile,
    open_mbo,
    read_definitions,
)
from app.feeds.tick_capture import TickBooks, parse_event, parse_frame
from app.live import gateway as gateway_mod
from app.live.gateway import Fault as GatewayFault
from app.live.gateway import Feed, GatewayError, StandInGateway
from app.live.source import LiveConfig, LiveSource
from app.settings import Settings
from app.tick_ingest import Answer, validated
from app.ticks.source import TicksConfig, TicksSource
from app.ticks.vendor import Fault as VendorFault
from app.ticks.vendor import VendorError
from app.websocket import MAX_SUBSCRIPTIONS, Hub, RequestError, Subscription
from models.definitions import dbn_call, encode, is_definition, parse_definitions
from models.intervals import parse_interval
from models.mbo import (
    ACTION_CODES,
    MBO_DTYPE,
    MBO_LENGTH_WORDS,
    MBO_RTYPE,
    MBO_SIZE,
    SIDE_CODES,
    MalformedMessage,
    empty_records,
    instrument_key,
    parse_message,
    validate_fields,
)
from models.units import iso, parse_time, parse_units
from tables.patterns import PatternConfig
from tables.runtime_config import KEYS, RuntimeConfig, parse
from tables.signals import SignalConfig
from tests.conftest import ARL_MBO_CSV, ESM4_MBO, SHARED_DATA, require

# Per example: far above what any of these takes (milliseconds), far below a hang.
QUICK = settings(max_examples=300, deadline=timedelta(seconds=2))
FILES = settings(
    max_examples=40,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

SAMPLES = SHARED_DATA / "databento-samples"
DEPTH_CAPTURE = SHARED_DATA / "binance" / "usdm-btcusdt-2024-08-08.depth-trades.gz"
RAW_KINDS = {"empty", "bad_key", "bad_length", "not_mbo", "bad_field", "key_mismatch"}
DEFINITION_KINDS = {"bad_key", "bad_definition", "key_mismatch"}

# JSON values of every shape, for fields and frames that must be refused without a crash.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def dead_letters_counted(agent: str, kind: str) -> float:
    return (
        REGISTRY.get_sample_value("tapestream_dead_letters_total", {"agent": agent, "kind": kind})
        or 0.0
    )


# --- real data --------------------------------------------------------------------------------


@cache
def esm4_stream() -> tuple[bytes, int, np.ndarray]:
    """The real CME file, decompressed: the whole DBN stream, the end of its metadata, and its
    records (every one MBO)."""
    raw = zstandard.ZstdDecompressor().stream_reader(require(ESM4_MBO).read_bytes()).read()
    meta_end = 8 + struct.unpack_from("<I", raw, 4)[0]
    records = np.frombuffer(raw, dtype=MBO_DTYPE, offset=meta_end)
    assert (records["rtype"] == MBO_RTYPE).all() and (records["length"] == MBO_LENGTH_WORDS).all()
    return raw, meta_end, records


@cache
def real_message() -> tuple[bytes, bytes]:
    """A raw-topic message as the replay makes it: 40 real records of one instrument, keyed."""
    _, _, records = esm4_stream()
    iid = int(records["instrument_id"][0])
    mine = records[records["instrument_id"] == iid][:40]
    assert validate_fields(mine) is None
    return instrument_key(iid), mine.tobytes()


@cache
def other_records() -> dict[str, tuple[bytes, int]]:
    """One real record of each other DBN schema (as it would travel: v3 layout), with its
    instrument."""
    out = {}
    for path in sorted(SAMPLES.glob("*.dbn.zst")):
        schema = path.name.split(".")[1]
        if schema in ("mbo", "definition"):
            continue
        dec = databento_dbn.DBNDecoder(
            upgrade_policy=databento_dbn.VersionUpgradePolicy.UPGRADE_TO_V3
        )
        dec.write(zstandard.ZstdDecompressor().stream_reader(path.read_bytes()).read())
        rec = next(r for r in dec.decode() if not isinstance(r, databento_dbn.Metadata))
        out[schema] = (bytes(rec), rec.instrument_id)
    assert {"mbp-1", "mbp-10", "tbbo", "trades"} <= set(out)
    return out


@cache
def real_definition() -> bytes:
    (d,) = read_definitions(
        require(SHARED_DATA / "glbx-mdp3" / "esm4-2024-05-08.definition.dbn.zst")
    )
    return encode(d)


# --- raw-topic messages: models.mbo.parse_message, models.definitions ----------------------------


def route(key: bytes | None, value: bytes | None) -> tuple[str, Any]:
    """What the instruments agent does with a raw-topic message (agents/instruments.py,
    `run_stages`): ("records", records), ("definitions", records), or ("dead", kind)."""
    try:
        if is_definition(value):
            return "definitions", parse_definitions(key, value)  # type: ignore[arg-type]
        return "records", parse_message(key, value)
    except MalformedMessage as exc:
        assert str(exc), "a dead letter says what is wrong"
        assert exc.kind in (DEFINITION_KINDS if is_definition(value) else RAW_KINDS), exc.kind
        return "dead", exc.kind


def check_taken(key: bytes | None, value: bytes, records: np.ndarray) -> None:
    """What the stages may assume of a message the agent takes."""
    assert len(records) and len(records) * MBO_SIZE == len(value)
    assert (records["rtype"] == MBO_RTYPE).all() and (records["length"] == MBO_LENGTH_WORDS).all()
    assert validate_fields(records) is None
    # the key is the partitioner's: the id exactly as instrument_key writes it
    assert (records["instrument_id"] == records["instrument_id"][0]).all()
    assert key == instrument_key(int(records["instrument_id"][0]))


keys = st.one_of(
    st.none(),
    st.binary(max_size=12),
    st.integers(min_value=-5, max_value=2**40).map(instrument_key),
    st.sampled_from([b"", b"5", b"05", b" 5", b"5 ", b"+5", b"0_5", b"-0", b"9" * 5000]),
)


@QUICK
@given(key=keys, value=st.binary(max_size=700))
def test_random_bytes_on_the_raw_topic_are_dead_lettered_by_kind(
    key: bytes | None, value: bytes
) -> None:
    what, got = route(key, value)
    if what == "records":
        check_taken(key, value, got)


@QUICK
@given(data=st.data())
def test_a_real_message_with_one_byte_changed_is_taken_or_refused_for_that_byte(
    data: st.DataObject,
) -> None:
    """Which field the byte falls in decides: the header and the instrument refuse the whole
    message (its kind), an action or side is refused unless still valid, anything else is a
    value the stages judge (a price, a size)."""
    key, value = real_message()
    pos = data.draw(st.integers(0, len(value) - 1), "pos")
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != value[pos]), "byte")
    changed = value[:pos] + bytes([byte]) + value[pos + 1 :]
    what, got = route(key, changed)
    offset = pos % MBO_SIZE
    if offset in (0, 1):  # length, rtype
        expected = "not_mbo"
        if offset == 1 and byte == 0x13:  # now the first record looks like a definition's
            expected = "bad_definition" if pos == 1 else "not_mbo"
    elif 4 <= offset < 8:  # instrument_id
        expected = "key_mismatch"
    elif offset == 38:
        expected = None if byte in ACTION_CODES else "bad_field"
    elif offset == 39:
        expected = None if byte in SIDE_CODES else "bad_field"
    else:
        expected = None
    if expected is None:
        assert what == "records"
        check_taken(key, changed, got)
        assert got.tobytes() == changed
    else:
        assert (what, got) == ("dead", expected)


def test_a_message_cut_anywhere_is_refused_unless_the_cut_falls_between_records() -> None:
    key, value = real_message()
    value = value[: 4 * MBO_SIZE]
    for cut in range(len(value) + 1):
        what, got = route(key, value[:cut])
        if cut == 0:
            assert got == "empty"
        elif cut % MBO_SIZE:
            assert got == "bad_length"
        else:
            assert what == "records" and got.tobytes() == value[:cut]


@QUICK
@given(
    schema=st.sampled_from(["mbp-1", "mbp-10", "tbbo", "trades", "ohlcv-1s"]), n=st.integers(1, 8)
)
def test_records_of_another_schema_are_not_mbo(schema: str, n: int) -> None:
    records = other_records()
    assume(schema in records)
    raw, iid = records[schema]
    what, got = route(instrument_key(iid), raw * n)
    assert (what, got) == ("dead", "bad_length" if len(raw) * n % MBO_SIZE else "not_mbo")


@QUICK
@given(
    value=st.integers(0, 2**32 - 1),
    decoration=st.sampled_from(["{}", "0{}", " {}", "{} ", "+{}", "{}\n", "00{}", "{}_0"]),
)
def test_a_key_is_taken_only_as_the_partitioner_writes_it(value: int, decoration: str) -> None:
    """b"05" or b" 5" would be instrument 5 to int(), but hash to another partition than b"5":
    the instrument's state would be split over two workers."""
    r = empty_records(2)
    r["instrument_id"] = value
    r["action"], r["side"] = ord("A"), ord("B")
    key = decoration.format(value).encode()
    what, got = route(key, r.tobytes())
    if decoration == "{}":
        assert what == "records"
    else:
        assert (what, got) == ("dead", "bad_key")


@settings(max_examples=10, deadline=timedelta(seconds=5))
@given(n=st.integers(10_000, 20_000), data=st.data())
def test_a_large_message_with_one_bad_record_names_it(n: int, data: st.DataObject) -> None:
    r = empty_records(n)
    r["instrument_id"] = 7
    r["action"], r["side"] = ord("A"), ord("B")
    bad = data.draw(st.integers(0, n - 1), "bad")
    r["side"][bad] = ord("X")
    what, got = route(b"7", r.tobytes())
    assert (what, got) == ("dead", "bad_field")
    with pytest.raises(MalformedMessage, match=rf"^record {bad} has unknown side b'X'$"):
        parse_message(b"7", r.tobytes())


def test_a_definition_cut_anywhere_or_under_another_key_is_a_bad_definition() -> None:
    raw = real_definition()
    iid = int.from_bytes(raw[4:8], "little")
    key = instrument_key(iid)
    assert route(key, raw)[0] == "definitions"
    assert route(key, raw * 3)[0] == "definitions"
    for cut in range(2, len(raw)):
        assert route(key, raw[:cut]) == ("dead", "bad_definition"), cut
    assert route(instrument_key(iid + 1), raw) == ("dead", "key_mismatch")
    assert route(b"x", raw) == ("dead", "bad_key")
    # a definition then MBO records under one key: the agent reads it as definitions
    _, mbo = real_message()
    assert route(key, raw + mbo) == ("dead", "bad_definition")


@QUICK
@given(data=st.data())
def test_a_real_definition_with_bytes_changed_is_taken_or_refused(data: st.DataObject) -> None:
    raw = bytearray(real_definition())
    key = instrument_key(int.from_bytes(raw[4:8], "little"))
    for _ in range(data.draw(st.integers(1, 4), "n")):
        raw[data.draw(st.integers(0, len(raw) - 1), "pos")] = data.draw(st.integers(0, 255))
    what, _ = route(key, bytes(raw))
    assert what in ("definitions", "records", "dead")


@QUICK
@given(
    agent=st.sampled_from(["instruments", "options", "depth"]),
    kind=st.sampled_from(sorted(RAW_KINDS)),
    key=st.none() | st.binary(max_size=40),
    payload=st.binary(max_size=300) | st.integers(0, 200_000).map(lambda n: b"\xa5" * n),
    reason=st.text(max_size=200),
)
def test_a_dead_letter_keeps_the_reason_and_the_start_of_any_payload_and_is_counted(
    agent: str, kind: str, key: bytes | None, payload: bytes, reason: str
) -> None:
    before = dead_letters_counted(agent, kind)
    body = orjson.loads(
        letter(agent, kind, reason, "mbo.raw", 3, key, payload, offset=9, timestamp=1.5)
    )
    assert body["kind"] == kind and body["reason"] == reason and body["agent"] == agent
    assert body["payload_bytes"] == len(payload)
    assert base64.b64decode(body["payload_b64"]) == payload[:MAX_PAYLOAD_KEPT]
    assert body["key"] == (key or b"").decode("utf-8", "replace")
    assert dead_letters_counted(agent, kind) == before + 1


# --- files: app.feeds.mbo_files.open_mbo and its readers ---------------------------------------


def read(
    path: Path, chunk_records: int = DEFAULT_CHUNK_RECORDS
) -> tuple[np.ndarray, InputError | None, MboFile | None]:
    """Every record a file yields, and the InputError it ends with (None if it ends well).
    Anything else raised fails the test."""
    try:
        f = open_mbo(path)
    except InputError as exc:
        return empty_records(), exc, None
    parts: list[np.ndarray] = []
    err = None
    try:
        parts.extend(chunk.copy() for chunk in f.chunks(chunk_records))
    except InputError as exc:
        err = exc
    records = np.concatenate(parts) if parts else empty_records()
    if err is not None:
        # the file it names: this one, or one beside it (a capture's condition table)
        assert err.path.startswith(str(path)) and err.where and err.problem
    if f.format in ("dbn", "dbn.zst", "csv"):
        assert f.records_read == len(records), "records_read counts what was handed over"
    return records, err, f


def line_of(err: InputError) -> int:
    m = re.fullmatch(r"(?:after )?line (\d+)", err.where)
    assert m is not None, err.where
    return int(m.group(1))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


NAMES = [
    "x.dbn",
    "x.dbn.zst",
    "x.mbo.csv",
    "x.depth.gz",
    "x.ticks.jsonl",
    "x.txt",
    "x.parquet",
    "x.bin",
    "AAPL_2012-06-21_34200000_57600000_message_10.csv",
]
PREFIXES = [
    b"",
    b"DBN\x03",
    b"DBN\x01\x10\x00\x00\x00",
    b"\x28\xb5\x2f\xfd",  # zstd
    b"\x1f\x8b\x08\x00",  # gzip
    b"PAR1",
    b"ts_recv,ts_event,rtype,publisher_id,instrument_id,action,side,price,size,channel_id,"
    b"order_id,flags,ts_in_delta,sequence,symbol\n",
    b'1723161255030314667 {"stream":"btcusdt@depth@0ms","data":',
    b'1 [{"ev": "T", "sym": "AAPL"',
    b"34200.0,1,1,100,5858000,1\n",
]


@FILES
@given(name=st.sampled_from(NAMES), prefix=st.sampled_from(PREFIXES), body=st.binary(max_size=1500))
@example(name="x.dbn", prefix=b"", body=b"")
@example(name="x.dbn.zst", prefix=b"", body=b"")
@example(name="x.mbo.csv", prefix=b"", body=b"")
@example(name="x.depth.gz", prefix=b"", body=b"")
@example(name="x.mbo.csv", prefix=b"", body=b"\xff\xfe")
@example(name="x.depth.gz", prefix=b"\x1f\x8b\x08\x00", body=bytes(11))  # found: a zlib.error
def test_a_file_of_random_bytes_is_an_input_error_under_any_name(
    work: Path, name: str, prefix: bytes, body: bytes
) -> None:
    path = work / name
    path.write_bytes(prefix + body)
    records, err, f = read(path)
    if not (prefix + body):
        # an empty file is refused, except a LOBSTER message file: a day with no messages
        assert err is not None or (f is not None and f.format == "lobster" and not len(records))


@FILES
@given(cut=st.integers(0, 772_782), chunk_records=st.sampled_from([1000, DEFAULT_CHUNK_RECORDS]))
@example(cut=0, chunk_records=DEFAULT_CHUNK_RECORDS)
@example(cut=7, chunk_records=DEFAULT_CHUNK_RECORDS)
@example(cut=206 + 56 * 5000 + 3, chunk_records=1000)
def test_a_dbn_file_cut_anywhere_yields_every_whole_record_before_the_cut(
    work: Path, cut: int, chunk_records: int
) -> None:
    raw, meta_end, truth = esm4_stream()
    path = work / "cut.dbn"
    path.write_bytes(raw[:cut])
    records, err, _ = read(path, chunk_records)
    if cut < meta_end:
        assert err is not None and not len(records)
        return
    whole = (cut - meta_end) // MBO_SIZE
    assert records.tobytes() == truth[:whole].tobytes()
    assert (err is None) == ((cut - meta_end) % MBO_SIZE == 0)
    if err is not None:
        assert "truncated" in err.problem


@FILES
@given(cut=st.integers(0, 183_687))
def test_a_compressed_dbn_file_cut_anywhere_yields_only_true_records(work: Path, cut: int) -> None:
    _, _, truth = esm4_stream()
    path = work / "cut.dbn.zst"
    path.write_bytes(require(ESM4_MBO).read_bytes()[:cut])
    records, err, _ = read(path, 1000)
    # no error only where the cut falls between two zstd frames (a shorter file, whole)
    assert err is not None or cut in (0, 88) or len(records) == len(truth)
    assert records.tobytes() == truth[: len(records)].tobytes()


@FILES
@given(data=st.data(), chunk_records=st.sampled_from([500, DEFAULT_CHUNK_RECORDS]))
def test_a_dbn_file_with_a_byte_changed_yields_every_record_before_it(
    work: Path, data: st.DataObject, chunk_records: int
) -> None:
    raw, meta_end, _ = esm4_stream()
    pos = data.draw(st.integers(meta_end, len(raw) - 1), "pos")
    check_changed_dbn(work, pos, data.draw(st.integers(0, 255), "byte"), chunk_records)


def test_a_corrupt_record_header_after_good_records_yields_them_first(work: Path) -> None:
    """Found by the property above: the records before a corrupt header, in the same chunk,
    were counted in records_read but never yielded."""
    _, meta_end, _ = esm4_stream()
    check_changed_dbn(work, meta_end + 1000 * MBO_SIZE, 2, DEFAULT_CHUNK_RECORDS)


def check_changed_dbn(work: Path, pos: int, byte: int, chunk_records: int) -> None:
    raw, meta_end, truth = esm4_stream()
    path = work / "changed.dbn"
    path.write_bytes(raw[:pos] + bytes([byte]) + raw[pos + 1 :])
    records, _, _ = read(path, chunk_records)
    before = (pos - meta_end) // MBO_SIZE
    assert records[:before].tobytes() == truth[:before].tobytes()


@settings(max_examples=4, deadline=timedelta(seconds=20))
@given(data=st.data())
def test_a_large_dbn_file_with_a_corrupt_record_yields_every_record_before_it(
    work: Path, data: st.DataObject
) -> None:
    """Five times the real file's records (3.9 MB, 69k records: more than a chunk), a record
    header broken somewhere in it."""
    raw, meta_end, truth = esm4_stream()
    body = truth.tobytes() * 5
    at = data.draw(st.integers(0, 5 * len(truth) - 1), "record")
    broken = bytearray(body)
    # a length under the 16 bytes of a record header: no record at all
    broken[at * MBO_SIZE] = data.draw(st.integers(0, 3), "length")
    path = work / "large.dbn"
    path.write_bytes(raw[:meta_end] + bytes(broken))
    records, err, _ = read(path)
    assert err is not None and "corrupt record header" in err.problem
    assert err.where == f"byte {meta_end + at * MBO_SIZE}"
    assert records.tobytes() == body[: at * MBO_SIZE]


@FILES
@given(data=st.data())
def test_records_of_other_types_in_a_dbn_stream_are_skipped_and_the_mbo_all_kept(
    work: Path, data: st.DataObject
) -> None:
    raw, meta_end, truth = esm4_stream()
    mbo = truth[:3000]
    others = list(other_records().values())
    spots = sorted(data.draw(st.lists(st.integers(0, len(mbo)), min_size=1, max_size=8), "spots"))
    parts, last = [], 0
    for spot in spots:
        parts.append(mbo[last:spot].tobytes())
        parts.append(data.draw(st.sampled_from(others), "other")[0])
        last = spot
    parts.append(mbo[last:].tobytes())
    path = work / "mixed.dbn"
    path.write_bytes(raw[:meta_end] + b"".join(parts))
    records, err, f = read(path, data.draw(st.sampled_from([100, DEFAULT_CHUNK_RECORDS]), "chunk"))
    assert err is None and records.tobytes() == mbo.tobytes()
    assert f is not None and f.records_skipped == len(spots)


@pytest.mark.parametrize("schema", ["mbp-1", "mbp-10", "tbbo", "trades", "definition"])
def test_a_dbn_file_of_another_schema_names_its_schema(schema: str) -> None:
    path = require(SAMPLES / f"glbx-mdp3.{schema}.dbn.zst")
    records, err, _ = read(path)
    assert (
        err is not None and err.problem == f"schema is {schema}, expected mbo" and not len(records)
    )


@cache
def arl_lines() -> list[bytes]:
    return require(ARL_MBO_CSV).read_bytes().splitlines(keepends=True)[:300]


def mutated(line: bytes, data: st.DataObject) -> bytes:
    """One line with one change: a byte replaced, inserted or removed, or the line cut short."""
    op = data.draw(st.sampled_from(["replace", "insert", "delete", "cut"]), "op")
    pos = data.draw(st.integers(0, max(len(line) - 2, 0)), "at")
    byte = bytes([data.draw(st.sampled_from(list(b',."\n\r-+ 09AZaz\x00\xff\xc3')), "byte")])
    if op == "replace":
        return line[:pos] + byte + line[pos + 1 :]
    if op == "insert":
        return line[:pos] + byte + line[pos:]
    if op == "delete":
        return line[:pos] + line[pos + 1 :]
    return line[:pos] + b"\n"


def check_line_mutation(work: Path, name: str, lines: list[bytes], data: st.DataObject) -> None:
    """A file with line i changed: every record of the lines before it is yielded, and the
    error, if any, names line i or a later one (1-based)."""
    i = data.draw(st.integers(1, len(lines) - 1), "line")
    before = work / "before" / name  # the same name: LOBSTER's names the instrument
    before.parent.mkdir(exist_ok=True)
    before.write_bytes(b"".join(lines[:i]))
    truth, err, _ = read(before, 1)
    assert err is None
    path = work / name
    path.write_bytes(b"".join(lines[:i]) + mutated(lines[i], data) + b"".join(lines[i + 1 :]))
    records, err, _ = read(path, 1)
    assert records[: len(truth)].tobytes() == truth.tobytes()
    if err is not None:
        assert line_of(err) >= i + 1, err


@FILES
@given(data=st.data())
def test_a_real_csv_with_one_line_changed_yields_the_lines_before_it(
    work: Path, data: st.DataObject
) -> None:
    check_line_mutation(work, "arl.mbo.csv", arl_lines(), data)


@pytest.mark.parametrize(
    ("field", "value"),
    [("size", "-1"), ("size", str(2**32)), ("price", "9" * 25), ("order_id", str(2**64)),
     ("ts_recv", "1800-01-01T00:00:00Z"), ("symbol", "\udcff")],
)  # fmt: skip
def test_a_csv_value_no_record_can_hold_is_an_input_error_naming_its_line(
    work: Path, field: str, value: str
) -> None:
    header, *rows = (line.decode() for line in arl_lines()[:5])
    columns = header.strip().split(",")
    row = rows[2].strip().split(",")
    row[columns.index(field)] = value
    path = work / "range.mbo.csv"
    path.write_bytes(
        "".join([header, rows[0], rows[1], ",".join(row) + "\n", rows[3]]).encode(
            errors="surrogateescape"
        )
    )
    records, err, _ = read(path, 1)
    assert err is not None and err.where == "line 4" and len(records) == 2, err


def test_a_csv_field_over_the_csv_modules_limit_is_an_input_error(work: Path) -> None:
    header, row = arl_lines()[:2]
    path = work / "long.mbo.csv"
    path.write_bytes(header + row + row.rstrip(b"\n") + b"x" * 200_000 + b"\n")
    records, err, _ = read(path, 1)
    assert err is not None and err.where == "line 3" and len(records) == 1, err


@cache
def lobster_lines() -> list[bytes]:
    path = SHARED_DATA / "lobster" / "AAPL_2012-06-21_34200000_57600000_message_10.csv"
    return require(path).read_bytes().splitlines(keepends=True)[:200]


@FILES
@given(data=st.data())
def test_a_lobster_file_with_one_line_changed_yields_the_lines_before_it(
    work: Path, data: st.DataObject
) -> None:
    check_line_mutation(
        work, "AAPL_2012-06-21_34200000_57600000_message_10.csv", lobster_lines(), data
    )


@pytest.mark.parametrize(
    "row",
    [
        b"34200.1,1,1,100,99999999999999999,1\n",
        b"34200.1,1,1,-5,5858000,1\n",
        b"34200.1,1,99999999999999999999,1,5858000,1\n",
        b"\xff4200.1,1,1,100,5858000,1\n",
    ],
)
def test_a_lobster_value_no_record_can_hold_is_an_input_error_naming_its_line(
    work: Path, row: bytes
) -> None:
    path = work / "AAPL_2012-06-21_34200000_57600000_message_10.csv"
    path.write_bytes(b"".join(lobster_lines()[:3]) + row + lobster_lines()[3])
    _, err, _ = read(path, 1)
    assert err is not None and err.where == "line 4", err


@cache
def depth_lines() -> list[bytes]:
    with gzip.open(require(DEPTH_CAPTURE), "rb") as fh:
        return [next(fh) for _ in range(120)]


@FILES
@given(data=st.data())
def test_a_depth_capture_with_one_line_changed_yields_the_lines_before_it(
    work: Path, data: st.DataObject
) -> None:
    check_line_mutation(work, "btc.depth.txt", depth_lines(), data)


def tick_frames(n: int = 120) -> list[list[dict]]:
    t = 1_700_000_000_000
    frames: list[list[dict]] = [[{"ev": "status", "status": "connected", "message": "hi"}]]
    for i in range(n):
        frames.append(
            [
                {"ev": "Q", "sym": "AAPL", "bx": 11, "bp": 100 + i % 7 * 0.01, "bs": 3, "ax": 12,
                 "ap": 100.05 + i % 7 * 0.01, "as": 5, "c": 0, "t": t + i, "q": 2 * i + 1, "z": 3},
                {"ev": "T", "sym": "MSFT" if i % 3 else "AAPL", "x": 4, "i": str(i), "z": 3,
                 "p": 100.02 + i % 5 * 0.01, "s": 10 + i, "c": [37] if i % 11 == 0 else [],
                 "t": t + i, "q": 2 * i + 2},
            ]
        )  # fmt: skip
    return frames


@cache
def tick_lines() -> list[bytes]:
    return [
        b"%d %s\n" % (1_700_000_000_000_000_000 + i, orjson.dumps(f))
        for i, f in enumerate(tick_frames())
    ]


@FILES
@given(data=st.data())
def test_a_tick_capture_with_one_line_changed_yields_the_lines_before_it(
    work: Path, data: st.DataObject
) -> None:
    check_line_mutation(work, "x.ticks.jsonl", tick_lines(), data)


@pytest.mark.parametrize(
    "line",
    [
        b'99999999999999999999 [{"ev": "status"}]\n',
        b'1 [{"ev": "T", "sym": "AAPL", "p": 1.0, "s": 1, "t": 9999999999999, "q": 5}]\n',
    ],
)
def test_a_tick_capture_time_no_record_can_hold_is_an_input_error(work: Path, line: bytes) -> None:
    path = work / "time.ticks.jsonl"
    path.write_bytes(b"".join(tick_lines()[:3]) + line)
    _, err, _ = read(path, 1)
    assert err is not None and err.where == "line 4", err


@pytest.mark.parametrize(
    ("event", "field", "ms", "refused"),
    [
        ("trade", "T", 10**20, True),
        ("trade", "T", -1, True),
        ("trade", "T", 2**63 // 1_000_000 - 1, False),
        ("trade", "T", 2**63 // 1_000_000 + 1, True),
        ("depthUpdate", "T", 10**17, True),
        ("lastUpdateId", "T", 10**17, True),
        ("lastUpdateId", "T", 10**20, False),  # read as a float: no time, as the venue may send
        ("lastUpdateId", "T", -5, True),
    ],
)
def test_a_depth_time_no_record_can_hold_is_an_input_error(
    work: Path, event: str, field: str, ms: int, refused: bool
) -> None:
    """Found by `test_any_json_is_a_depth_message_or_a_bad_message`: a trade at T=1e20 ms made
    a record whose ts_event overflowed when the books' rows became records, which stopped the
    live depth source (app/stream_source.py takes a failed flush for a broker failure)."""
    lines = depth_lines()
    at = next(i for i, line in enumerate(lines) if f'"{event}"'.encode() in line)
    stamp, body = parse_line(lines[at])
    (body if event == "lastUpdateId" else body["data"])[field] = ms
    path = work / "time.depth.txt"
    path.write_bytes(b"".join(lines[:at]) + b"%d %s\n" % (stamp, _dumps(body)))
    _, err, _ = read(path, 1)
    if refused:
        assert err is not None and err.where == f"line {at + 1}", err
    else:
        assert err is None


@pytest.mark.parametrize(
    "table",
    [
        b"[]",
        b"5",
        b'{"excluded": 1}',
        b'{"excluded": {"x": "y"}}',
        b'{"excluded": {}, "no_volume": 3}',
        b"\xff",
    ],
)
def test_a_bad_condition_table_beside_a_tick_capture_is_an_input_error(
    work: Path, table: bytes
) -> None:
    path = work / "cond.ticks.jsonl"
    path.write_bytes(b"".join(tick_lines()[:5]))
    (work / "cond.ticks.jsonl.conditions.json").write_bytes(table)
    try:
        _, err, _ = read(path)
    finally:
        (work / "cond.ticks.jsonl.conditions.json").unlink()
    assert err is not None and err.where == "open" and "condition table" in err.problem


# --- vendor streams: depth and tick frames, the sources that take them --------------------------


def depth_messages() -> list[str]:
    """The capture's messages as the live source takes them (its REST snapshot wrapped, as the
    source wraps the snapshots it fetches)."""
    out = []
    for line in depth_lines():
        _, body = parse_line(line)
        if "lastUpdateId" in body:
            body = {"stream": "btcusdt@depthSnapshot", "data": {**body, "s": "BTCUSDT"}}
        out.append(orjson.dumps(body).decode())
    return out


DEPTH_FIELDS = {
    "depthUpdate": ["U", "u", "pu", "T", "b", "a", "s"],
    "trade": ["T", "t", "p", "q", "m", "s"],
    "bookTicker": ["s"],
}


def depth_bad(good: dict, data: st.DataObject) -> str:
    """A frame the depth source must refuse, whatever else it holds."""
    how = data.draw(st.sampled_from(["cut", "not_object", "field", "symbol", "unknown"]), "how")
    text = orjson.dumps(good).decode()
    if how == "cut":
        return text[: data.draw(st.integers(0, len(text) - 1), "cut")]
    if how == "not_object":
        return orjson.dumps(
            data.draw(json_values.filter(lambda v: not isinstance(v, dict)))
        ).decode()
    body = orjson.loads(text)
    d = body["data"]
    if how == "symbol":  # well formed, but not subscribed
        d["s"] = "ETHUSDT"
        body["stream"] = body["stream"].replace("btcusdt", "ethusdt")
    elif how == "unknown":
        d["e"] = data.draw(
            st.text(max_size=8).filter(lambda e: e not in ("depthUpdate", "trade", "bookTicker"))
        )
        body["stream"] = "btcusdt@other"
    else:
        fields = DEPTH_FIELDS.get(d.get("e"), ["lastUpdateId", "bids", "asks"])
        name = data.draw(st.sampled_from(fields), "field")
        d[name] = data.draw(
            st.sampled_from(
                [None, -1, "x", 1.5, [], {}, [["1", "2", "3"], "x"], 2**64 - 1, "1.0001", "a b", ""]
            ).filter(lambda v, name=name: _refused_depth(body, name, v)),
            "value",
        )
    return orjson.dumps(body).decode()


def _refused_depth(body: dict, name: str, value: Any) -> bool:
    try:
        parse_stream_message({**body, "data": {**body["data"], name: value}})
    except BadMessage:
        return True
    return False


def without_ts_recv(records: np.ndarray) -> np.ndarray:
    out = records.copy()
    out["ts_recv"] = 0
    return out


def depth_source() -> tuple[DepthSource, list[tuple[str, bytes]]]:
    source = DepthSource(DepthConfig(symbols=["BTCUSDT"]), Settings(), "mbo.raw")
    sent: list[tuple[str, bytes]] = []
    source.send_now = lambda topic, value, key: sent.append((topic, value))  # type: ignore[method-assign]
    source.spawn = lambda coro: coro.close()  # type: ignore[method-assign]  # no snapshot fetches
    return source, sent


@settings(max_examples=30, deadline=timedelta(seconds=5))
@given(data=st.data())
def test_the_depth_source_dead_letters_bad_frames_and_takes_every_good_one(
    data: st.DataObject,
) -> None:
    messages = depth_messages()
    clean, _ = depth_source()
    for text in messages:
        clean._take(text)
    expected = clean.books.take()
    source, sent = depth_source()
    bad_at = sorted(
        data.draw(st.lists(st.integers(0, len(messages)), min_size=1, max_size=6), "at")
    )
    counted = dead_letters_counted("depth", "malformed")
    frames, bad = list(messages), []
    for at in reversed(bad_at):
        good = orjson.loads(messages[min(at, len(messages) - 1)])
        bad.append(depth_bad(good, data))
        frames.insert(at, bad[-1])
    for text in frames:
        source._take(text)
    records = source.books.take()
    assert without_ts_recv(records).tobytes() == without_ts_recv(expected).tobytes()
    assert source.stats.dead_letters == len(bad) == len(sent)
    assert dead_letters_counted("depth", "malformed") == counted + len(bad)
    assert source.stats.stream_messages == clean.stats.stream_messages
    for topic, value in sent:
        letter_ = orjson.loads(value)
        assert topic == "dead.letters" and letter_["kind"] == "malformed" and letter_["reason"]


@QUICK
@given(body=json_values)
def test_any_json_is_a_depth_message_or_a_bad_message(body: Any) -> None:
    take_depth(body)


@QUICK
@given(data=st.data())
def test_a_real_depth_message_with_a_value_changed_is_taken_or_a_bad_message(
    data: st.DataObject,
) -> None:
    body = orjson.loads(data.draw(st.sampled_from(depth_messages()[:60]), "message"))
    target = body["data"]  # a value at any depth: a field, a level, a level's price
    while isinstance(target, dict | list) and target and data.draw(st.booleans(), "deeper"):
        key = data.draw(
            st.sampled_from(list(target) if isinstance(target, dict) else list(range(len(target))))
        )
        if not isinstance(target[key], dict | list):
            break
        target = target[key]
    if isinstance(target, dict) and target:
        target[data.draw(st.sampled_from(sorted(target)))] = data.draw(json_values, "value")
    elif isinstance(target, list) and target:
        target[data.draw(st.integers(0, len(target) - 1))] = data.draw(json_values, "value")
    take_depth(body)


def take_depth(body: Any) -> None:
    """Parse one message and put it in a book: BadMessage, or records every field of which fits."""
    try:
        symbol, message = parse_stream_message(body)
    except BadMessage as exc:
        assert str(exc)
        return
    books = DepthBooks()
    books.add(symbol or "BTCUSDT", message, 1_723_161_255_030_314_667)
    books.take()


def tick_texts() -> list[str]:
    return [orjson.dumps(f).decode() for f in tick_frames(60)]


TICK_FIELDS = {
    "T": ["sym", "p", "s", "t", "q", "c", "i", "x"],
    "Q": ["sym", "bp", "ap", "bs", "as", "t", "q", "bx", "c"],
}


def tick_bad_event(good: dict, data: st.DataObject) -> dict | Any:
    how = data.draw(st.sampled_from(["not_object", "field", "unknown", "symbol"]), "how")
    if how == "not_object":
        return data.draw(json_values.filter(lambda v: not isinstance(v, dict)))
    event = dict(good)
    if how == "unknown":
        event["ev"] = data.draw(st.sampled_from(["X", "", None, 5, "t", "A"]))
    elif how == "symbol":
        event["sym"] = "IBM"  # well formed, not subscribed
    else:
        name = data.draw(st.sampled_from(TICK_FIELDS[good["ev"]]), "field")
        event[name] = data.draw(
            st.sampled_from(
                [None, -1, "x", 1.5e13, [], {}, True, 2**64 - 1, "aapl", [1.5], 2.0**63]
            ).filter(lambda v, name=name: _refused_tick({**good, name: v}))
        )
    return event


def _refused_tick(event: dict) -> bool:
    try:
        parse_event(event)
    except BadMessage:
        return True
    return False


def ticks_source() -> tuple[TicksSource, list[tuple[str, bytes]]]:
    source = TicksSource(TicksConfig(symbols=["AAPL", "MSFT"]), Settings(), "mbo.raw", "key")
    sent: list[tuple[str, bytes]] = []
    source.send_now = lambda topic, value, key: sent.append((topic, value))  # type: ignore[method-assign]
    return source, sent


@settings(max_examples=40, deadline=timedelta(seconds=5))
@given(data=st.data())
def test_the_ticks_source_dead_letters_bad_frames_and_events_and_takes_every_good_one(
    data: st.DataObject,
) -> None:
    texts = tick_texts()
    clean, _ = ticks_source()
    for text in texts:
        clean._take(text)
    expected = clean.books.take()
    source, sent = ticks_source()
    counted = dead_letters_counted("ticks", "malformed")
    events = [orjson.loads(t) for t in texts]
    bad_events = data.draw(st.integers(0, 4), "bad events")
    for _ in range(bad_events):  # a bad event among good ones: only it is refused
        frame = events[data.draw(st.integers(1, len(events) - 1), "frame")]
        good = next(e for e in frame if isinstance(e, dict) and e.get("ev") in ("T", "Q"))
        frame.insert(data.draw(st.integers(0, len(frame)), "place"), tick_bad_event(good, data))
    frames = [orjson.dumps(e).decode() for e in events]
    bad_frames = data.draw(st.integers(0 if bad_events else 1, 4), "bad frames")
    for _ in range(bad_frames):  # not JSON, or not an array: the frame is one dead letter
        good_text = texts[data.draw(st.integers(0, len(texts) - 1), "like")]
        frame_text = data.draw(
            st.sampled_from(
                [
                    good_text[: len(good_text) // 2],
                    "{}",
                    "5",
                    '"x"',
                    "",
                    "\ufffd\ufffd",
                    '{"ev": "T"}',
                ]
            )
        )
        frames.insert(data.draw(st.integers(0, len(frames)), "at"), frame_text)
    bad = bad_events + bad_frames
    for text in frames:
        source._take(text)
    records = source.books.take()
    assert without_ts_recv(records).tobytes() == without_ts_recv(expected).tobytes()
    assert source.stats.dead_letters == bad == len(sent)
    assert dead_letters_counted("ticks", "malformed") == counted + bad


@QUICK
@given(frame=json_values.map(lambda v: orjson.dumps(v).decode()) | st.text(max_size=40))
def test_any_text_is_a_tick_frame_or_a_bad_message(frame: str) -> None:
    try:
        events = parse_frame(frame)
    except BadMessage:
        return
    books = TickBooks()
    for event in events:
        try:
            tick = parse_event(event)
        except BadMessage as exc:
            assert str(exc)
            continue
        if tick is not None:
            books.add(tick, 1_700_000_000_000_000_000)
    books.take()


@QUICK
@given(data=st.data())
def test_a_real_tick_event_with_a_value_changed_is_taken_or_a_bad_message(
    data: st.DataObject,
) -> None:
    event = dict(data.draw(st.sampled_from([e for f in tick_frames(3)[1:] for e in f])))
    event[data.draw(st.sampled_from(sorted(event)) | st.text(max_size=3))] = data.draw(json_values)
    try:
        tick = parse_event(event)
    except BadMessage:
        return
    books = TickBooks()
    if tick is not None:
        books.add(tick, 1_700_000_000_000_000_000)
    books.take()


# --- the live gateway's stream, and DBN decoded by databento_dbn ------------------------------


@QUICK
@given(data=st.data())
def test_a_dbn_stream_with_bytes_changed_decodes_or_is_a_value_error(data: st.DataObject) -> None:
    """databento_dbn's decoder over a real stream with bytes changed, cut or added, guarded as
    the readers of files and of the raw topic's definitions guard it: records or an Exception
    (which they turn into their own errors), never a hang, never the decoder's panic (a
    BaseException)."""
    raw, meta_end, _ = esm4_stream()
    stream = bytearray(raw[: meta_end + 60 * MBO_SIZE])
    for _ in range(data.draw(st.integers(0, 4), "changes")):
        stream[data.draw(st.integers(0, len(stream) - 1))] = data.draw(st.integers(0, 255))
    stream = stream[: data.draw(st.integers(0, len(stream)), "cut")] + data.draw(
        st.binary(max_size=100)
    )
    decoder = databento_dbn.DBNDecoder()
    try:
        decoder.write(bytes(stream))
        dbn_call(decoder.decode)
    except Exception as exc:
        assert str(exc)


def test_a_record_shorter_than_its_type_is_a_value_error_not_a_panic() -> None:
    """Found by the property above: an MBO record whose rtype says MBP-1 (80 bytes) made
    databento_dbn panic, which pyo3 raises as a BaseException that `except Exception` lets
    through."""
    raw, meta_end, _ = esm4_stream()
    stream = bytearray(raw[: meta_end + 3 * MBO_SIZE])
    stream[meta_end + MBO_SIZE + 1] = 0x01  # the second record: rtype MBP-1, length still 56
    decoder = databento_dbn.DBNDecoder()
    decoder.write(bytes(stream))
    with pytest.raises(ValueError, match="undecodable DBN"):
        dbn_call(decoder.decode)


def test_an_mbo_message_whose_rtype_says_definition_is_a_dead_letter_not_a_crash() -> None:
    """Found by fuzzing the raw topic: the instruments agent takes a message whose first record
    has the definition rtype for definitions, and the decoder panicked on a record shorter than
    a definition; the panic passed `except Exception` and ended the agent, on every restart."""
    key, value = real_message()
    for changed in (value[:1] + b"\x13" + value[2:], real_definition()[:1] + b"\x13" * 3):
        assert route(key, changed) == ("dead", "bad_definition")
    raw = real_definition()
    for length in range(256):
        what, got = route(
            instrument_key(int.from_bytes(raw[4:8], "little")), bytes([length]) + raw[1:]
        )
        assert what == "definitions" if length == 130 else got == "bad_definition", length


@FILES
@given(data=st.data())
def test_a_definition_file_with_bytes_changed_is_read_or_an_input_error(
    work: Path, data: st.DataObject
) -> None:
    path = require(SHARED_DATA / "definitions" / "glbx-mdp3-es-calls.definition.dbn.zst")
    raw = bytearray(zstandard.ZstdDecompressor().stream_reader(path.read_bytes()).read()[:20_000])
    for _ in range(data.draw(st.integers(1, 4), "changes")):
        raw[data.draw(st.integers(0, len(raw) - 1), "at")] = data.draw(st.integers(0, 255))
    changed = work / "changed.definition.dbn"
    changed.write_bytes(bytes(raw[: data.draw(st.integers(0, len(raw)), "cut")]))
    try:
        read_definitions(changed)
    except InputError as exc:
        assert exc.problem


@FILES
@given(data=st.data())
def test_a_dbn_file_with_its_metadata_changed_is_read_or_an_input_error(
    work: Path, data: st.DataObject
) -> None:
    raw, meta_end, truth = esm4_stream()
    meta = bytearray(raw[:meta_end])
    for _ in range(data.draw(st.integers(1, 4), "changes")):
        meta[data.draw(st.integers(0, meta_end - 1), "at")] = data.draw(st.integers(0, 255))
    path = work / "meta.dbn"
    path.write_bytes(bytes(meta) + truth[:500].tobytes())
    read(path)


async def test_a_record_of_another_type_from_the_gateway_is_dead_lettered_and_counted() -> None:
    source = LiveSource(LiveConfig("GLBX.MDP3", ["ESM4"]), Settings(), "key", "mbo.raw")
    sent: list[bytes] = []

    class Producer:
        async def send_and_wait(self, topic: str, value: bytes, **kwargs: Any) -> None:
            sent.append(value)

    source._producer = Producer()  # type: ignore[assignment]
    before = dead_letters_counted("live", "unexpected-record")
    for path in sorted(SAMPLES.glob("glbx-mdp3.*.dbn.zst")):
        if ".mbo." in path.name or ".definition." in path.name:
            continue
        dec = databento_dbn.DBNDecoder()
        dec.write(zstandard.ZstdDecompressor().stream_reader(path.read_bytes()).read())
        for record in dec.decode():
            if not isinstance(record, databento_dbn.Metadata):
                await source._take(record)
    assert source.stats.dead_letters == len(sent) > 4
    assert dead_letters_counted("live", "unexpected-record") == before + len(sent)
    assert all("subscription" in orjson.loads(v)["reason"] for v in sent)


async def test_a_record_the_databento_client_panics_on_ends_the_session_not_the_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by fuzzing the decoder: a record with a known rtype and a length shorter than its
    type's layout made the real `databento.Live` client raise the decoder's panic from its
    iterator, past the live source's `except Exception`, ending the `live` command."""

    def short_record(ts: int) -> bytes:  # MBO-sized, with the rtype of MBP-1 (80 bytes)
        r = empty_records(1)
        r["rtype"], r["instrument_id"], r["ts_event"] = 0x01, 5602, ts
        return r.tobytes()

    monkeypatch.setattr(gateway_mod, "_trade_record", short_record)  # its wrong_schema fault
    gw = StandInGateway(
        Feed.from_files([str(require(ESM4_MBO))]),
        speed=None,
        faults=[GatewayFault("wrong_schema", 0)],
    )
    await gw.start()
    source = LiveSource(LiveConfig("GLBX.MDP3", ["ESM4"]), Settings(), "db-" + "k" * 29, "mbo.raw")
    source.sender = SimpleNamespace(settle_done=lambda: None)  # type: ignore[assignment]
    client = db.Live(key=source._key, gateway="127.0.0.1", port=gw.port, heartbeat_interval_s=1)
    try:
        await asyncio.to_thread(
            client.subscribe, dataset="GLBX.MDP3", schema="mbo", symbols=["ESM4"]
        )
        with pytest.raises(db.BentoError, match="an undecodable record from the gateway"):
            await asyncio.wait_for(source._consume(client, asyncio.Event()), 20)
    finally:
        client.terminate()
        await gw.close()


@QUICK
@given(
    spec=st.text(max_size=20)
    | st.sampled_from(["reset@5000", "stall@1:x", "slow@@", "refuse@0:2", "garbage@-1"])
)
def test_a_stand_in_fault_spec_parses_or_is_its_own_error(spec: str) -> None:
    for parse_fault, error in (
        (GatewayFault.parse, GatewayError),
        (VenueFault.parse, VenueError),
        (VendorFault.parse, VendorError),
    ):
        try:
            parse_fault(spec)
        except error as exc:
            assert spec in str(exc) or repr(spec) in str(exc)


# --- WebSocket requests: app.websocket ---------------------------------------------------------

OPS = st.sampled_from(["subscribe", "unsubscribe", "ping"]) | json_values
CHANNELS = (
    st.sampled_from(
        ["bbo", "bars.1m", "bars.5m", "bars.2m", "signals", "deltas", "trades", "", "bars."]
    )
    | json_values
)
frames = st.fixed_dictionaries(
    {"op": OPS},
    optional={
        "channel": CHANNELS,
        "instrument_id": st.integers(-3, 2**64 - 1) | json_values,
        "sub": st.integers(0, 3) | json_values,
        "kind": json_values,
        "direction": st.sampled_from(["BUY", "SELL", "buy"]) | json_values,
        "min_confidence": st.floats(-1, 2) | json_values,
        "units": st.sampled_from(["raw", "decimal", "RAW"]) | json_values,
        "ref": json_values,
    },
)


def replies(texts: list[str]) -> list[dict]:
    async def run() -> list[dict]:
        hub = Hub(["1m", "5m"])
        out: list[str] = []

        async def send(text: str) -> None:
            out.append(text)

        client = hub.connect(send)
        for text in texts:
            before = len(out)
            await client.request(text)
            assert len(out) == before + 1, "every request gets one answer"
        return [orjson.loads(t) for t in out]

    return asyncio.run(run())


@QUICK
@given(
    requests=st.lists(
        frames.map(lambda f: orjson.dumps(f).decode()) | st.text(max_size=30),
        min_size=1,
        max_size=6,
    )
)
@example(requests=['{"op": "unsubscribe", "sub": []}'])
@example(requests=['{"op": "unsubscribe", "sub": {"a": 1}}', '{"op": "ping"}'])
def test_every_websocket_request_gets_one_answer_or_a_clear_error(requests: list[str]) -> None:
    for answer in replies(requests):
        assert answer["type"] in ("error", "pong", "subscribed", "unsubscribed"), answer
        if answer["type"] == "error":
            assert isinstance(answer["error"], str) and answer["error"]


@QUICK
@given(frame=frames)
def test_a_subscription_frame_parses_or_is_a_request_error(frame: dict) -> None:
    try:
        s = Subscription.parse(1, frame, ["1m"])
    except RequestError as exc:
        assert str(exc)
        return
    assert s.instrument_id is None or (isinstance(s.instrument_id, int) and s.instrument_id >= 0)
    s.wants({"instrument_id": 5, "kind": "ifd", "direction": "BUY", "confidence": 0.5})


def test_the_101st_subscription_and_a_huge_frame_are_refused_and_the_client_goes_on() -> None:
    sub = orjson.dumps({"op": "subscribe", "channel": "bbo"}).decode()
    huge = orjson.dumps({"op": "subscribe", "channel": "x" * 1_000_000}).decode()
    answers = replies([sub] * (MAX_SUBSCRIPTIONS + 1) + [huge, '{"op": "ping"}'])
    assert [a["type"] for a in answers[:MAX_SUBSCRIPTIONS]] == ["subscribed"] * MAX_SUBSCRIPTIONS
    assert (
        answers[MAX_SUBSCRIPTIONS]["error"]
        == f"at most {MAX_SUBSCRIPTIONS} subscriptions per client"
    )
    assert answers[-2]["type"] == "error" and answers[-1]["type"] == "pong"


# --- the webhook's bodies: app.tick_ingest.validated -------------------------------------------

PX = 1_000_000_000
T0 = 1_700_000_000_000_000_000


def ingest_records() -> list[dict]:
    return [
        {"kind": "quote", "symbol": "AAPL", "ts_event": T0, "sequence": 1, "bid_px": 100 * PX,
         "bid_sz": 3, "ask_px": 101 * PX, "ask_sz": 5},
        {"kind": "trade", "symbol": "AAPL", "ts_event": T0 + 1, "sequence": 2, "price": 100 * PX,
         "size": 10, "conditions": [37], "aggressor": "B"},
        {"kind": "trade", "symbol": "MSFT", "ts_event": T0 + 2, "price": 300 * PX, "size": 1},
    ]  # fmt: skip


def check_ingest(body: bytes) -> None:
    answer = validated(body)
    if isinstance(answer, Answer):
        assert answer.status in (400, 422) and isinstance(answer.body["error"], str)
        for e in answer.body.get("errors", []):
            assert set(e) == {"index", "field", "reason"} and e["reason"]
        return
    books = TickBooks()  # what the worker then makes of them: records every field of which fits
    for tick in answer:
        books.add(tick, T0)
    books.take()


@QUICK
@given(body=st.binary(max_size=200) | json_values.map(orjson.dumps))
@example(body=b"\xff\xfe[]")
@example(body=b"[" * 10_000)
def test_any_webhook_body_is_taken_or_refused_with_where_and_why(body: bytes) -> None:
    check_ingest(body)


@QUICK
@given(data=st.data())
def test_a_good_webhook_body_with_a_value_changed_is_taken_or_refused(data: st.DataObject) -> None:
    records = ingest_records()
    for _ in range(data.draw(st.integers(1, 3), "changes")):
        rec = data.draw(st.sampled_from(records))
        rec[data.draw(st.sampled_from(sorted(rec)) | st.text(max_size=4))] = data.draw(
            json_values | st.integers(-(2**70), 2**70), "value"
        )
    check_ingest(_dumps(records))


def _dumps(value: Any) -> bytes:
    """JSON of values orjson refuses (integers past 64 bits), as a client may send them."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value).encode()


def test_a_large_webhook_body_is_checked_whole() -> None:
    records = ingest_records()[2:] * 5000
    records[4321] = {**records[4321], "size": -1}
    answer = validated(orjson.dumps(records))
    assert isinstance(answer, Answer) and answer.status == 422
    assert answer.body["errors"] == [
        {"index": 4321, "field": "size", "reason": answer.body["errors"][0]["reason"]}
    ]


# --- HTTP parameters: models.units, models.intervals ------------------------------------------


@QUICK
@given(
    raw=st.text(max_size=40)
    | st.from_regex(r"-?[0-9]{1,30}", fullmatch=True)
    | st.from_regex(
        r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2})?(\.\d{1,12})?(Z|[+-]\d{2}:?\d{2})?)?",
        fullmatch=True,
    )
)
@example(raw="²")
@example(raw="9" * 5000)
@example(raw="0000-01-01")
@example(raw="2024-02-30T25:61:00Z")
def test_a_time_parameter_is_nanoseconds_or_a_value_error_that_names_it(raw: str) -> None:
    try:
        ns = parse_time(raw)
    except ValueError as exc:
        assert repr(raw.strip())[:50] in str(exc) or "digits" in str(exc), exc
        return
    assert isinstance(ns, int)


@QUICK
@given(ns=st.integers(0, 2**63 - 1))
def test_a_time_served_reads_back_to_the_nanosecond(ns: int) -> None:
    assert parse_time(iso(ns)) == ns  # type: ignore[arg-type]


@QUICK
@given(raw=st.none() | st.text(max_size=10))
def test_units_and_intervals_parse_or_say_what_is_accepted(raw: str | None) -> None:
    try:
        assert parse_units(raw) in ("decimal", "raw")
    except ValueError as exc:
        assert "decimal or raw" in str(exc)
    if raw is not None:
        try:
            assert parse_interval(raw) > 0
        except ValueError as exc:
            assert "interval" in str(exc)


# --- the control topic: tables.runtime_config, app.control -------------------------------------

setting_texts = (
    st.text(max_size=12)
    | st.floats().map(repr)
    | st.integers(-(2**70), 2**70).map(str)
    | st.sampled_from(
        ["1e300", "1e308", "-0", "²", "١٢", "1_000", " 7 ", "5,,7", "9" * 5000, "4294967296"]
    )
)


@settings(max_examples=300, deadline=timedelta(seconds=2))
@given(key=st.sampled_from(sorted(KEYS)) | st.text(max_size=12), text=setting_texts)
@example(key="signal.cooldown", text="1e300")
@example(key="filter.instruments", text="²")
@example(key="filter.instruments", text="9" * 5000)
@example(key="signal.volume_floor", text="9" * 25)  # found: /config/ then failed on every worker
def test_a_setting_parses_to_a_value_that_applies_or_is_refused_naming_the_rule(
    key: str, text: str
) -> None:
    base = RuntimeConfig(SignalConfig(), PatternConfig())
    try:
        value = parse(key, text)
    except ValueError as exc:
        assert repr(key) in str(exc) or str(exc).startswith(key), exc
        return
    try:
        changed = base.with_value(key, value)
    except ValueError:
        # only the whole may refuse a value its key accepts: an RSI line beyond the other one
        assert key in ("pattern.rsi_high", "pattern.rsi_low"), (key, text)
        return
    assert set(changed.values()) == set(KEYS)
    orjson.dumps(changed.values())  # as /config/ serves them


class ControlRecord:
    def __init__(self, offset: int, key: bytes | None, value: bytes | None) -> None:
        self.offset, self.key, self.value = offset, key, value


class ControlConsumer:
    """The control topic's one partition, holding `records`, read by `follow`."""

    def __init__(self, records: list[ControlRecord], stop: asyncio.Event) -> None:
        self.records, self.stop_event, self.pos = records, stop, 0

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def assign(self, tps: list) -> None: ...

    async def seek_to_beginning(self, tp: Any) -> None: ...

    async def end_offsets(self, tps: list) -> dict:
        return {tps[0]: len(self.records)}

    async def position(self, tp: Any) -> int:
        return self.pos

    async def getmany(self, tp: Any, timeout_ms: int) -> dict:
        batch = self.records[self.pos : self.pos + 3]
        self.pos += len(batch)
        if self.pos >= len(self.records):
            self.stop_event.set()
        return {tp: batch}


bad_control = st.one_of(
    st.tuples(st.binary(max_size=20) | st.none(), st.binary(max_size=30) | st.none()),
    st.tuples(st.just(b"\xff\xfe"), st.just(b'{"value": "1"}')),
    st.tuples(st.sampled_from(sorted(KEYS)).map(str.encode), json_values.map(orjson.dumps)),
    st.tuples(
        st.sampled_from(sorted(KEYS)).map(str.encode),
        setting_texts.map(lambda t: orjson.dumps({"value": t})),
    ),
)


@settings(max_examples=60, deadline=timedelta(seconds=5))
@given(bad=st.lists(bad_control, min_size=1, max_size=8), data=st.data())
def test_bad_control_records_are_refused_and_every_good_one_around_them_applies(
    bad: list[tuple[bytes | None, bytes | None]], data: st.DataObject
) -> None:
    at = [data.draw(st.integers(0, len(GOOD_SETTINGS) + i), "at") for i in range(len(bad))]
    follow_control(bad, at)


def test_a_control_key_not_utf8_or_a_value_past_the_clock_does_not_stop_the_follower() -> None:
    """Found by the property above: a record keyed with bytes that are not UTF-8 ended `follow`
    (UnicodeDecodeError), and `signal.cooldown=1e300` passed its check and then overflowed
    (OverflowError) in every worker that applied it."""
    follow_control(
        [(b"\xff", b'{"value": "1"}'), (b"signal.cooldown", b'{"value": "1e300"}')], [0, 3]
    )


GOOD_SETTINGS = [
    ("signal.z_volume", "2.75"),
    ("filter.instruments", "5,7"),
    ("signal.cooldown", "60"),
    ("pattern.rsi_high", "71"),
]


def follow_control(bad: list[tuple[bytes | None, bytes | None]], at: list[int]) -> None:
    """`follow` over the good settings with the bad records inserted at `at`, then the good
    ones again: the follower goes on to the end, and every good record applies."""
    good = [(k.encode(), orjson.dumps({"value": v})) for k, v in GOOD_SETTINGS]
    records: list[tuple[bytes | None, bytes | None]] = list(good)
    for b, i in zip(bad, at, strict=True):
        records.insert(i, b)
    records += good  # after every bad one
    applied: list[tuple[str, str, bool]] = []

    async def run() -> control_mod.Control:
        c = control_mod.Control(RuntimeConfig(SignalConfig(), PatternConfig()), announce=False)
        stop = asyncio.Event()
        consumer = ControlConsumer(
            [ControlRecord(i, k, v) for i, (k, v) in enumerate(records)], stop
        )

        def apply(key: str, text: str) -> bool:
            applied.append((key, text, c.apply(key, text)))
            return applied[-1][2]

        async def topic(settings: Settings) -> str:
            return "control"

        old = control_mod.ensure_control_topic, control_mod.kafka.consumer
        control_mod.ensure_control_topic = topic  # type: ignore[assignment]
        control_mod.kafka.consumer = lambda *a, **k: consumer  # type: ignore[assignment]
        try:
            await asyncio.wait_for(
                control_mod.follow(Settings(), apply, caught_up=c.caught_up, stop=stop), 5
            )
        finally:
            control_mod.ensure_control_topic, control_mod.kafka.consumer = old
        assert c.caught_up.is_set()
        return c

    c = asyncio.run(run())
    for key, text in GOOD_SETTINGS:  # twice at least (a "bad" one may happen to be it)
        results = [ok for k, t, ok in applied if (k, t) == (key, text)]
        assert len(results) >= 2 and all(results), (key, text, results)
    assert {k: c.current.values()[k] for k, _ in GOOD_SETTINGS} == {
        "signal.z_volume": 2.75,
        "filter.instruments": "5,7",
        "signal.cooldown": 60,
        "pattern.rsi_high": 71,
    }


@QUICK
@given(key=st.sampled_from(sorted(KEYS)) | st.text(max_size=8), text=setting_texts)
def test_a_control_value_applies_or_is_refused_and_leaves_the_settings_as_they_were(
    key: str, text: str
) -> None:
    c = control_mod.Control(RuntimeConfig(SignalConfig(), PatternConfig()), announce=False)
    before = c.current
    if not c.apply(key, text):
        assert c.current is before and key not in c.changed_keys
