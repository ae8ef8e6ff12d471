"""What each instrument has delivered, and the filter that keeps a resubscription gap-free.

Databento's recovery rule for intraday replay: keep, per instrument, the last `ts_event`
delivered and how many records carried it; resubscribe with `start=` the lowest of those (the
gateway sends every record with `ts_event >= start`, in stream order); then, per instrument,
drop what was already delivered: records before its last `ts_event`, and the first `count` of
those at it. From the first record past that point the instrument is caught up and everything is
new. The rule assumes an instrument's `ts_event` does not step back in stream order, which holds
for MBO outside a mid-session snapshot (whose adds carry the orders' own, older times).

A restarted source has no memory, so it reads the positions back from the raw topic's tail
(`app/live/resume.py`). That tail covers each partition back to a floor in event time; an
instrument with nothing above its partition's floor delivered nothing there, so its records below
the floor are the ones already delivered and its records at or above it are new.

The lowest position alone is not a safe `start=`: an instrument that has delivered nothing yet
(or nothing the tail showed) may next send a record stamped a little before another
instrument's last one, since a record's `ts_event` trails its place in the stream by the venue's
latency. So the resume point reaches back a further `slack_ns` (10 s by default, far above any
feed's latency but the snapshot's); what that replays again is dropped as above.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

DEFAULT_SLACK_NS = 10_000_000_000


class LiveCursor:
    def __init__(
        self,
        floor_of: Callable[[int], int | None] | None = None,
        slack_ns: int = DEFAULT_SLACK_NS,
    ) -> None:
        self.slack_ns = slack_ns
        # instrument -> [last ts_event delivered, records delivered with that ts_event]
        self.positions: dict[int, list[int]] = {}
        # instrument -> [ts_event, duplicates still to drop at it], while catching up
        self._catching: dict[int, list[int]] = {}
        self._floor_of = floor_of
        self.duplicates = 0  # records dropped as already delivered, over the cursor's life

    def restore(self, instrument_id: int, ts_event: int, count: int) -> None:
        self.positions[instrument_id] = [ts_event, count]

    def resume_start(self, floors: list[int] | None = None) -> int | None:
        """The `start=` of a resubscription that misses nothing: the lowest position (and the
        lowest partition floor, for instruments the tail did not show), less the slack; None
        when nothing was delivered yet."""
        starts = [p[0] for p in self.positions.values()] + list(floors or ())
        return max(0, min(starts) - self.slack_ns) if starts else None

    def resubscribed(self) -> None:
        """A subscription from `resume_start()` begins: every instrument with a position drops
        what it delivered before it is caught up again."""
        self._catching = {iid: [ts, n] for iid, (ts, n) in self.positions.items()}

    def admit(self, records: np.ndarray) -> np.ndarray:
        """The records (in stream order) that were not delivered before; advances the
        positions over them."""
        if not len(records):
            return records
        if self._catching or self._floor_of is not None:
            keep = self._keep_mask(records)
            if not keep.all():
                self.duplicates += int((~keep).sum())
                records = records[keep]
                if not len(records):
                    return records
        self.note_delivered(records)
        return records

    def _keep_mask(self, records: np.ndarray) -> np.ndarray:
        iids = records["instrument_id"]
        ts = records["ts_event"]
        keep = np.ones(len(records), dtype=bool)
        positions, catching, floor_of = self.positions, self._catching, self._floor_of
        for i in range(len(records)):
            iid = int(iids[i])
            state = catching.get(iid)
            if state is not None:
                t = int(ts[i])
                if t < state[0]:
                    keep[i] = False
                elif t == state[0] and state[1] > 0:
                    state[1] -= 1
                    keep[i] = False
                else:
                    del catching[iid]  # past the point delivered: new from here on
            elif iid not in positions and floor_of is not None:
                floor = floor_of(iid)
                if floor is not None and int(ts[i]) < floor:
                    keep[i] = False
                else:
                    positions[iid] = [int(ts[i]), 0]  # known from here; counted below
        return keep

    def note_delivered(self, records: np.ndarray) -> None:
        """Advance the positions over records delivered (in stream order)."""
        iids = records["instrument_id"]
        ts = records["ts_event"]
        if (iids == iids[0]).all():
            groups = [(int(iids[0]), ts)]
        else:
            order = np.argsort(iids, kind="stable")
            cuts = np.flatnonzero(np.diff(iids[order])) + 1
            groups = [(int(iids[idx[0]]), ts[idx]) for idx in np.split(order, cuts)]
        positions = self.positions
        for iid, t in groups:
            last = int(t[-1])
            same = int(np.count_nonzero(t == last))
            pos = positions.get(iid)
            if pos is not None and pos[0] == last and same == len(t):
                pos[1] += same
            else:
                positions[iid] = [last, same]
