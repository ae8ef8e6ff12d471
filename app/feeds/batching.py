"""Cut a stream of MBO records into raw-topic messages.

A message holds consecutive records of one instrument and ends at an F_LAST boundary, so a
consumer never sees half an event at a message's end, and about `batch_records` of them, so
Faust's per-message cost is paid once per thousand events rather than once per event. An event
longer than `max_records` (a large snapshot) is split across messages; consumers keep applying
until they see F_LAST, so that split is safe, and it is the only way a message ends mid-event.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from models.mbo import F_LAST, MBO_SIZE, by_instrument, instrument_key


@dataclass(frozen=True, slots=True)
class Batch:
    instrument_id: int
    records: np.ndarray

    @property
    def key(self) -> bytes:
        return instrument_key(self.instrument_id)

    @property
    def complete(self) -> bool:
        return bool(self.records["flags"][-1] & F_LAST)


class Batcher:
    def __init__(self, batch_records: int = 1000, max_message_bytes: int = 1_000_000) -> None:
        if batch_records < 1:
            raise ValueError("batch_records must be at least 1")
        self.batch_records = batch_records
        self.max_records = max(1, max_message_bytes // MBO_SIZE)
        self.batch_records = min(batch_records, self.max_records)
        self._pending: dict[int, list[np.ndarray]] = {}
        self._pending_n: dict[int, int] = {}

    @property
    def pending_records(self) -> int:
        return sum(self._pending_n.values())

    def pending_first_recv(self) -> Iterator[tuple[int, int]]:
        """(instrument, ts_recv of its first pending record) for each instrument with records
        pending."""
        for iid, parts in self._pending.items():
            if parts:
                yield iid, int(parts[0]["ts_recv"][0])

    def add(self, records: np.ndarray) -> Iterator[Batch]:
        """Take records in stream order; yield the messages that are full."""
        for iid, group in by_instrument(records):
            self._pending.setdefault(iid, []).append(group)
            n = self._pending_n.get(iid, 0) + len(group)
            self._pending_n[iid] = n
            if n >= self.batch_records:
                yield from self._cut(iid, final=False, incomplete_too=False)

    def flush_complete(self) -> Iterator[Batch]:
        """Every whole event still pending (paced replay sends these at each tick)."""
        for iid in list(self._pending):
            yield from self._cut(iid, final=True, incomplete_too=False)

    def flush_all(self) -> Iterator[Batch]:
        """Everything pending, including records after an instrument's last F_LAST."""
        for iid in list(self._pending):
            yield from self._cut(iid, final=True, incomplete_too=True)

    def _cut(self, iid: int, *, final: bool, incomplete_too: bool) -> Iterator[Batch]:
        parts = self._pending.pop(iid)
        recs = parts[0] if len(parts) == 1 else np.concatenate(parts)
        total = len(recs)
        ends = np.flatnonzero(recs["flags"] & F_LAST) + 1
        batch, max_rec = self.batch_records, self.max_records
        start = 0
        while total - start >= batch:
            i = int(np.searchsorted(ends, start + batch))
            if i < len(ends) and ends[i] - start <= max_rec:
                end = int(ends[i])
            elif total - start >= max_rec:
                # The batch cannot grow to a boundary within the size limit: take the last
                # boundary that fits, or split an oversized event.
                j = int(np.searchsorted(ends, start + max_rec, side="right")) - 1
                end = int(ends[j]) if j >= 0 and ends[j] > start else start + max_rec
            else:
                break
            yield Batch(iid, recs[start:end])
            start = end
        if final:
            last_end = int(ends[-1]) if len(ends) and ends[-1] > start else start
            stop = total if incomplete_too else last_end
            while start < stop:
                end = stop
                if end - start > max_rec:
                    j = int(np.searchsorted(ends, start + max_rec, side="right")) - 1
                    end = int(ends[j]) if j >= 0 and ends[j] > start else start + max_rec
                yield Batch(iid, recs[start:end])
                start = end
        if start < total:
            self._pending[iid] = [recs[start:]]
            self._pending_n[iid] = total - start
        else:
            self._pending_n.pop(iid, None)
