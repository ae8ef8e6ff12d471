"""tapestream_consumer_lag's arithmetic (agents/lag.py): the high-water mark minus where the
agent goes on, which is the offset after the last event it took, else the one committed, else
the start of the log; only for the agents' inputs, and only once a fetch has told the
high-water mark."""

from __future__ import annotations

from typing import Any

import pytest
from faust.types import TP

from agents import lag


class Consumer:
    def __init__(
        self, highwaters: dict[TP, int | None], revoked: frozenset[TP] = frozenset()
    ) -> None:
        self.highwaters = highwaters
        self.revoked = revoked

    def highwater(self, tp: TP) -> int | None:
        assert tp not in self.revoked, "Partition is not assigned"
        return self.highwaters[tp]


class State:
    topic = "raw"

    def __init__(self, positions: dict[int, int]) -> None:
        self.positions = positions

    def position(self, partition: int) -> int | None:
        return self.positions.get(partition)


def test_lag_is_the_highwater_less_where_the_agent_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = [TP("raw", p) for p in range(6)]
    other = TP("raw-changelog", 0)
    committed = {raw[0]: 100, raw[1]: 100, raw[3]: 40}
    monkeypatch.setattr(lag, "partition_states", [State({0: 150, 1: 90})])
    monkeypatch.setattr(lag, "committed_offset", lambda app, tp: committed.get(tp))
    consumer = Consumer(
        {raw[0]: 200, raw[1]: 200, raw[2]: None, raw[3]: 50, raw[4]: 70, raw[5]: 9, other: 5},
        revoked=frozenset({raw[5]}),
    )
    assigned: Any = [*raw, other]
    lags, unknown = lag.partition_lags(consumer, assigned, {"raw"}, {})
    # 0: taken past the commit; 1: committed past what was taken (a restart's seek);
    # 2: never fetched; 3: committed only; 4: nothing to go by; 5: revoked meanwhile
    assert lags == {raw[0]: 50, raw[1]: 100, raw[3]: 10}
    assert unknown == {raw[4]}
    lags, unknown = lag.partition_lags(consumer, assigned, {"raw"}, {raw[4]: 30})
    assert lags[raw[4]] == 40 and not unknown
