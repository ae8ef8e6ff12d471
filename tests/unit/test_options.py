"""Options aggregated by underlying, expiry, strike and right (tables/options.py): groups from
definition records, a group's window is the exact sum of its contracts' windows, and the
aggregation publishes each window once, complete, whatever the order parts and watermarks come
in from many partitions, across checkpoints and crashes."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import databento_dbn
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.feeds.mbo_files import InputError, is_definition_file, read_definitions
from app.file_driver import run_files
from app.settings import load_settings
from load_tests.gen_mbo import GenConfig, option_definitions, write, write_definitions
from models.definitions import encode, is_definition, parse_definitions
from models.mbo import MalformedMessage
from tables.ifd import IfdConfig
from tables.options import (
    OPTIONS_PRESSURE,
    OPTIONS_SIGNALS,
    OptionInfo,
    OptionsAggregator,
    check_part,
    describe,
    parse_groups,
)
from tables.options_state import OptionsSet
from tests.conftest import ESM4_MBO, SHARED_DATA, require

ENV = {
    "TAPESTREAM_PRESSURE_INTERVAL": "15m",
    "TAPESTREAM_SIGNAL_MIN_SESSIONS": "1",
    "TAPESTREAM_SIGNAL_VOLUME_FLOOR": "1",
}
SUMMED = ("buy_volume", "sell_volume", "volume", "trades", "large_volume", "ofi", "ofi_steps")
REAL_DEFINITIONS = [
    SHARED_DATA / "glbx-mdp3" / "esm4-2024-05-08.definition.dbn.zst",
    SHARED_DATA / "glbx-mdp3" / "futures-2024-07-01.definition.dbn.zst",
    SHARED_DATA / "databento-samples" / "glbx-mdp3.definition.dbn.zst",
]


def test_real_definitions_are_read_and_travel_whole() -> None:
    """Databento's own definition files (DBN v1 and v3) read as version 3 records that survive
    the raw topic's encoding; futures are no options and join no group."""
    for path in REAL_DEFINITIONS:
        assert is_definition_file(require(path))
        for d in read_definitions(path):
            raw = encode(d)
            assert is_definition(raw) and len(raw) == 520
            (back,) = parse_definitions(str(d.instrument_id).encode(), raw)
            assert (back.raw_symbol, back.expiration) == (d.raw_symbol, d.expiration)
            assert OptionInfo.from_definition(back) is None
    assert not is_definition_file(require(ESM4_MBO))


def test_bad_definition_messages_are_refused_with_the_reason() -> None:
    (d,) = read_definitions(REAL_DEFINITIONS[0])
    raw = encode(d)
    with pytest.raises(MalformedMessage, match="key says 7") as exc:
        parse_definitions(b"7", raw)
    assert exc.value.kind == "key_mismatch"
    with pytest.raises(MalformedMessage, match="not whole definition records") as exc:
        parse_definitions(str(d.instrument_id).encode(), raw[:-8])
    assert exc.value.kind == "bad_definition"
    with pytest.raises(MalformedMessage) as exc:
        parse_definitions(b"x", raw)
    assert exc.value.kind == "bad_key"


def test_an_option_definition_places_the_option_in_its_groups(tmp_path: Path) -> None:
    (call, put) = option_definitions([11, 12], ("ES",), ts=1_718_000_000 * 10**9)
    path = write_definitions(tmp_path / "chain.definition.dbn.zst", [call, put])
    back = {d.instrument_id: OptionInfo.from_definition(d) for d in read_definitions(path)}
    assert back[11] == OptionInfo("ES", "2024-07-10", "50", "C")
    assert back[12] == OptionInfo("ES", "2024-07-10", "50", "P")
    groups = parse_groups("underlying+right, underlying+expiration+strike+right")
    assert [back[11].group(g) for g in groups] == ["ES|*|*|C", "ES|2024-07-10|50|C"]
    assert describe("ES|*|*|C") == {
        "underlying": "ES",
        "expiration": None,
        "strike": None,
        "right": "C",
    }
    odd = databento_dbn.InstrumentDefMsg(
        publisher_id=1,
        instrument_id=13,
        ts_event=0,
        ts_recv=0,
        min_price_increment=1,
        display_factor=1,
        raw_symbol="X",
        asset="",
        security_type="OOF",
        instrument_class=databento_dbn.InstrumentClass("P"),
        security_update_action=databento_dbn.SecurityUpdateAction("A"),
        strike_price=1_250_500_000_000,
    )
    with pytest.raises(ValueError, match="neither underlying nor asset"):
        OptionInfo.from_definition(odd)


