"""What each instrument has delivered, and the filter that keeps a resubscription gap-free.

Databento's recovery rule for intraday replay: keep, per instrument, the last `ts_event`
delivered and how many records carried it; resubscribe with `start=` (the gateway sends every
record with `ts_event >= start`, in stream order); then, per instrument, drop what was already
delivered: records before its last `ts_event`, and the first `count` of those at it. From the
first record past that point the instrument is caught up and everything is new. The rule
assumes an instrument's `ts_event` does not step back in stream order, which holds for MBO. A
snapshot the source asks for (`snapshot=1`) is sent afresh, its records carrying their orders'
own, older times: in such a session records flagged F_SNAPSHOT are never dropped. Their old
times never move a position forward, and the resume point below comes from the newest time.

Where to resume from. Databento suggests the lowest position; a quiet instrument would then
hold every reconnect back by hours, and past the 24-hour replay horizon turn an outage the
gateway could have replayed into a gap. The stream comes in `ts_recv` order and a record's
`ts_event` trails its `ts_recv` by the venue's latency, so every record not yet delivered has a
`ts_event` no lower than the last delivered `ts_event` less that latency. The cursor resumes
from the highest `ts_event` it has let through, less `slack_ns` (10 s by default, far above any
feed's latency); what that replays again is dropped as above, and an instrument whose position
lies below the resume point simply has nothing replayed to drop.

A restarted source has no memory, so it reads the positions back from the raw topic's tail
(`app/live/resume.py`). Each partition holds its own prefix of what was sent, so each has its
own last `ts_event`; its floor is that, less the slack. An instrument the tail did not show
delivered nothing at or above its partition's floor, so its records below the floor are the
ones already delivered. Until the source has let through records past every partition's tail,
it resumes from the lowest tail, less the slack.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from models.mbo import F_SNAPSHOT, by_instrument

DEFAULT_SLACK_NS = 10_000_000_000


class LiveCursor:
    def __init__(
        self,
        slack_ns: int = DEFAULT_SLACK_NS,
        tails: dict[int, int] | None = None,
        floors: dict[int, int] | None = None,
        partition_of: Callable[[int], int] | None = None,
    ) -> None:
        """`tails`: partition -> the last ts_event its tail held (a restart's); `floors`:
        partition -> floor, for the partitions whose tail was not read to their start."""
        self.slack_ns = slack_ns
        # instrument -> [last ts_event delivered, records delivered with that ts_event]
        self.positions: dict[int, list[int]] = {}
        # instrument -> [ts_event, duplicates still to drop at it], while catching up
        self._catching: dict[int, list[int]] = {}
        self.tails = dict(tails or {})
        self.floors = dict(floors or {})
        self._partition_of = partition_of
        self.high: int | None = None  # highest ts_event let through by this cursor
        self._fresh_snapshot = False
        self.duplicates = 0  # records dropped as already delivered, over the cursor's life

    def forget_below_floors(self) -> None:
        """After a restart's tail is noted: a position below its partition's floor may have
        more records at its time before the part read, so its count is not to be trusted; such
        an instrument delivered nothing at or above the floor, which the floor already says."""
        for iid, (ts, _) in list(self.positions.items()):
            floor = self._floor_of(iid)
            if floor is not None and ts < floor:
                del self.positions[iid]

    def resume_start(self) -> int | None:
        """The `start=` of a resubscription that misses nothing; None when nothing was
        delivered yet."""
        starts = []
        if self.high is not None:
            starts.append(self.high - self.slack_ns)
        if self.tails and (self.high is None or self.high < max(self.tails.values())):
            starts.append(min(self.tails.values()) - self.slack_ns)
        return max(0, min(starts)) if starts else None

    def resubscribed(self, snapshot: bool = False) -> None:
        """A subscription from `resume_start()` begins: every instrument with a position drops
        what it delivered before it is caught up again. `snapshot`: the session starts with a
        snapshot, whose records are all new."""
        self._catching = {iid: [ts, n] for iid, (ts, n) in self.positions.items()}
        self._fresh_snapshot = snapshot

    def admit(self, records: np.ndarray) -> np.ndarray:
        """The records (in stream order) that were not delivered before; advances the
        positions over them."""
        if not len(records):
            return records
        if self._catching or self.floors:
            keep = self._keep_mask(records)
            if not keep.all():
                self.duplicates += int((~keep).sum())
                records = records[keep]
                if not len(records):
                    return records
        self.note_delivered(records)
        top = int(records["ts_event"].max())
        self.high = top if self.high is None else max(self.high, top)
        return records

    def _floor_of(self, iid: int) -> int | None:
        if self._partition_of is None:
            return None
        return self.floors.get(self._partition_of(iid))

    def _keep_mask(self, records: np.ndarray) -> np.ndarray:
        iids = records["instrument_id"]
        ts = records["ts_event"]
        fresh = (records["flags"] & F_SNAPSHOT) != 0 if self._fresh_snapshot else None
        keep = np.ones(len(records), dtype=bool)
        positions, catching = self.positions, self._catching
        for i in range(len(records)):
            if fresh is not None and fresh[i]:
                continue  # a snapshot asked for afresh: always new
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
            elif iid not in positions:
                floor = self._floor_of(iid)
                if floor is not None and int(ts[i]) < floor:
                    keep[i] = False
                else:
                    positions[iid] = [int(ts[i]), 0]  # known from here; counted below
        return keep

    def note_delivered(self, records: np.ndarray) -> None:
        """Advance the positions over records delivered (in stream order)."""
        positions = self.positions
        for iid, group in by_instrument(records):
            t = group["ts_event"]
            last = int(t[-1])
            same = int(np.count_nonzero(t == last))
            pos = positions.get(iid)
            if pos is not None and pos[0] == last and same == len(t):
                pos[1] += same
            elif pos is None or last >= pos[0]:
                positions[iid] = [last, same]
            # else: a fresh snapshot's old times: the position stays where it was
