"""The one-second delta stream: per instrument, one record for each event-time second in which
something changed, holding what changed. No Faust here.

Each thing that changes belongs to the second in which it became final, which depends on the
thing alone, never on when a worker happened to see it:
  - a book change, to the second of its event's `ts_recv` (the state published is the book at
    the end of that second, after every event received before the second ended);
  - a bar, its indicators, a pattern, a pressure window or a flow signal, to the second in which
    its window's end plus the allowed lateness falls: the moment the source watermark closes it.

Three pieces make the stream (pipeline/stages.py runs them):
  - `BookSeconds` (books stage): the top-N levels of each book at the end of every second in
    which they changed, as the levels that differ from the ones last published;
  - `item_parts` (bars and flow stages): bars, indicators, patterns, pressure and signals,
    grouped by instrument and second;
  - `DeltaMerge` (deltas stage): puts the parts together and publishes a second once the
    watermarks of both sources (books, and the windows' items) have passed its end, seconds in
    order, instruments in order within a second. Its output is therefore the same at any pace,
    batch size or partition count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.bar_events import LATE_TRADES
from models.intervals import parse_interval
from models.mbo import F_LAST, UNDEF_PRICE
from tables.book_engine import complete_events
from tables.partitioned_state import FAST, Dirty, PartitionedState
from tables.state_keys import open_seconds_key, pending_key, tops_key

SECOND_NS = 1_000_000_000
BOOKS, BARS = "books", "bars"  # the two sources whose parts make a delta
SOURCES = (BOOKS, BARS)
Levels = list[list[int]]  # [[price, size, count], ...] best first
Part = dict[str, Any]
Get = Callable[[bytes], bytes | None]


def second_of(final_at: int) -> int:
    """The second (whole seconds of event time) during which something final from `final_at`
    on (a watermark at or past it has it) belongs."""
    return (final_at - 1) // SECOND_NS


def released_through(bound: int) -> int:
    """Seconds before this one are complete once a watermark has reached `bound`."""
    return bound // SECOND_NS


# -- book changes ------------------------------------------------------------------------------


@dataclass
class _Tops:
    partition: int
    open: int | None = None  # the second the book changed in that has not been closed yet
    last: dict[int, tuple[Levels, Levels]] = field(default_factory=dict)  # as last published
    dirty: bool = False

    def export(self) -> dict[str, Any]:
        return {"open": self.open, "last": {str(p): list(v) for p, v in self.last.items()}}


class BookSeconds:
    """Top-N levels per book at the end of each second, as changes. The books stage hands it to
    `BookSet.process`, which applies a message in pieces cut where a new second starts, so
    each second is closed on the book exactly as it stood at its end."""

    def __init__(self, tops: Callable[[int, int], dict[int, tuple[Levels, Levels]]], depth: int):
        self.read_tops = tops  # (instrument, depth) -> {publisher: (bids, asks)}
        self.depth = depth
        self.state: dict[int, _Tops] = {}
        self.closed: list[tuple[int, int, Part]] = []  # (instrument, second, part) to send
        self.released: dict[int, int] = {}  # partition -> seconds before this are closed
        # Partitions whose instruments with an open second are all loaded (`restore_open`)
        self.restored: set[int] = set()

    # -- state ------------------------------------------------------------------------------
    def loaded(self, instrument_id: int) -> bool:
        return instrument_id in self.state

    def load(self, instrument_id: int, partition: int, get: Get) -> None:
        st = self.state[instrument_id] = _Tops(partition)
        raw = get(tops_key(instrument_id))
        if raw is not None:
            saved = FAST.decode(raw)
            st.open = saved["open"]
            st.last = {int(p): (v[0], v[1]) for p, v in saved["last"].items()}

    def open_in(self, partition: int, get: Get) -> list[int]:
        """The instruments of the partition whose second was open at its last checkpoint.
        They must all be loaded before the partition's watermark moves: an instrument loaded
        only with its next message would close its open second after the merge had published
        that second without it."""
        raw = get(open_seconds_key(partition))
        return [] if raw is None else list(FAST.decode(raw))

    def checkpoint(self) -> dict[int, list[tuple[bytes, bytes | None]]]:
        out: dict[int, list[tuple[bytes, bytes | None]]] = {}
        for iid, st in self.state.items():
            if st.dirty:
                out.setdefault(st.partition, []).append((tops_key(iid), FAST.encode(st.export())))
                st.dirty = False
        for p, rows in out.items():
            opened = sorted(
                i for i, st in self.state.items() if st.partition == p and st.open is not None
            )
            rows.append((open_seconds_key(p), FAST.encode(opened)))
        return out

    def evict(self, partitions: set[int]) -> None:
        for iid in [i for i, st in self.state.items() if st.partition in partitions]:
            del self.state[iid]
        for p in partitions:
            self.released.pop(p, None)
            self.restored.discard(p)

    # -- cutting messages at seconds --------------------------------------------------------
    def cuts(self, instrument_id: int, records: np.ndarray) -> list[tuple[int, int]]:
        """Where to stop applying `records` (complete events) to close a second: (index, the
        second starting there). An event counts in the second its last record (F_LAST) was
        received in, the moment it shows in the book; a receive time earlier than the open
        second's counts in the open second."""
        st = self.state[instrument_id]
        st.dirty = True
        ends = _event_ends(records)
        sec = (records["ts_recv"][ends - 1] // SECOND_NS).astype(np.int64)
        if st.open is None:
            st.open = int(sec[0])
        np.maximum.accumulate(np.maximum(sec, st.open), out=sec)
        starts = np.flatnonzero(np.diff(sec, prepend=st.open))
        at = np.concatenate([[0], ends[:-1]])[starts]
        return list(zip(at.tolist(), sec[starts].tolist(), strict=True))

    def _close_now(self, instrument_id: int) -> None:
        """Close the open second on the books as they stand now (the bound has passed it)."""
        tops = self.read_tops(instrument_id, self.depth)
        pubs = sorted(tops)
        levels = np.zeros((1, len(pubs), 2, self.depth, 3), np.int64)
        counts = np.zeros((1, len(pubs), 2), np.int64)
        for j, pub in enumerate(pubs):
            _fill(levels[0, j], counts[0, j], tops[pub])
        self.close_at_cuts(instrument_id, [None], pubs, levels, counts)

    def close_at_cuts(
        self,
        instrument_id: int,
        seconds: list[int | None],
        publishers: list[int],
        levels: np.ndarray,
        counts: np.ndarray,
    ) -> None:
        """Close the open second, then each of `seconds` but the last (which opens; None:
        none), on the books' top levels read at each cut (BookEngine.apply_with_tops:
        levels[k, j, side], counts[k, j, side] for publishers[j]). Each second's part holds
        the levels that differ from the ones published before, found in numpy: a sparse
        instrument has a cut every record or two."""
        st = self.state[instrument_id]
        prev = np.empty_like(levels)
        prev_counts = np.empty_like(counts)
        prev[1:], prev_counts[1:] = levels[:-1], counts[:-1]
        prev[0], prev_counts[0] = 0, 0
        for j, pub in enumerate(publishers):
            _fill(prev[0, j], prev_counts[0, j], st.last.get(pub, ([], [])))
        depth = levels.shape[3]
        live = np.arange(depth) < counts[..., None]  # (k, j, side, level)
        moved = (levels != prev).any(-1) & live
        resized = counts != prev_counts
        touched = moved.any(-1) | resized  # (k, j, side)
        top_moved = (moved[..., 0] | ((counts > 0) != (prev_counts > 0))).any(-1)
        # Every changed book and level in two passes over plain lists: per-cut numpy calls
        # would cost more than the books.
        tk, tj = np.nonzero(touched.any(-1))
        empty = counts[tk, tj] == 0
        tops = levels[tk, tj, :, 0].reshape(len(tk), 6)
        tops[:, 0:3][empty[:, 0]] = [UNDEF_PRICE, 0, 0]
        tops[:, 3:6][empty[:, 1]] = [UNDEF_PRICE, 0, 0]
        heads = np.column_stack([tk, tj, counts[tk, tj], top_moved[tk, tj], tops]).tolist()
        books: dict[tuple[int, int], dict[str, Any]] = {}
        for k, j, n_bid, n_ask, top, *top_levels in heads:
            book = {
                "publisher_id": publishers[j],
                "bid_depth": n_bid,
                "ask_depth": n_ask,
                "bids": [],
                "asks": [],
            }
            if top:
                book["top"] = top_levels
            books[(k, j)] = book
        mk, mj, ms, mi = np.nonzero(moved)
        rows = np.column_stack([mk, mj, ms, mi, levels[mk, mj, ms, mi]]).tolist()
        for k, j, side, i, price, size, count in rows:
            books[(k, j)]["asks" if side else "bids"].append([i, price, size, count])
        for (k, _), book in books.items():
            second = st.open if k == 0 else seconds[k - 1]
            if self.closed and self.closed[-1][:2] == (instrument_id, second):
                self.closed[-1][2]["books"].append(book)
            else:
                self.closed.append((instrument_id, second, {"books": [book]}))  # type: ignore[arg-type]
        for j, pub in enumerate(publishers):
            if touched[:, j].any():
                last = levels[-1, j]
                st.last[pub] = (
                    last[0, : counts[-1, j, 0]].tolist(),
                    last[1, : counts[-1, j, 1]].tolist(),
                )
        st.open = seconds[-1]
        st.dirty = True

    def release(self, partition: int, bound: int) -> None:
        """Close every open second of the partition's instruments that `bound` has passed.
        A second opened after a release starts at or after the bound, so until the bound
        passes another second there is nothing to close."""
        through = released_through(bound)
        if through <= self.released.get(partition, -1):
            return
        self.released[partition] = through
        for iid, st in self.state.items():
            if st.partition == partition and st.open is not None and st.open < through:
                self._close_now(iid)

    def take(self) -> list[tuple[int, int, Part]]:
        out, self.closed = self.closed, []
        return out


def _event_ends(records: np.ndarray) -> np.ndarray:
    """Where each event of complete `records` ends: every F_LAST for one book; for several,
    only where every book's event is complete."""
    ends = np.flatnonzero(records["flags"] & F_LAST) + 1
    books = (records["publisher_id"].astype(np.uint64) << np.uint64(32)) | records["instrument_id"]
    if (books != books[0]).any():
        ends = np.array([e for e in ends.tolist() if complete_events(records[:e]) == e], np.int64)
    if not len(ends) or ends[-1] != len(records):
        ends = np.append(ends, len(records))  # records given are whole events
    return ends


def _fill(levels: np.ndarray, counts: np.ndarray, sides: tuple[Levels, Levels]) -> None:
    """One book's (bids, asks) lists into its levels[side] rows and counts[side]."""
    for side, got in enumerate(sides):
        if got:
            levels[side, : len(got)] = got
            counts[side] = len(got)


# -- bars, indicators, patterns, pressure, signals ----------------------------------------------


def final_at(row: dict[str, Any], lateness_ns: int) -> int:
    """When a window's row becomes final: its end plus the allowed lateness."""
    end = row.get("end")
    if end is None:
        end = row["start"] + parse_interval(row["interval"])
    return int(end) + lateness_ns


def item_parts(
    rows: Iterable[tuple[str, dict[str, Any]]], lateness_ns: int
) -> list[tuple[int, int, Part]]:
    """Rows (topic, row) grouped into parts by (instrument, second), in order."""
    parts: dict[tuple[int, int], list[list[Any]]] = {}
    for topic, row in rows:
        # late trades change nothing final; processing lag is wall-clock, not event time
        if topic == LATE_TRADES or row.get("kind") == "processing_lag":
            continue
        key = (int(row["instrument_id"]), second_of(final_at(row, lateness_ns)))
        parts.setdefault(key, []).append([topic, row])
    return [(iid, s, {"items": items}) for (iid, s), items in sorted(parts.items())]


# Item kinds as delta fields: every bars topic goes to "bars", the rest keep their name.
def _field(topic: str) -> str:
    return "bars" if topic.startswith("bars.") else topic


def _identity(topic: str, row: dict[str, Any]) -> tuple:
    return (
        topic,
        row.get("interval", ""),
        row.get("start", 0),
        row.get("kind", ""),
        row.get("direction", ""),
    )


# -- the merge ----------------------------------------------------------------------------------


@dataclass
class _Pending:
    books: list[dict[str, Any]] | None = None
    items: dict[tuple, tuple[str, dict[str, Any]]] = field(default_factory=dict)


class DeltaMerge:
    """One partition's merge of book and item parts into deltas."""

    def __init__(self) -> None:
        self.watermarks: dict[str, int] = {}
        self.through: int | None = None  # seconds before this are published
        self.pending: dict[tuple[int, int], _Pending] = {}  # (second, instrument)
        self.repeats = 0

    def add(self, instrument_id: int, second: int, part: Part) -> bool:
        """A part from either source; False (and nothing changes) for a part of a second already
        published: a source repeating itself after a restart."""
        if self.through is not None and second < self.through:
            self.repeats += 1
            return False
        pending = self.pending.get((second, instrument_id))
        if pending is None:
            pending = self.pending[(second, instrument_id)] = _Pending()
        if "books" in part:
            pending.books = part["books"]  # one per second; a repeat is the same part
        for topic, row in part.get("items", ()):
            pending.items[_identity(topic, row)] = (topic, row)
        return True

    def advance(self, source: str, bound: int) -> list[dict[str, Any]]:
        """A source's watermark; the deltas of every second both have now passed."""
        if source not in SOURCES:
            raise ValueError(f"unknown delta source {source!r}")
        if bound <= self.watermarks.get(source, bound - 1):
            return []
        self.watermarks[source] = bound
        if len(self.watermarks) < len(SOURCES):
            return []
        through = released_through(min(self.watermarks.values()))
        if self.through is not None and through <= self.through:
            return []
        self.through = through
        ready = sorted(k for k in self.pending if k[0] < through)
        return [delta(iid, second, self.pending.pop((second, iid))) for second, iid in ready]


def delta(instrument_id: int, second: int, pending: _Pending) -> dict[str, Any]:
    out: dict[str, Any] = {"instrument_id": instrument_id, "start": second * SECOND_NS}
    if pending.books:
        out["books"] = pending.books
    for key in sorted(pending.items):
        topic, row = pending.items[key]
        out.setdefault(_field(topic), []).append(row)
    return out


@dataclass
class _MergeState:
    merge: DeltaMerge
    written: set[tuple[int, int]] = field(default_factory=set)  # pending keys in the table
    # (second, iid) changed since the last checkpoint: written if pending, deleted if published
    dirty: Dirty = field(default_factory=lambda: Dirty("pending"))


class DeltaSet(PartitionedState[_MergeState]):
    """The deltas stage's merge of each partition, checkpointed as a key per pending
    (instrument, second), written when it changes and deleted once published, and the
    partition's watermarks under `~partition/<p>`. What is pending is the seconds the source
    watermark has not passed yet: about a second's worth."""

    codec = FAST

    def fresh(self) -> _MergeState:
        return _MergeState(DeltaMerge())

    def restore(self, part: _MergeState, record: Any, get: Callable[[bytes], Any]) -> None:
        merge = part.merge
        merge.watermarks = dict(record["watermarks"])
        merge.through = record["through"]
        merge.repeats = record["repeats"]
        for iid_s, seconds in record["pending"].items():
            iid = int(iid_s)
            for first, last in seconds:
                for second in range(first, last + 1):
                    saved = get(pending_key(iid, second))
                    if saved is None:
                        raise ValueError(f"deltas checkpoint: {iid}/{second} is missing")
                    books, items = saved
                    p = merge.pending[(second, iid)] = _Pending(books)
                    for topic, row in items:
                        p.items[_identity(topic, row)] = (topic, row)
                    part.written.add((second, iid))

    def add(self, partition: int, instrument_id: int, second: int, part: Part) -> bool:
        state = self.partitions[partition]
        state.dirty.touch()  # a repeat is counted in the record
        if not state.merge.add(instrument_id, second, part):
            return False
        state.dirty.add("pending", (second, instrument_id))
        return True

    def advance(self, partition: int, source: str, bound: int) -> list[dict[str, Any]]:
        state = self.partitions[partition]
        state.dirty.touch()
        out = state.merge.advance(source, bound)
        for d in out:
            key = (d["start"] // SECOND_NS, d["instrument_id"])
            # A published second is deleted from the table if a checkpoint wrote it, and is
            # forgotten if none did: what is dirty is what is pending, never the history (the
            # file driver never checkpoints).
            if key in state.written:
                state.dirty.add("pending", key)
            else:
                state.dirty.discard("pending", key)
        return out

    def changes(self, part: _MergeState) -> tuple[list[tuple[bytes, Any]], Any]:
        merge = part.merge
        values: list[tuple[bytes, Any]] = []
        for key in part.dirty.items("pending"):
            second, iid = key
            pending = merge.pending.get(key)
            if pending is not None:
                items = [[t, r] for t, r in pending.items.values()]
                values.append((pending_key(iid, second), [pending.books, items]))
                part.written.add(key)
            elif key in part.written:
                values.append((pending_key(iid, second), None))
                part.written.discard(key)
        record = {
            "watermarks": merge.watermarks,
            "through": merge.through,
            "repeats": merge.repeats,
            "pending": _ranges(merge.pending),
        }
        return values, record


def _ranges(pending: dict[tuple[int, int], Any]) -> dict[str, list[list[int]]]:
    """Each instrument's pending seconds as [first, last] runs."""
    by_iid: dict[int, list[int]] = {}
    for second, iid in sorted(pending):
        by_iid.setdefault(iid, []).append(second)
    out: dict[str, list[list[int]]] = {}
    for iid, seconds in by_iid.items():
        runs = out[str(iid)] = []
        for second in seconds:
            if runs and runs[-1][1] == second - 1:
                runs[-1][1] = second
            else:
                runs.append([second, second])
    return out
