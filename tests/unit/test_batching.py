"""The batcher keeps every instrument's records in order, one instrument per message,
messages ending at F_LAST unless an event is larger than a message may be."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from app.feeds.batching import Batch, Batcher
from models.mbo import F_LAST, MBO_SIZE, empty_records


def _stream(spec: list[tuple[int, bool]]) -> np.ndarray:
    recs = empty_records(len(spec))
    recs["instrument_id"] = [i for i, _ in spec]
    recs["flags"] = [F_LAST if last else 0 for _, last in spec]
    recs["sequence"] = np.arange(len(spec))  # global position, to check order
    return recs


streams = st.lists(st.tuples(st.integers(1, 4), st.booleans()), min_size=0, max_size=400)


def _run(recs: np.ndarray, chunk: int, batch: int, max_records: int, paced: bool) -> list[Batch]:
    b = Batcher(batch_records=batch, max_message_bytes=max_records * MBO_SIZE)
    out: list[Batch] = []
    for i in range(0, len(recs), chunk):
        out.extend(b.add(recs[i : i + chunk]))
        if paced:
            out.extend(b.flush_complete())
    out.extend(b.flush_all())
    assert b.pending_records == 0
    return out


@settings(max_examples=300, deadline=None)
@given(
    streams,
    st.integers(1, 50),
    st.integers(1, 20),
    st.integers(1, 30),
    st.booleans(),
)
def test_messages_preserve_each_instruments_stream(
    spec: list[tuple[int, bool]], chunk: int, batch: int, max_records: int, paced: bool
) -> None:
    recs = _stream(spec)
    out = _run(recs, chunk, batch, max_records, paced)
    assert sum(len(m.records) for m in out) == len(recs)
    for m in out:
        assert len(m.records) >= 1
        assert len(m.records) <= max_records
        assert (m.records["instrument_id"] == m.instrument_id).all()
        assert m.key == str(m.instrument_id).encode()
    for iid in np.unique(recs["instrument_id"]):
        mine = [m for m in out if m.instrument_id == iid]
        got = np.concatenate([m.records["sequence"] for m in mine])
        want = recs["sequence"][recs["instrument_id"] == iid]
        np.testing.assert_array_equal(got, want)
        # A message ends mid-event only where the event alone outgrows a message, or at the
        # instrument's unfinished tail at the end of input.
        stream = recs[recs["instrument_id"] == iid]
        pos = 0
        for k, m in enumerate(mine):
            pos += len(m.records)
            if m.complete or k == len(mine) - 1:
                continue
            rest_flags = stream["flags"][pos - len(m.records) :]
            next_last = np.flatnonzero(rest_flags & F_LAST)
            event_len = next_last[0] + 1 if len(next_last) else len(rest_flags)
            assert event_len > max_records or not len(next_last)


def test_batches_grow_to_batch_records_then_cut_at_f_last() -> None:
    spec = [(7, i % 3 == 2) for i in range(30)]  # events of 3 records
    out = _run(_stream(spec), chunk=30, batch=10, max_records=100, paced=False)
    assert [len(m.records) for m in out] == [12, 12, 6]
    assert all(m.complete for m in out)


def test_oversized_event_is_split_at_the_size_limit() -> None:
    spec = [(7, False)] * 25 + [(7, True)]  # a 26-record snapshot
    out = _run(_stream(spec), chunk=26, batch=5, max_records=10, paced=False)
    assert [len(m.records) for m in out] == [10, 10, 6]
    assert [m.complete for m in out] == [False, False, True]


def test_flush_complete_keeps_the_unfinished_tail() -> None:
    b = Batcher(batch_records=100)
    recs = _stream([(1, True), (1, False), (2, True)])
    assert list(b.add(recs)) == []
    sent = list(b.flush_complete())
    assert sorted((m.instrument_id, len(m.records)) for m in sent) == [(1, 1), (2, 1)]
    assert b.pending_records == 1