def test_group_settings_are_checked() -> None:
    assert parse_groups("none") == ()
    assert parse_groups("right+underlying,underlying+right") == (("underlying", "right"),)
    with pytest.raises(ValueError, match="must keep the underlying"):
        parse_groups("expiration+right")
    with pytest.raises(ValueError, match="unknown option group field 'strke'"):
        parse_groups("underlying+strke")


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[int, OptionInfo]]:
    """Three days of six generated instruments, five of them options on two underlyings."""
    tmp = tmp_path_factory.mktemp("chain")
    cfg = GenConfig(records=100_000, instruments=6, events_per_second=0.4, seed=4)
    write(tmp / "flow.mbo.dbn.zst", cfg)
    defs = option_definitions([1000, 1001, 1002, 1003, 1004], ts=cfg.start_ns)
    write_definitions(tmp / "chain.definition.dbn.zst", defs)
    env = {**ENV, "TAPESTREAM_OPTION_GROUPS": "underlying+right,underlying+expiration+right"}
    result = run_files(
        [str(tmp / "chain.definition.dbn.zst"), str(tmp / "flow.mbo.dbn.zst")],
        load_settings(env),
        progress=False,
    )
    infos = {d.instrument_id: OptionInfo.from_definition(d) for d in defs}
    return result, infos  # type: ignore[return-value]


def test_a_group_window_is_the_sum_of_its_contracts_windows(chain: tuple) -> None:
    result, infos = chain
    groups = parse_groups("underlying+right,underlying+expiration+right")
    want: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for row in result.row_topics["pressure"]:
        info = infos.get(row["instrument_id"])
        if info is not None:
            for g in groups:
                want[(info.group(g), row["start"])].append(row)
    got = {(r["group"], r["start"]): r for r in result.row_topics[OPTIONS_PRESSURE]}
    assert got.keys() == want.keys()
    assert max(r["contracts"] for r in got.values()) == 2  # SYN calls: two expiries
    for key, members in want.items():
        g = got[key]
        assert g["contracts"] == len(members)
        for f in SUMMED:
            assert g[f] == sum(m[f] for m in members), (key, f)
        volume = g["volume"]
        if volume:
            pv = sum(m["vwap"] * m["volume"] for m in members if m["volume"])
            assert g["vwap"] == pytest.approx(pv / volume, rel=1e-12)
        assert g["last_price"] in {m["last_price"] for m in members}
        buy, sell = g["buy_volume"], g["sell_volume"]
        assert g["tfi"] == ((buy - sell) / (buy + sell) if buy + sell else 0.0)
    signals = result.row_topics[OPTIONS_SIGNALS]
    assert signals and all(s["kind"] == "options_flow" for s in signals)
    assert len({s["id"] for s in signals}) == len(signals)
    # a group's signal is scored from that group's own history: the window before it is there
    for s in signals:
        assert (
            s["baseline"]["log_volume"]["n"] >= 1
            and s["group"] == s["underlying"] + "|" + (s["expiration"] or "*") + "|*|" + s["right"]
        )


