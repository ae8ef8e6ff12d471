from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from models.mbo import empty_records
from tables.instrument_stats import InstrumentStats


def _recs(actions: str, publisher: int = 1) -> np.ndarray:
    r = empty_records(len(actions))
    r["instrument_id"] = 42
    r["publisher_id"] = publisher
    r["action"] = [ord(a) for a in actions]
    r["ts_recv"] = np.arange(len(actions)) + 100
    r["sequence"] = np.arange(len(actions)) + 1
    return r


def test_counts_actions_and_publishers() -> None:
    s = InstrumentStats(42)
    assert s.apply(_recs("AACTFC"), position=0)
    assert s.apply(_recs("MR", publisher=2), position=1)
    d = s.public()
    assert d["records"] == 8 and d["messages"] == 2
    assert d["actions"] == {"A": 2, "C": 2, "M": 1, "R": 1, "T": 1, "F": 1}
    assert d["publishers"] == [1, 2]
    assert d["last_sequence"] == 2 and d["first_ts_recv"] == 100
    assert "position" not in d


def test_redelivered_position_is_not_counted_twice() -> None:
    s = InstrumentStats(42)
    assert s.apply(_recs("AAA"), position=10)
    before = s.to_dict()
    assert not s.apply(_recs("AAA"), position=10)
    assert not s.apply(_recs("AAA"), position=3)
    assert s.to_dict() == before


def test_round_trips_through_its_dict() -> None:
    s = InstrumentStats(42)
    s.apply(_recs("ACM"), position=5)
    assert InstrumentStats.from_dict(s.to_dict()) == s


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="ACMRTFN", min_size=1, max_size=60), st.lists(st.integers(1, 59)))
def test_counts_do_not_depend_on_how_records_are_batched(actions: str, cuts: list[int]) -> None:
    recs = _recs(actions)
    whole = InstrumentStats(42)
    whole.apply(recs, 0)
    split = InstrumentStats(42)
    bounds = sorted({c for c in cuts if c < len(recs)} | {0, len(recs)})
    for pos, (a, b) in enumerate(itertools.pairwise(bounds)):
        split.apply(recs[a:b], pos)
    assert split.public() | {"messages": 0} == whole.public() | {"messages": 0}
