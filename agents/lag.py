"""Consumer lag per partition (`tapestream_consumer_lag`), refreshed on a timer: records of each
assigned partition of an agent's input that this worker has not processed yet.

Lag = the partition's high-water mark minus the offset the worker processes next. The
high-water mark is Faust's `consumer.highwater(tp)`: the last one a fetch response brought
(the last stable offset under exactly_once, which is what read_committed may read), so no
broker round trip here. The offset processed next is the checkpointed agent's own (where it
goes on after the last event it took; `Checkpointer.position`), else the offset committed,
else the start of the log (asked of the broker once per assignment).
Faust's `consumer.position(tp)` is not used: it is the fetcher's, ahead of the agent by
everything fetched and buffered (up to a 32 MiB fetch per partition), so a worker far behind
would show none.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from faust.exceptions import ConsumerNotStarted
from faust.types import TP

from app import metrics
from app.faust_app import app
from app.transport import committed_offset, log_starts, partition_states

# Often enough to follow a backlog draining; each pass reads cached offsets only.
LAG_EVERY_S = 5.0
log = logging.getLogger(__name__)


def agent_inputs() -> set[str]:
    """The topics the app's agents read (not the tables' changelogs, which are assigned too)."""
    names: set[str] = set()
    for agent in app.agents.values():
        names.update(getattr(agent.channel, "topics", ()))
    return names


def partition_lags(
    consumer: object, assigned: Iterable[TP], inputs: set[str], starts: dict[TP, int]
) -> tuple[dict[TP, int], set[TP]]:
    """Lag of each assigned partition of `inputs` whose high-water mark is known yet; and the
    partitions with no offset to go on from (nothing taken or committed), for which `starts`
    may give where the consumer began: the log's start."""
    positions = {state.topic: state for state in partition_states}
    lags: dict[TP, int] = {}
    unknown: set[TP] = set()
    for tp in assigned:
        if tp.topic not in inputs:
            continue
        try:
            highwater = consumer.highwater(tp)  # type: ignore[attr-defined]
        except AssertionError:  # revoked since the assignment was read
            continue
        except ConsumerNotStarted:  # stopping
            break
        if highwater is None or highwater < 0:
            continue  # not fetched since it was assigned
        state = positions.get(tp.topic)
        taken = state.position(tp.partition) if state is not None else None
        # Faust keeps a committed offset of 0 as None, like none at all: then the group
        # began where the log begins (auto_offset_reset earliest).
        committed = committed_offset(app, tp)
        known = [o for o in (taken, committed, starts.get(tp)) if o is not None]
        if known:
            lags[tp] = max(0, highwater - max(known))
        else:
            unknown.add(tp)
    return lags, unknown


@app.timer(LAG_EVERY_S)
async def report_lag() -> None:
    consumer = app.consumer
    try:
        assigned = consumer.assignment()
    except ConsumerNotStarted:  # not yet, or no longer
        return
    inputs = agent_inputs()
    lags, unknown = partition_lags(consumer, assigned, inputs, log_starts.starts)
    if unknown:
        await log_starts.add(app, unknown)
        lags, _ = partition_lags(consumer, assigned, inputs, log_starts.starts)
    # Partitions gone to another worker must not keep their last value here: cleared and set
    # in one step, with no await between, so a scrape never sees the gauge half-filled.
    metrics.consumer_lag.clear()
    for tp, lag in lags.items():
        metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