def test_a_real_contract_alone_in_its_group_scores_as_itself(tmp_path: Path) -> None:
    """ESM4's real trades, with a made-up definition calling it an option: its one-contract
    group's windows are its own, field for field."""
    (d,) = option_definitions([5602], ("ES",), ts=1_715_126_400 * 10**9)
    defs = write_definitions(tmp_path / "esm4.definition.dbn", [d])
    env = {"TAPESTREAM_PRESSURE_INTERVAL": "1s", "TAPESTREAM_ALLOWED_LATENESS": "0"}
    result = run_files([str(defs), str(require(ESM4_MBO))], load_settings(env), progress=False)
    own = result.row_topics["pressure"]
    assert own and sum(r["ofi_steps"] for r in own) > 0
    groups = result.row_topics[OPTIONS_PRESSURE]
    assert {r["group"] for r in groups} == {"ES|*|*|C", "ES|2024-06-07|*|C"}
    for r in groups:
        (mine,) = [w for w in own if w["start"] == r["start"]]
        for f in (*SUMMED, "vwap", "last_price", "tfi", "interval", "end"):
            assert r[f] == mine[f], f


def test_backfill_refuses_an_option_it_cannot_place(tmp_path: Path) -> None:
    (d,) = option_definitions([1000], ("",))
    path = write_definitions(tmp_path / "bad.definition.dbn", [d])
    with pytest.raises(InputError, match="instrument 1000: option 1000 has neither"):
        run_files([str(path)], load_settings({}), progress=False)


# -- the aggregation across partitions -----------------------------------------------------------

IV = 60_000_000_000
CONFIG = IfdConfig(interval_ns=IV, lateness_ns=0)


