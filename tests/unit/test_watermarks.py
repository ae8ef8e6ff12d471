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
