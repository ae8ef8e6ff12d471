"""Decimal prices and ISO times in what the web views and the WebSocket feed serve, and the
rule that every numeric field an output carries is declared a price, a time or neither."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.file_driver import run_files
from app.settings import load_settings
from load_tests.gen_mbo import GenConfig, option_definitions, write, write_definitions
from models import units
from models.mbo import UNDEF_PRICE
from models.units import iso, parse_time, parse_units, price, show

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ARL = DATA / "xnas-itch" / "arl-2025-07-17.mbo.csv"
# Signals fire in this generated file (as in tests/integration/test_ifd_live.py)
IFD_ENV = {
    "TAPESTREAM_PRESSURE_INTERVAL": "15m",
    "TAPESTREAM_SIGNAL_MIN_SESSIONS": "1",
    "TAPESTREAM_SIGNAL_VOLUME_FLOOR": "1",
    "TAPESTREAM_SIGNAL_Z_NET": "1.0",
}


def _numeric_fields(value: Any, path: str = "") -> set[tuple[str, str]]:
    """(field, where) of every field holding a number, a list of numbers, or a level."""
    out: set[tuple[str, str]] = set()
    if isinstance(value, list):
        for v in value:
            out |= _numeric_fields(v, path)
    elif isinstance(value, dict):
        for k, v in value.items():
            if k in units.PLAIN_WHOLE:
                out.add((k, path))
                continue
            first = v[0] if isinstance(v, list) and v else v
            if isinstance(first, list) and first:
                first = first[0]  # a level
            if isinstance(first, int | float) and not isinstance(first, bool):
                out.add((k, path))
            else:
                out |= _numeric_fields(v, f"{path}.{k}")
    return out


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Any]]:
    """Every topic's rows from real exchange data, and from a generated file whose signals
    fire and whose instruments are options."""
    tmp = tmp_path_factory.mktemp("units")
    gen = tmp / "ifd.mbo.dbn.zst"
    write(gen, GenConfig(records=100_000, instruments=6, events_per_second=0.4, seed=4))
    defs = write_definitions(
        tmp / "chain.definition.dbn.zst", option_definitions([1000, 1001, 1002], ts=0)
    )
    rows: dict[str, list[Any]] = {}
    for files, env in (([str(ARL)], {}), ([str(defs), str(gen)], IFD_ENV)):
        result = run_files(files, load_settings(env), progress=False)
        for topic in result.topics:  # columnar: served as rows (models/book_events.py)
            rows.setdefault(topic, []).extend(result.topic_rows(topic))
        for topic, topic_rows in (*result.row_topics.items(), *result.tables.items()):
            rows.setdefault(topic, []).extend(topic_rows)
    return rows


def test_every_served_number_is_declared_a_price_a_time_or_neither(
    outputs: dict[str, list[Any]],
) -> None:
    assert {"bars.1m", "indicators", "pressure", "signals", "deltas", "bbo", "trades"} <= set(
        outputs
    )
    assert any(s["kind"] == "ifd" for s in outputs["signals"])
    declared = units.PRICES | units.TIMES | units.LEVEL | units.LEVELS | {units.TOP} | units.PLAIN
    unknown = {
        (field, f"{topic}{where}")
        for topic, rows in outputs.items()
        for field, where in _numeric_fields(rows)
        if field not in declared
    }
    assert not unknown, (
        f"say whether these are prices, times or neither (models/units.py): {unknown}"
    )
    kinds = [units.PRICES, units.TIMES, units.LEVEL, units.LEVELS, {units.TOP}, units.PLAIN]
    for i, a in enumerate(kinds):
        for b in kinds[i + 1 :]:
            assert not a & b


def test_real_rows_show_decimal_prices_and_iso_times(outputs: dict[str, list[Any]]) -> None:
    bar = outputs["bars.1m"][0]
    shown = show(bar)
    assert shown["close"] == pytest.approx(bar["close"] / 1e9)
    assert shown["start"].startswith("2025-07-17T") and shown["start"].endswith("Z")
    assert shown["volume"] == bar["volume"] and shown["instrument_id"] == bar["instrument_id"]
    delta = next(d for d in outputs["deltas"] if d.get("books"))
    book = show(delta)["books"][0]
    raw = delta["books"][0]
    for side in ("bids", "asks"):
        for got, was in zip(book[side], raw[side], strict=True):
            assert got[0] == was[0] and got[2:] == was[2:]  # level, size, count
            assert got[1] == pytest.approx(was[1] / 1e9)
    assert bar == outputs["bars.1m"][0]  # a copy: the row itself is unchanged
    with_bars = next(d for d in outputs["deltas"] if d.get("bars"))
    assert show(with_bars)["bars"] == [show(b) for b in with_bars["bars"]]
    assert show({"bars": [bar], "count": 1})["bars"][0]["start"] == shown["start"]


def test_empty_sides_are_null() -> None:
    assert price(UNDEF_PRICE) is None
    assert show({"bid": None, "ask": [50_080_000_000, 3, 1]}) == {"bid": None, "ask": [50.08, 3, 1]}
    top = [UNDEF_PRICE, 0, 0, 50_080_000_000, 3, 1]
    assert show({"top": top})["top"] == [None, 0, 0, 50.08, 3, 1]
    assert show({"bid_px": [UNDEF_PRICE, 1_500_000_000]})["bid_px"] == [None, 1.5]


def test_iso_times_keep_the_nanoseconds() -> None:
    assert iso(1_700_000_189_123_456_789) == "2023-11-14T22:16:29.123456789Z"
    assert iso(0) == "1970-01-01T00:00:00.000000000Z"
    assert iso(None) is None


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_integer_prices_read_back_to_the_same_fixed_point(px: int) -> None:
    # A decimal price parsed as a float and scaled back gives the integer it came from.
    assert round(price(px) * 1e9) == px  # type: ignore[operator]


@given(st.integers(min_value=0, max_value=2**62))
def test_iso_times_sort_as_the_nanoseconds_do(ns: int) -> None:
    assert iso(ns) < iso(ns + 1)  # type: ignore[operator]


@given(st.integers(min_value=0, max_value=2**62))
def test_iso_times_read_back_to_the_nanosecond(ns: int) -> None:
    assert parse_time(iso(ns)) == ns  # type: ignore[arg-type]


def test_times_a_request_gives() -> None:
    assert parse_time("1700000189123456789") == 1_700_000_189_123_456_789
    assert parse_time("2023-11-14") == 1_699_920_000_000_000_000
    assert parse_time("2023-11-14T23:16:29.5+01:00") == 1_700_000_189_500_000_000
    for bad in ("yesterday", "2023-13-01", "2023-11-14T25:00"):
        with pytest.raises(ValueError, match="time"):
            parse_time(bad)


def test_units_parameter() -> None:
    assert parse_units(None) == "decimal" and parse_units("raw") == "raw"
    with pytest.raises(ValueError, match="decimal or raw"):
        parse_units("cents")