def _stream(seed: int, sources: int) -> list[list[tuple]]:
    """Per source partition, in its own order: parts of windows, then the watermark past them."""
    import random

    rng = random.Random(seed)
    out: list[list[tuple]] = [[] for _ in range(sources)]
    for s in range(sources):
        for w in range(6):
            for iid in rng.sample(range(s * 10, s * 10 + 5), rng.randint(0, 3)):
                group = ["ES|*|*|C", "ES|*|*|P", "NQ|*|*|C"][iid % 3]
                v = rng.randint(1, 50)
                sell = rng.randint(0, v)
                sums = [v, sell, v * 2, 3, 0, v * 100, rng.randint(-5, 5), 2, v + sell, w, 100]
                out[s].append(("part", group, w * IV, iid, 1, sums))
            out[s].append(("wm", (w + 1) * IV + rng.randint(0, IV // 2)))
    return out


def _one_pass(streams: list[list[tuple]]) -> list[tuple[str, dict]]:
    """Every part once, then each source's last watermark."""
    agg = OptionsAggregator(CONFIG, len(streams))
    for items in streams:
        for item in items:
            if item[0] == "part":
                agg.add(*item[1:])
    out = []
    for s, items in enumerate(streams):
        out += agg.advance(s, items[-1][1])
    return out


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    sources=st.integers(1, 4),
    order=st.randoms(use_true_random=False),
    crash_every=st.integers(1, 12),
)
def test_any_interleaving_with_repeats_and_crashes_publishes_each_window_once(
    seed: int, sources: int, order: Any, crash_every: int
) -> None:
    """Sources interleave in any order, each repeats part of its stream after a 'restart', and
    the aggregator checkpoints and crashes every few messages: what it publishes up to the
    lowest watermark is what one clean pass publishes, each window once."""
    streams = _stream(seed, sources)
    want = _one_pass(streams)
    # Each source's messages in order, with a stretch of them repeated (a source restarted
    # from an earlier checkpoint), sources interleaved at random.
    queues = []
    for items in streams:
        cut = order.randint(0, len(items))
        back = order.randint(0, cut)
        queues.append(list(items[:cut]) + list(items[back:]))
    store: dict[bytes, bytes] = {}
    state = OptionsSet(CONFIG, sources)
    state.load(0, store.get)
    got: list[tuple[str, dict]] = []
    applied = 0
    live = [s for s in range(sources) if queues[s]]
    while live:
        s = order.choice(live)
        item = queues[s].pop(0)
        if not queues[s]:
            live.remove(s)
        if item[0] == "part":
            state.add(0, *item[1:])
        else:
            got += state.advance(0, s, item[1])
        applied += 1
        if applied % crash_every == 0:
            for key, value in state.checkpoint().get(0, []):
                if value is None:
                    store.pop(key, None)
                else:
                    store[key] = value
            state = OptionsSet(CONFIG, sources)
            state.load(0, store.get)
    key = lambda tr: (tr[1]["start"], tr[1]["group"], tr[0])  # noqa: E731
    assert sorted(got, key=key) == sorted(want, key=key)
    published = [(r["group"], r["start"]) for t, r in got if t == OPTIONS_PRESSURE]
    assert len(published) == len(set(published))


def test_a_window_waits_for_every_source() -> None:
    agg = OptionsAggregator(CONFIG, sources=2)
    agg.add("ES|*|*|C", 0, 1, 1, [5, 0, 5, 1, 0, 500, 0, 0, 5, 3, 100])
    assert agg.advance(0, IV) == []  # source 1 has said nothing yet
    assert agg.advance(1, IV - 1) == []  # source 1 not past the end
    ((topic, row),) = agg.advance(1, IV)
    assert topic == OPTIONS_PRESSURE and row["volume"] == 5 and row["vwap"] == 100
    # a repeat from a restarted source is dropped and counted
    assert not agg.add("ES|*|*|C", 0, 1, 1, [5, 0, 5, 1, 0, 500, 0, 0, 5, 3, 100])
    assert agg.repeats == 1
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        agg.advance(2, IV)


def test_malformed_parts_are_refused() -> None:
    good = ["ES|*|*|C", 0, 1, 1, [5, 0, 5, 1, 0, 500, 0, 0, 5, 3, 100]]
    assert check_part(good)[0] == "ES|*|*|C"
    for bad in (
        ["ES|C", *good[1:]],
        [*good[:4], [1, 2]],
        [good[0], "0", *good[2:]],
        {"group": "ES|*|*|C"},
    ):
        with pytest.raises(ValueError):
            check_part(bad)


def test_a_part_from_a_worker_before_the_sum_of_squares_still_counts() -> None:
    """Parts in flight across an upgrade carry ten sums: the classified volume stands in for
    the sum of squared sizes (its lower bound), and nothing is refused."""
    old = ["ES|*|*|C", 0, 1, 1, [5, 2, 9, 3, 0, 500, 0, 0, 3, 100]]
    assert check_part(old)[4] == [5, 2, 9, 3, 0, 500, 0, 0, 7, 3, 100]


def test_runtime_thresholds_reach_every_partitions_groups() -> None:
    """`faust -A app config set signal.*` applies to group windows scored from then on."""
    from dataclasses import replace

    state = OptionsSet(CONFIG, 1)
    state.load(0, {}.get)
    stricter = replace(CONFIG.signal, z_volume=9.0)
    state.set_signal_config(stricter)
    state.load(1, {}.get)
    assert state.partitions[0].agg.signals.config == stricter
    assert state.partitions[1].agg.signals.config == stricter


def test_parts_travel_in_batches_and_bad_messages_are_refused() -> None:
    from app.option_parts import MAX_BATCH_BYTES, json_batches, parts_of

    part = ["ES|*|*|C", 0, 1, 1, [5, 0, 5, 1, 0, 500, 0, 0, 5, 3, 100]]
    parts = [[part[0], start, *part[2:]] for start in range(0, 20_000 * 300, 300)]
    batches = json_batches(parts)
    assert len(batches) > 1 and all(len(b) <= MAX_BATCH_BYTES + 4096 for b in batches)
    assert [p for b in batches for p in parts_of(b)] == [check_part(p) for p in parts]
    for bad in (b"[]", b'{"parts": 3}', b'{"parts": [["ES|C", 0, 1, 1, []]]}'):
        with pytest.raises(ValueError):
            parts_of(bad)
