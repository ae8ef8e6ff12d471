"""Event-time windows (tables/windows.py) against a definition that sees the whole input at
once: any watermark schedule gives the same windows and the same late records."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tables.windows import (
    Aggregate,
    Hopping,
    Session,
    Sliding,
    Tumbling,
    WindowEngine,
    WindowSpec,
)

LATENESS = 5
# The aggregate keeps the values themselves, so a test sees exactly which records a window has.
VALUES: Aggregate[tuple, int] = Aggregate(
    zero=tuple, add=lambda acc, v: (*acc, v), merge=lambda a, b: a + b
)
Record = tuple[str, int, int, int]  # key, ts, recv, value


@st.composite
def inputs(draw: st.DrawFn) -> list[Record]:
    """Records in arrival order; event times up to 12 before arrival (some beyond the
    lateness), values unique."""
    recv = 0
    out = []
    for i in range(draw(st.integers(0, 60))):
        recv += draw(st.integers(0, 6))
        ts = recv - draw(st.sampled_from([0, 0, 0, 1, 2, 4, 5, 6, 7, 12]))
        out.append((draw(st.sampled_from("ab")), ts, recv, i))
    return out


def definition(spec: WindowSpec, records: list[Record]) -> tuple[set, set]:
    """(windows, late) by the rules, from the whole input."""
    windows: dict[tuple, list[int]] = {}
    late: set[tuple] = set()
    if isinstance(spec, Tumbling | Hopping):
        size, hop = (spec.size, spec.size) if isinstance(spec, Tumbling) else (spec.size, spec.hop)
        for key, ts, recv, v in records:
            start = (ts - size) // hop * hop + hop
            while start <= ts:
                if start + size <= recv - LATENESS:
                    late.add((key, v, start))
                else:
                    windows.setdefault((key, start, start + size), []).append(v)
                start += hop
    elif isinstance(spec, Sliding):
        on_time = [r for r in records if r[1] > r[2] - LATENESS]
        late = {(k, v, ts - spec.size) for k, ts, recv, v in records if ts <= recv - LATENESS}
        for key, t, _, _ in on_time:
            windows[(key, t - spec.size, t)] = [
                v for k, ts, _, v in on_time if k == key and t - spec.size <= ts <= t
            ]
    else:
        gap = spec.gap
        sessions: dict[str, list[list]] = {}
        for key, ts, recv, v in records:
            mine = sessions.setdefault(key, [])
            touching = [s for s in mine if s[0] - gap < ts < s[1] + gap]
            if min([ts + gap, *(s[1] + gap for s in touching)]) <= recv - LATENESS:
                late.add((key, v, ts))
                continue
            merged = [ts, ts, [v]]
            for s in touching:
                mine.remove(s)
                merged = [min(merged[0], s[0]), max(merged[1], s[1]), merged[2] + s[2]]
            mine.append(merged)
        for key, mine in sessions.items():
            for first, last, vs in mine:
                windows[(key, first, last)] = vs
    return {(*k, tuple(sorted(v))) for k, v in windows.items()}, late


def run(spec: WindowSpec, records: list[Record], cuts: list[int]) -> tuple[set, set, int]:
    """The engine, told after some records (the cuts) that nothing earlier is still to come."""
    e: WindowEngine[tuple, int] = WindowEngine(spec, VALUES, LATENESS)
    out = []
    for i, (key, ts, recv, v) in enumerate(records):
        e.add(key, ts, recv, v)
        if i in cuts:
            e.advance(recv)
            out += e.close()
    out += e.flush()
    got = [(w.key, w.start, w.end, tuple(sorted(w.value))) for w in out]
    assert len(got) == len(set(got)), "a window emitted twice"
    late = {(x.key, x.value, x.window_start) for x in e.late}
    return set(got), late, e.late_count


SPECS = [Tumbling(10), Hopping(10, 5), Hopping(9, 4), Sliding(6), Session(4)]


@pytest.mark.parametrize("spec", SPECS, ids=repr)
@settings(max_examples=150, deadline=None)
@given(records=inputs(), cuts=st.sets(st.integers(0, 60)))
def test_windows_equal_the_definition_under_any_watermark_schedule(
    spec: WindowSpec, records: list[Record], cuts: set[int]
) -> None:
    want, want_late = definition(spec, records)
    got, late, late_count = run(spec, records, sorted(cuts))
    assert got == want
    assert late == want_late and late_count == len(late)


def test_a_window_closes_only_when_the_watermark_passes_its_end() -> None:
    e: WindowEngine[int, int] = WindowEngine(Tumbling(10), Aggregate(int, lambda a, v: a + v), 2)
    e.add("x", 3, 3, 1)
    e.add("y", 8, 8, 1)  # an idle key closes with the rest
    e.advance(11)
    assert e.close() == []  # watermark 9
    e.advance(12)
    assert [(w.key, w.start, w.end, w.value) for w in e.close()] == [
        ("x", 0, 10, 1),
        ("y", 0, 10, 1),
    ]
    e.add("x", 9, 12, 5)  # its window was emitted: late, kept aside, counted
    assert e.late_count == 1 and e.late[0].window_start == 0


def test_session_merges_two_sessions_a_record_bridges() -> None:
    e: WindowEngine[tuple, int] = WindowEngine(Session(5), VALUES, 10)
    for ts, v in ((0, 1), (8, 2), (4, 3)):
        e.add("k", ts, 8, v)
    (w,) = e.flush()
    assert (w.start, w.end, sorted(w.value)) == (0, 8, [1, 2, 3])


def test_bad_specs_are_refused() -> None:
    for make in (
        lambda: Tumbling(0),
        lambda: Hopping(5, 10),
        lambda: Session(0),
        lambda: WindowEngine(Session(3), Aggregate(int, lambda a, v: a + v), 0),
        lambda: WindowEngine(Tumbling(3), VALUES, -1),
    ):
        with pytest.raises(ValueError):
            make()
