"""Passing watermarks on: every hop (replay's markers, the flow stage's option parts) tells a
partition a new watermark only when it is news."""

from __future__ import annotations

from app.feeds.watermarks import Passed

SECOND = 1_000_000_000


def test_the_first_watermark_is_news_then_only_a_new_step() -> None:
    told = Passed(lambda wm: wm // SECOND)
    assert told.due(0, 5 * SECOND + 7)
    told.mark(0, 5 * SECOND + 7)
    assert not told.due(0, 5 * SECOND + 999)  # the same second: nothing closes sooner
    assert told.due(0, 6 * SECOND)
    assert told.due(1, 1)  # partitions apart


def test_by_default_any_advance_and_more_than_a_distance() -> None:
    told = Passed()
    told.mark(0, 100)
    assert not told.due(0, 100) and told.due(0, 101)
    assert not told.due(0, 150, more_than=50) and told.due(0, 151, more_than=50)


def test_a_watermark_marked_never_moves_back_and_forget_starts_over() -> None:
    told = Passed()
    told.mark(0, 100)
    told.mark(0, 90)
    assert not told.due(0, 95)
    told.forget(0)
    assert told.due(0, 95)


async def test_a_partitions_last_message_of_a_step_carries_the_bound_after_the_step() -> None:
    """What a step's records close reaches the workers with those records, not a step later;
    and no message claims a bound that a later message of its partition undercuts."""
    import asyncio

    import numpy as np

    from app.feeds.batching import Batcher
    from app.feeds.watermarks import WM_HEADER, decode_ns, partitioner
    from app.raw_sender import RawSender, Tally
    from models.mbo import F_LAST, empty_records

    sent: list[tuple[int, int, int]] = []  # (partition, first ts_recv, bound)

    class Producer:
        async def send(self, topic: str, value: bytes, **kw: object) -> asyncio.Future:
            headers = dict(kw.get("headers") or ())  # type: ignore[call-overload]
            first = int(np.frombuffer(value, empty_records().dtype)["ts_recv"][0]) if value else -1
            sent.append((kw["partition"], first, decode_ns(headers[WM_HEADER])))  # type: ignore[arg-type]
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

    # Instruments 1 and 3 share a partition of two, interleaved, one record an event.
    part = partitioner(2)
    a, b = 1, next(i for i in range(2, 100) if part(i) == part(1))
    records = empty_records(8)
    records["instrument_id"] = [a, b, a, b, a, b, a, b]
    records["ts_recv"] = np.arange(100, 108)
    records["flags"] = F_LAST
    sender = RawSender(Producer(), "mbo.raw", Tally(), 2)  # type: ignore[arg-type]
    batcher = Batcher(batch_records=1000)
    await sender.step(batcher, records[:4], Tally(), flush=True)
    await sender.step(batcher, records[4:], Tally(), flush=True)
    data = [(p, first, bound) for p, first, bound in sent if first >= 0]
    assert [bound for _, _, bound in data] == [100, 103, 104, 107]
    for i, (p, _, bound) in enumerate(data):  # nothing after a message arrived before its bound
        assert all(first >= bound for q, first, _ in data[i + 1 :] if q == p)
